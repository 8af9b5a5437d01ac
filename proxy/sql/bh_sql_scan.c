/* Does a statement text leave session state? A lexer that follows PostgreSQL's scan.l where it
 * decides token and statement boundaries, and a classification of each statement by its tokens.
 *
 * Invariants: every read of the text is guarded by the length (the text has no NUL terminator);
 * each byte is visited a bounded number of times (string literals twice, see lex_quote), so the
 * whole scan is O(len). Whenever the lexer cannot be sure how the server splits the text, the
 * token is TOK_BAD and the answer is "leaves state": a needless reset costs a round trip, a
 * missed one leaks one client's session into another's. */
#include "bh_sql_scan.h"

#include <stdint.h>
#include <string.h>

#define NOTFOUND SIZE_MAX

typedef enum tok_kind {
    TOK_END,    /* no more text */
    TOK_SEMI,   /* ';': ends a statement */
    TOK_LPAREN, /* '(' */
    TOK_IDENT,  /* unquoted identifier or keyword */
    TOK_QIDENT, /* "quoted identifier": p, n are its inside, "" left doubled */
    TOK_UIDENT, /* U&"..." identifier: its name is known only after unescaping */
    TOK_OTHER,  /* literal, parameter, number, operator, punctuation */
    TOK_BAD,    /* unterminated, or read differently depending on server settings */
} tok_kind_t;

typedef struct tok {
    tok_kind_t kind;
    const char *p;
    size_t n;
} tok_t;

typedef struct lexer {
    const char *s;
    size_t n;
    size_t i; /* next byte to read */
} lexer_t;

/* How a quoted literal's body reads: plain '' doubling (standard_conforming_strings on), with
 * backslash escapes too (E'', or plain strings when it is off), or bit/hex strings (no escapes). */
typedef enum qmode { Q_STD, Q_ESC, Q_BITS } qmode_t;

/* ---- character classes (scan.l: space, ident_start, ident_cont, dolq_cont) ---- */

static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static bool is_horiz_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\f';
}

