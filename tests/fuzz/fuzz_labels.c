/* libFuzzer target: Prometheus label value escaping (/metrics, proxy/bh_stats.c put_escaped via
 * bh__stats_escape_label). The input becomes a C string (it ends at the first NUL, as a name in
 * the config does). Invariants: the output has no raw newline or control byte, every '"' and
 * '\' is escaped, and unescaping it (\\ \" \n) gives back the input without its control bytes
 * other than newline (which put_escaped drops by design). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bh_alloc.h"
#include "bh_stats.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *out)
{
    fprintf(stderr, "fuzz_labels invariant: %s (output: %s)\n", what, out ? out : "");
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16384)
        return -1;
    char *in = malloc(size + 1);
    memcpy(in, data, size);
    in[size] = '\0';
    size_t len = 0;
    char *out = bh__stats_escape_label(in, &len);
    if (out == NULL)
        fail("out of memory", NULL);
    if (strlen(out) != len)
        fail("length differs from strlen", out);
    /* What the input should read back as: control bytes other than '\n' removed. */
    size_t n = strlen(in), k = 0;
    char *want = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)in[i] >= 0x20 || in[i] == '\n')
            want[k++] = in[i];
    want[k] = '\0';
    char *back = malloc(len + 1);
    size_t m = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)out[i];
        if (c < 0x20)
            fail("raw control byte in the output", out);
        if (c == '"')
            fail("unescaped quote", out);
        if (c == '\\') {
            if (i + 1 == len)
                fail("dangling backslash", out);
            char e = out[++i];
            if (e == '\\' || e == '"')
                back[m++] = e;
            else if (e == 'n')
                back[m++] = '\n';
            else
                fail("unknown escape", out);
        } else {
            back[m++] = (char)c;
        }
    }
    back[m] = '\0';
    if (m != k || memcmp(back, want, k) != 0)
        fail("unescaping does not give back the input", out);
    free(back);
    free(want);
    bh_free(out);
    free(in);
    return 0;
}
