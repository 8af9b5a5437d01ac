/* libyaml side of the config: the one document, node helpers, dotted paths, FILE:LINE:COL errors.
 *
 * Every message a load can fail with is formatted here (bh__conf_fail): "FILE:LINE:COL: what is
 * wrong, what was expected", with line and column 1-based from the node's start mark. c->path is
 * the dotted path of the node being read ("upstreams.api.pool"); callers push a component before
 * reading a child and pop it after, so on any return the path is back where it was. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_conf_int.h"

/* ---- messages and paths ---------------------------------------------------------------- */

int bh__conf_fail(ctx_t *c, const yaml_node_t *n, const char *fmt, ...)
{
    size_t line = n ? n->start_mark.line + 1 : 1, col = n ? n->start_mark.column + 1 : 1;
    int len = snprintf(c->err->msg, sizeof c->err->msg, "%s:%zu:%zu: ", c->name, line, col);
    va_list ap;

    va_start(ap, fmt);
    if (len > 0 && (size_t)len < sizeof c->err->msg)
        vsnprintf(c->err->msg + len, sizeof c->err->msg - (size_t)len, fmt, ap);
    va_end(ap);
    return BH_ECONFIG;
}

int bh__conf_warn(ctx_t *c, const yaml_node_t *n, const char *fmt, ...)
{
    size_t line = n ? n->start_mark.line + 1 : 1, col = n ? n->start_mark.column + 1 : 1;
    char msg[512], **grown;
    int len = snprintf(msg, sizeof msg, "%s:%zu:%zu: ", c->name, line, col);
    va_list ap;

    va_start(ap, fmt);
    if (len > 0 && (size_t)len < sizeof msg)
        vsnprintf(msg + len, sizeof msg - (size_t)len, fmt, ap);
    va_end(ap);
    grown = bh_realloc(c->conf->warnings, (c->conf->n_warnings + 1) * sizeof *grown);
    if (grown == NULL)
        return bh__conf_oom(c);
    c->conf->warnings = grown;
    if ((grown[c->conf->n_warnings] = bh_strdup(msg)) == NULL)
        return bh__conf_oom(c);
    c->conf->n_warnings++;
    return 0;
}

int bh__conf_oom(ctx_t *c)
{
    snprintf(c->err->msg, sizeof c->err->msg, "%s: out of memory", c->name);
    return BH_ENOMEM;
}

/* Appends ".key" (or "key" at the top) to the path; returns the old length for path_pop. */
size_t bh__conf_path_key(ctx_t *c, const char *key)
{
    size_t old = strlen(c->path);
    snprintf(c->path + old, sizeof c->path - old, "%s%s", old ? "." : "", key);
    return old;
}

size_t bh__conf_path_index(ctx_t *c, size_t i)
{
    size_t old = strlen(c->path);
    snprintf(c->path + old, sizeof c->path - old, "[%zu]", i);
    return old;
}

void bh__conf_path_pop(ctx_t *c, size_t old)
{
    c->path[old] = '\0';
}

/* "in limits" or "at top level". */
const char *bh__conf_where(const ctx_t *c, char *buf, size_t n)
{
    if (c->path[0] == '\0')
        return "at top level";
    snprintf(buf, n, "in %s", c->path);
    return buf;
}

/* ---- YAML node helpers ----------------------------------------------------------------- */

yaml_node_t *bh__conf_node(ctx_t *c, int index)
{
    return yaml_document_get_node(c->doc, index);
}

yaml_node_t *bh__conf_item(ctx_t *c, const yaml_node_t *seq, size_t i)
{
    return bh__conf_node(c, seq->data.sequence.items.start[i]);
}

