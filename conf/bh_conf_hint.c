/* Typo suggestions: "did you mean" for unknown keys, words and names, else the list expected.
 *
 * A candidate is suggested when its edit distance to the word is at most 1 (words of up to 4
 * characters) or 2 (longer ones); among several, the first closest one wins. */
#include <stdio.h>
#include <string.h>
#include "bh_conf_int.h"

/* Levenshtein distance; SIZE_MAX for words of 64 characters or more (never suggested). */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[64];

    if (la >= COUNT(row) || lb >= COUNT(row))
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* Keeps cand when it is the closest so far and close enough to be a likely typo. */
void bh__conf_hint_consider(hint_t *h, const char *cand)
{
    size_t d = edit_distance(h->word, cand), limit = strlen(h->word) <= 4 ? 1 : 2;
    if (d <= limit && d < h->dist) {
        h->dist = d;
        h->match = cand;
    }
}

int bh__conf_word_fail(ctx_t *c, const yaml_node_t *n, const char *what, const char *text,
                       const name_bit_t *names, size_t n_names)
{
    hint_t best = {text, NULL, SIZE_MAX};
    char list[300] = "";
    size_t len = 0;

    for (size_t i = 0; i < n_names; i++) {
        bh__conf_hint_consider(&best, names[i].name);
        if (len < sizeof list)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s",
                                    i == 0             ? ""
                                    : i + 1 == n_names ? " or "
                                                       : ", ",
                                    names[i].name);
    }
    if (best.match != NULL)
        return bh__conf_fail(c, n, "unknown %s '%.64s' in %s, did you mean '%s'?", what, text,
                             c->path, best.match);
    return bh__conf_fail(c, n, "unknown %s '%.64s' in %s, expected %s", what, text, c->path, list);
}

/* Suggestions come from every key of the section, even those not supported yet; the list names
 * only the supported ones. Keys a database section rejects (F_NA) are neither. */
int bh__conf_unknown_key(ctx_t *c, enum sec sec, yaml_node_t *kn, const char *key)
{
    hint_t best = {key, NULL, SIZE_MAX};
    char list[300] = "", buf[300];
    size_t len = 0;

    for (const spec_t *k = bh__conf_specs; k < bh__conf_specs + bh__conf_n_specs; k++) {
        if (k->sec != sec || (k->flags & F_NA))
            continue;
        bh__conf_hint_consider(&best, k->key);
        if (k->type != NULL && len < sizeof list)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", len ? ", " : "", k->key);
    }
    if (best.match != NULL)
        return bh__conf_fail(c, kn, "unknown key '%.64s' %s, did you mean '%s'?", key,
                             bh__conf_where(c, buf, sizeof buf), best.match);
    return bh__conf_fail(c, kn, "unknown key '%.64s' %s, expected one of: %s", key,
                         bh__conf_where(c, buf, sizeof buf), list);
}
