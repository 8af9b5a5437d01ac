/* ${VAR}, ${VAR:-default} and $$ substitution, applied to every scalar (and default) before it is
 * converted: secrets come from the environment. Any other '$' is kept as it is. */
#include <stdlib.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_conf_int.h"
#include "bh_sbuf.h"

static int valid_env_name(const char *s, size_t n)
{
    if (n == 0 || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == '_' || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9')))
            return 0;
    return 1;
}

/* One "${...}" whose name starts at name (just after "${"); end is the end of the input. Puts
 * the variable's value (or the default) into b and sets *next just after the closing '}'. */
static int expand_var(ctx_t *c, const yaml_node_t *n, const char *name, const char *end,
                      bh_sbuf_t *b, const char **next)
{
    const char *close = memchr(name, '}', (size_t)(end - name)), *dash, *val;
    char var[128];
    size_t nlen;

    if (close == NULL)
        return bh__conf_fail(c, n,
                             "unterminated '${' in the value of %s, expected ${NAME} or "
                             "${NAME:-default}",
                             c->path);
    dash = memmem(name, (size_t)(close - name), ":-", 2);
    nlen = (size_t)((dash ? dash : close) - name);
    if (!valid_env_name(name, nlen) || nlen >= sizeof var)
        return bh__conf_fail(c, n,
                             "invalid variable name '%.*s' in the value of %s, expected "
                             "letters, digits and '_' as in ${NAME} or ${NAME:-default}",
                             (int)(nlen < 64 ? nlen : 64), name, c->path);
    memcpy(var, name, nlen);
    var[nlen] = '\0';
    val = getenv(var);
    if (val != NULL && (val[0] != '\0' || dash == NULL))
        bh_sbuf_put(b, val, strlen(val));
    else if (dash != NULL)
        bh_sbuf_put(b, dash + 2, (size_t)(close - dash - 2));
    else
        return bh__conf_fail(c, n,
                             "environment variable '%s' is not set (used by %s), expected it "
                             "to be set or a default as in ${%s:-default}",
                             var, c->path, var);
    *next = close + 1;
    return 0;
}

int bh__conf_subst(ctx_t *c, const yaml_node_t *n, const char *s, size_t len, char **out)
{
    bh_sbuf_t b = {0};
    size_t i = 0;
    int rc = 0;

    while (i < len && rc == 0) {
        if (s[i] != '$' || i + 1 == len || (s[i + 1] != '$' && s[i + 1] != '{')) {
            const char *next = memchr(s + i + 1, '$', len - i - 1);
            size_t j = next ? (size_t)(next - s) : len;
            bh_sbuf_put(&b, s + i, j - i);
            i = j;
        } else if (s[i + 1] == '$') {
            bh_sbuf_put(&b, "$", 1);
            i += 2;
        } else {
            const char *next = NULL;
            rc = expand_var(c, n, s + i + 2, s + len, &b, &next);
            if (rc == 0)
                i = (size_t)(next - s);
        }
    }
    char *str = bh_sbuf_take(&b, NULL);
    if (rc == 0 && str == NULL)
        rc = bh__conf_oom(c);
    if (rc != 0) {
        bh_free(str);
        return rc;
    }
    *out = str;
    return 0;
}
