/* The error table's accessors. */
#include <string.h>
#include "bh_error.h"

#define BH_ERR_CASE_MSG(name, val, status, ps, code, msg)                                           \
    case BH_E##name:                                                                               \
        return msg;
#define BH_ERR_CASE_NAME(name, val, status, ps, code, msg)                                          \
    case BH_E##name:                                                                               \
        return #name;
#define BH_ERR_CASE_PS(name, val, status, ps, code, msg)                                            \
    case BH_E##name:                                                                               \
        return ps;
#define BH_ERR_CASE_STATUS(name, val, status, ps, code, msg)                                        \
    case BH_E##name:                                                                               \
        return (status) != 0 ? (status) : 500;
#define BH_ERR_CASE_CODE(name, val, status, ps, code, msg)                                          \
    case BH_E##name:                                                                               \
        return code;

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

int bh_err_status(int err)
{
    switch (err) {
        BH_ERRNO_MAP(BH_ERR_CASE_STATUS)
    default:
        return 502;
    }
}

const char *bh_err_sql_code(int err)
{
    switch (err) {
        BH_ERRNO_MAP(BH_ERR_CASE_CODE)
    default:
        return "";
    }
}