static bool is_newline(unsigned char c)
{
    return c == '\n' || c == '\r';
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Bytes >= 0x80 are identifier characters: parts of multibyte letters. */
static bool is_ident_start(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}

/* A '$' inside an identifier is part of it: "a$$" is one identifier, not "a" and a quote. */
static bool is_ident_cont(unsigned char c)
{
    return is_ident_start(c) || is_digit(c) || c == '$';
}

static bool is_dolq_cont(unsigned char c)
{
    return is_ident_start(c) || is_digit(c);
}

static bool at(const lexer_t *lx, size_t i, char c)
{
    return i < lx->n && lx->s[i] == c;
}

/* ---- comments and blanks ---- */

/* Index of the newline (or the end) that ends the "--" comment starting at i. */
static size_t line_comment_end(const char *s, size_t n, size_t i)
{
    while (i < n && !is_newline((unsigned char)s[i]))
        i++;
    return i;
}

/* Index just past the block comment opened at i; in PostgreSQL they nest, unlike in C.
 * NOTFOUND when unterminated. */
static size_t block_comment_end(const char *s, size_t n, size_t i)
{
    size_t depth = 0;
    for (i += 2; i + 1 < n;) {
        if (s[i] == '/' && s[i + 1] == '*') {
            depth++;
            i += 2;
        } else if (s[i] == '*' && s[i + 1] == '/') {
            if (depth == 0)
                return i + 2;
            depth--;
            i += 2;
        } else {
            i++;
        }
    }
    return NOTFOUND;
}

/* Skips whitespace and comments; false on an unterminated block comment. A comment start wins
 * anywhere, also inside what would be an operator ("+--" is "+" then a comment), as in scan.l. */
static bool skip_blank(lexer_t *lx)
{
    for (;;) {
        size_t i = lx->i;
        if (i < lx->n && is_space((unsigned char)lx->s[i])) {
            lx->i++;
        } else if (at(lx, i, '-') && at(lx, i + 1, '-')) {
            lx->i = line_comment_end(lx->s, lx->n, i);
        } else if (at(lx, i, '/') && at(lx, i + 1, '*')) {
            size_t e = block_comment_end(lx->s, lx->n, i);
            if (e == NOTFOUND)
                return false;
            lx->i = e;
        } else {
            return true;
        }
    }
}

/* ---- quoted literals ---- */

/* Index of the first byte from i that is neither in the class nor in a "--" comment. */
static size_t skip_spaces(const char *s, size_t n, size_t i, bool (*in_class)(unsigned char))
{
    for (;;) {
        if (i < n && in_class((unsigned char)s[i]))
            i++;
        else if (i + 1 < n && s[i] == '-' && s[i + 1] == '-')
            i = line_comment_end(s, n, i);
        else
            return i;
    }
}

/* i is just past a literal's closing quote. PostgreSQL continues the literal, in the same mode,
 * when whitespace with a newline separates it from another quote ('a'\n'b' is 'ab'; E'a'\n'\''
 * stays an E string). scan.l's whitespace_with_newline: horizontal space or "--" comments, a
 * newline, then any space or comments. Returns the index past the next opening quote, or
 * NOTFOUND when the literal ends at i. */
static size_t continuation(const char *s, size_t n, size_t i)
{
    i = skip_spaces(s, n, i, is_horiz_space);
    if (i >= n || !is_newline((unsigned char)s[i]))
        return NOTFOUND;
    i = skip_spaces(s, n, i, is_space);
    return i < n && s[i] == '\'' ? i + 1 : NOTFOUND;
}

/* i is just past an opening single quote. Returns the index past the literal (continuations
 * included), NOTFOUND when unterminated. Bit strings end at the first quote: B'1''0' is B'1'
 * followed by the string '0'. */
static size_t quote_end(const char *s, size_t n, size_t i, qmode_t mode)
{
    while (i < n) {
        if (s[i] == '\\' && mode == Q_ESC) {
            i += 2;
        } else if (s[i] != '\'') {
            i++;
        } else if (mode != Q_BITS && i + 1 < n && s[i + 1] == '\'') {
            i += 2;
        } else {
            size_t next = continuation(s, n, i + 1);
            if (next == NOTFOUND)
                return i + 1;
            i = next;
        }
    }
    return NOTFOUND;
}

/* A '...' literal whose body starts at i. The server reads it with or without backslash escapes
 * depending on standard_conforming_strings, which a role or database default can turn off: when
 * the two readings end at different places ('a\'; SET ...; --') the statement boundaries are
 * unknown. Most literals ('C:\dir' included) end at the same place either way. */
static tok_kind_t lex_quote(lexer_t *lx, size_t i)
{
    size_t e = quote_end(lx->s, lx->n, i, Q_STD);
    if (e == NOTFOUND || e != quote_end(lx->s, lx->n, i, Q_ESC))
        return TOK_BAD;
    lx->i = e;
    return TOK_OTHER;
}

/* i is just past an opening double quote; "" is a quote inside. NOTFOUND when unterminated. */
static size_t qident_end(const char *s, size_t n, size_t i)
{
    for (; i < n; i++) {
        if (s[i] != '"')
            continue;
        if (i + 1 < n && s[i + 1] == '"')
            i++;
        else
            return i + 1;
    }
    return NOTFOUND;
}

/* ---- dollar quotes and parameters ---- */

/* The length of the "$tag$" delimiter at i, or 0 when this '$' opens none ("$1" is a parameter;
 * a lone "$" is a syntax error to the server). */
static size_t dollar_tag(const char *s, size_t n, size_t i)
{
    size_t j = i + 1;
    if (j < n && is_ident_start((unsigned char)s[j])) {
        for (j++; j < n && is_dolq_cont((unsigned char)s[j]);)
            j++;
    }
    return j < n && s[j] == '$' ? j + 1 - i : 0;
}

/* Index past the first "tag" (the whole delimiter, '$'s included) at or after i, NOTFOUND when
 * absent. O(n): a partial match from one '$' stops before the next '$', because a tag has no '$'
 * inside. */
static size_t dollar_end(const char *s, size_t n, size_t i, const char *tag, size_t tlen)
{
    for (; i < n && tlen <= n - i; i++) {
        if (s[i] != '$')
            continue;
        size_t k = 1;
        while (k < tlen && s[i + k] == tag[k])
            k++;
        if (k == tlen)
            return i + tlen;
    }
    return NOTFOUND;
}

/* A '$' that opens no dollar quote is a token of its own: in "$1" the digits follow as
 * other tokens. */
static tok_kind_t lex_dollar(lexer_t *lx)
{
    size_t i = lx->i;
    size_t tlen = dollar_tag(lx->s, lx->n, i);
    if (tlen == 0) {
        lx->i = i + 1;
        return TOK_OTHER;
    }
    size_t e = dollar_end(lx->s, lx->n, i + tlen, lx->s + i, tlen);
    if (e == NOTFOUND)
        return TOK_BAD;
    lx->i = e;
    return TOK_OTHER;
}

/* ---- words ---- */

/* A literal behind a one-letter prefix: E'', B'', X'', N'', U&'', U&"". scan.l matches these
 * before identifiers, so "e'" opens an E string only where an identifier could start: in "ae'x'"
 * the identifier is "ae". Returns false, touching nothing, when i starts no such literal. */
static bool lex_prefixed(lexer_t *lx, tok_t *t)
{
    size_t i = lx->i;
    char c = (char)(lx->s[i] | 0x20);
    size_t e;
    if (at(lx, i + 1, '\'') && (c == 'e' || c == 'b' || c == 'x')) {
        t->kind = TOK_OTHER;
        e = quote_end(lx->s, lx->n, i + 2, c == 'e' ? Q_ESC : Q_BITS);
        if (e == NOTFOUND)
            t->kind = TOK_BAD;
        else
            lx->i = e;
        return true;
    }
    if (at(lx, i + 1, '\'') && c == 'n') {
        t->kind = lex_quote(lx, i + 2);
        return true;
    }
    if (c != 'u' || !at(lx, i + 1, '&'))
        return false;
    if (at(lx, i + 2, '\'')) {
        t->kind = lex_quote(lx, i + 3);
        return true;
    }
    if (!at(lx, i + 2, '"'))
        return false;
    e = qident_end(lx->s, lx->n, i + 3);
    t->kind = e == NOTFOUND ? TOK_BAD : TOK_UIDENT;
    if (e != NOTFOUND)
        lx->i = e;
    return true;
}

static tok_t lex_word(lexer_t *lx)
{
    tok_t t = {TOK_OTHER, lx->s + lx->i, 0};
    if (lex_prefixed(lx, &t))
        return t;
    size_t j = lx->i + 1;
    while (j < lx->n && is_ident_cont((unsigned char)lx->s[j]))
        j++;
    t.kind = TOK_IDENT;
    t.n = j - lx->i;
    lx->i = j;
    return t;
}

/* The next token. Numbers come out one digit at a time, which is harmless: only words and
 * literals matter, and a digit never starts either ("1e'x'" is 1 and E'x' to PostgreSQL up to
 * 14, an error from 15 on). */
static tok_t lex_next(lexer_t *lx)
{
    tok_t t = {TOK_BAD, NULL, 0};
    if (!skip_blank(lx))
        return t;
    if (lx->i >= lx->n) {
        t.kind = TOK_END;
        return t;
    }
    unsigned char c = (unsigned char)lx->s[lx->i];
    if (is_ident_start(c))
        return lex_word(lx);
    t.p = lx->s + lx->i;
    if (c == '\'') {
        t.kind = lex_quote(lx, lx->i + 1);
    } else if (c == '"') {
        size_t e = qident_end(lx->s, lx->n, lx->i + 1);
        if (e != NOTFOUND) {
            t = (tok_t){TOK_QIDENT, lx->s + lx->i + 1, e - lx->i - 2};
            lx->i = e;
        }
    } else if (c == '$') {
        t.kind = lex_dollar(lx);
    } else {
        t.kind = c == ';' ? TOK_SEMI : c == '(' ? TOK_LPAREN : TOK_OTHER;
        lx->i++;
    }
    return t;
}

/* ---- statements ---- */

/* ASCII case-insensitive equality with a lower-case name; PostgreSQL folds unquoted identifiers
 * the same way. Quoted ones are case-sensitive, so matching "SET_CONFIG" too only errs on the safe
 * side. */
static bool word_is(tok_t t, const char *lower)
{
    size_t n = strlen(lower);
    if (t.n != n)
        return false;
    for (size_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)t.p[k];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c | 0x20);
        if (c != (unsigned char)lower[k])
            return false;
    }
    return true;
}

