/* Intrusive circular doubly linked lists (libuv queue.h style) with container_of. */
#ifndef BH_LIST_H
#define BH_LIST_H

#include <stddef.h>
#include <stdbool.h>

#define bh_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

typedef struct bh_list {
    struct bh_list *next, *prev;
} bh_list_t;

/* An initialised node points at itself: it is both an empty list head and a detached element. */
static inline void bh_list_init(bh_list_t *l)
{
    l->next = l->prev = l;
}

static inline bool bh_list_empty(const bh_list_t *l)
{
    return l->next == l;
}

/* True while n is linked into some list (n must have been initialised). */
static inline bool bh_list_linked(const bh_list_t *n)
{
    return n->next != n;
}

static inline void bh_list__insert(bh_list_t *n, bh_list_t *prev, bh_list_t *next)
{
    n->prev = prev;
    n->next = next;
    prev->next = n;
    next->prev = n;
}

static inline void bh_list_push_back(bh_list_t *head, bh_list_t *n)
{
    bh_list__insert(n, head->prev, head);
}

static inline void bh_list_push_front(bh_list_t *head, bh_list_t *n)
{
    bh_list__insert(n, head, head->next);
}

/* Unlink n and leave it initialised (safe to remove twice). */
static inline void bh_list_remove(bh_list_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    bh_list_init(n);
}

static inline bh_list_t *bh_list_first(const bh_list_t *head)
{
    return bh_list_empty(head) ? NULL : head->next;
}

static inline bh_list_t *bh_list_last(const bh_list_t *head)
{
    return bh_list_empty(head) ? NULL : head->prev;
}

#define bh_list_foreach(pos, head) for ((pos) = (head)->next; (pos) != (head); (pos) = (pos)->next)

/* Safe against removal of pos during the iteration. */
#define bh_list_foreach_safe(pos, tmp, head)                                                       \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head); (pos) = (tmp), (tmp) = (pos)->next)

#endif
