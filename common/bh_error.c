/* The error table's accessors. */
#include <string.h>
#include "bh_error.h"

#define BH_ERR_CASE_MSG(name, val, ps, msg)                                                        \
    case BH_E##name:                                                                               \
        return msg;
#define BH_ERR_CASE_NAME(name, val, ps, msg)                                                       \
    case BH_E##name:                                                                               \
        return #name;
#define BH_ERR_CASE_PS(name, val, ps, msg)                                                         \
    case BH_E##name:                                                                               \
        return ps;

const char *bh_strerror(int err)
{
    switch (err) {
        BH_ERRNO_MAP(BH_ERR_CASE_MSG)
    default:
        break;
    }
    if (err < 0 && err > -1000)
        return strerror(-err);
    return "unknown error";
}

const char *bh_errname(int err)
{
    switch (err) {
        BH_ERRNO_MAP(BH_ERR_CASE_NAME)
    default:
        return "UNKNOWN";
    }
}

const char *bh_err_proxy_status(int err)
{
    switch (err) {
        BH_ERRNO_MAP(BH_ERR_CASE_PS)
    default:
        return NULL;
    }
}