bool bh__conf_is_null(const yaml_node_t *n)
{
    const char *s;

    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    s = (const char *)n->data.scalar.value;
    return s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
           strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

const char *bh__conf_kind_name(const yaml_node_t *n)
{
    return n->type == YAML_MAPPING_NODE    ? "a mapping"
           : n->type == YAML_SEQUENCE_NODE ? "a list"
                                           : "a single value";
}

int bh__conf_type_fail(ctx_t *c, const yaml_node_t *n, const char *expect)
{
    return bh__conf_fail(c, n, "%s is %s, expected %s", c->path, bh__conf_kind_name(n), expect);
}

/* The pair of key in a mapping node, or NULL (also when map is NULL or not a mapping). */
static yaml_node_pair_t *find_pair(ctx_t *c, yaml_node_t *map, const char *key)
{
    if (map == NULL || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *kn = bh__conf_node(c, p->key);
        if (kn->type == YAML_SCALAR_NODE && strcmp((const char *)kn->data.scalar.value, key) == 0)
            return p;
    }
    return NULL;
}

yaml_node_t *bh__conf_lookup(ctx_t *c, yaml_node_t *map, const char *key)
{
    yaml_node_pair_t *p = find_pair(c, map, key);
    return p != NULL ? bh__conf_node(c, p->value) : NULL;
}

yaml_node_t *bh__conf_key_node(ctx_t *c, yaml_node_t *map, const char *key)
{
    yaml_node_pair_t *p = find_pair(c, map, key);
    return p != NULL ? bh__conf_node(c, p->key) : NULL;
}

size_t bh__conf_seq_len(const yaml_node_t *n)
{
    return n->type == YAML_SEQUENCE_NODE
               ? (size_t)(n->data.sequence.items.top - n->data.sequence.items.start)
               : 0;
}

int bh__conf_check_dup_key(ctx_t *c, yaml_node_t *map, yaml_node_pair_t *p)
{
    yaml_node_t *kn = bh__conf_node(c, p->key);
    char buf[300];

    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
        yaml_node_t *prev = bh__conf_node(c, q->key);
        if (prev->type == YAML_SCALAR_NODE &&
            strcmp((const char *)prev->data.scalar.value, (const char *)kn->data.scalar.value) == 0)
            return bh__conf_fail(
                c, kn, "duplicate key '%s' %s (first given at %zu:%zu), expected each key once",
                (const char *)kn->data.scalar.value, bh__conf_where(c, buf, sizeof buf),
                prev->start_mark.line + 1, prev->start_mark.column + 1);
    }
    return 0;
}

int bh__conf_scalar_text(ctx_t *c, yaml_node_t *n, const char *expect, int empty_ok, char **out)
{
    size_t len;
    int rc;

    if (n->type != YAML_SCALAR_NODE)
        return bh__conf_type_fail(c, n, expect);
    len = n->data.scalar.length;
    if (memchr(n->data.scalar.value, '\0', len) != NULL)
        return bh__conf_fail(c, n, "value of %s contains a NUL character, expected %s", c->path,
                             expect);
    rc = bh__conf_subst(c, n, (const char *)n->data.scalar.value, len, out);
    if (rc == 0 && (*out)[0] == '\0' && !empty_ok) {
        bh_free(*out);
        return bh__conf_fail(c, n, "empty value for %s, expected %s", c->path, expect);
    }
    return rc;
}

/* ---- the document ---------------------------------------------------------------------- */

/* yaml[0..len) is the input: reader errors (bad encoding) only give a byte offset. */
static int syntax_error(ctx_t *c, const yaml_parser_t *p, const char *yaml, size_t len)
{
    if (p->error == YAML_MEMORY_ERROR)
        return bh__conf_oom(c);
    if (p->error == YAML_READER_ERROR) {
        size_t line = 1, col = 1;
        for (size_t i = 0; i < p->problem_offset && i < len; i++, col++)
            if (yaml[i] == '\n') {
                line++;
                col = 0;
            }
        snprintf(c->err->msg, sizeof c->err->msg, "%s:%zu:%zu: invalid text (%s), expected UTF-8",
                 c->name, line, col, p->problem ? p->problem : "unreadable");
        return BH_ECONFIG;
    }
    if (p->context != NULL)
        snprintf(c->err->msg, sizeof c->err->msg, "%s:%zu:%zu: invalid YAML: %s (%s at %zu:%zu)",
                 c->name, p->problem_mark.line + 1, p->problem_mark.column + 1,
                 p->problem ? p->problem : "syntax error", p->context, p->context_mark.line + 1,
                 p->context_mark.column + 1);
    else
        snprintf(c->err->msg, sizeof c->err->msg, "%s:%zu:%zu: invalid YAML: %s", c->name,
                 p->problem_mark.line + 1, p->problem_mark.column + 1,
                 p->problem ? p->problem : "syntax error");
    return BH_ECONFIG;
}

int bh__conf_yaml_load(ctx_t *c, const char *yaml, size_t len, yaml_document_t *doc)
{
    yaml_parser_t parser;
    yaml_document_t extra;
    int rc;

    if (!yaml_parser_initialize(&parser))
        return bh__conf_oom(c);
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
    if (!yaml_parser_load(&parser, doc)) {
        rc = syntax_error(c, &parser, yaml, len);
        yaml_parser_delete(&parser);
        return rc;
    }
    if (!yaml_parser_load(&parser, &extra)) {
        rc = syntax_error(c, &parser, yaml, len);
    } else {
        yaml_node_t *second = yaml_document_get_root_node(&extra);
        rc =
            second != NULL
                ? bh__conf_fail(c, second, "a second YAML document, expected one document per file")
                : 0;
        yaml_document_delete(&extra);
    }
    yaml_parser_delete(&parser);
    if (rc != 0)
        yaml_document_delete(doc);
    return rc;
}
