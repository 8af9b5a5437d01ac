/* placeholder */
typedef int bh_placeholder_t;