/* Names whose mere mention in a data statement may leave session state: the session-level
 * advisory lock functions (the _xact_ ones end with the transaction; unlocking counts, harmless),
 * the sequence functions (currval/lastval state; DISCARD SEQUENCES), set_config, and pg_settings,
 * whose UPDATE rule is a SET. Matched as whole names, qualified or not, wherever they appear. */
static const char *const state_names[] = {
    "set_config",
    "pg_settings",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "nextval",
    "currval",
    "setval",
    "lastval",
};

static bool is_state_name(tok_t t)
{
    for (size_t k = 0; k < sizeof(state_names) / sizeof(state_names[0]); k++)
        if (word_is(t, state_names[k]))
            return true;
    return false;
}

/* The first keywords of data statements; `into` when an INTO in them may be SELECT ... INTO. */
static const struct {
    const char *word;
    bool into;
} data_keywords[] = {
    {"select", true},  {"with", true},    {"values", true},  {"table", true},
    {"insert", false}, {"update", false}, {"delete", false}, {"merge", false},
};

/* -1 when t does not start a data statement, else its data_keywords index. */
static int data_keyword(tok_t t)
{
    if (t.kind != TOK_IDENT)
        return -1;
    for (size_t k = 0; k < sizeof(data_keywords) / sizeof(data_keywords[0]); k++)
        if (word_is(t, data_keywords[k].word))
            return (int)k;
    return -1;
}

typedef enum verdict { V_PLAIN, V_STATE, V_END } verdict_t;

/* Reads one statement through its ';' (or the end of the text). V_END when the text had no
 * statement left, V_PLAIN for an empty or plain data statement. */
static verdict_t scan_statement(lexer_t *lx)
{
    tok_t t = lex_next(lx);
    size_t parens = 0;
    for (; t.kind == TOK_LPAREN; t = lex_next(lx))
        parens++;
    if (parens == 0 && (t.kind == TOK_END || t.kind == TOK_SEMI))
        return t.kind == TOK_END ? V_END : V_PLAIN;
    int kw = data_keyword(t);
    if (kw < 0)
        return V_STATE;
    bool into = data_keywords[kw].into;
    for (;;) {
        t = lex_next(lx);
        switch (t.kind) {
        case TOK_END:
        case TOK_SEMI:
            return V_PLAIN;
        case TOK_BAD:
        case TOK_UIDENT:
            return V_STATE;
        case TOK_IDENT:
        case TOK_QIDENT:
            /* A quoted "into" is a name, not the keyword. */
            if (is_state_name(t) || (into && t.kind == TOK_IDENT && word_is(t, "into")))
                return V_STATE;
            break;
        default:
            break;
        }
    }
}

bool bh_sql_leaves_state(const char *sql, size_t len)
{
    if (len == 0)
        return false;
    /* libpq sends a query up to its first NUL: the server would see another text than ours. */
    if (sql == NULL || memchr(sql, '\0', len) != NULL)
        return true;
    lexer_t lx = {sql, len, 0};
    for (;;) {
        verdict_t v = scan_statement(&lx);
        if (v != V_PLAIN)
            return v == V_STATE;
    }
}
