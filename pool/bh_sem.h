/* Permits: a counting semaphore shared by the pools of several threads, exact (atomic), never
 * blocking, whose freed permits go to the oldest waiter of any thread.
 *
 * One semaphore caps the connections of one destination (an upstream's endpoints, a Postgres
 * key) over every worker. It has one lane per thread (worker) that may use it; the pools of that
 * thread sharing the semaphore are attached to its lane. A lane publishes what other threads need
 * to know to give it a permit or ask it for one:
 *   tickets  the tickets of its oldest waiters that have no connection on the way (a ticket is
 *            the waiter's place in one order over all lanes: bh_sem_ticket)
 *   need     how many such waiters it has
 *   idle     how many idle connections it holds
 * and other threads write to it:
 *   granted  permits handed over to it (each for one of its needy waiters), not yet taken
 *   asked    another lane needs a permit while this one holds idle connections
 * A lane that was handed a permit or asked is queued on its thread's inbox (bh_sem_inbox_t) and
 * that one thread is woken; it looks only at the lanes queued there.
 *
 * Invariant: used = connections of every attached pool (connecting, idle, busy) + for every lane
 * granted + spare. A permit moves between these places, from one thread to another, without
 * ever being free in between, so a newcomer cannot take it from the waiter it was given to. It is
 * free (used - 1) only when no needy waiter is seen anywhere. bh_pool.c holds the policy; this
 * file holds the shared state and the atomic steps. */
#ifndef BH_SEM_H
#define BH_SEM_H

#include <assert.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include "bh_list.h"

#define BH_SEM_NONE UINT64_MAX    /* no ticket: sorts after every waiter */
#define BH_SEM_SHOWN 4            /* tickets a lane publishes (its oldest needy waiters) */
#define BH_SEM_GONE 0x80000000u   /* in lane->granted: no pool is attached, nothing can be given */

typedef struct bh_sem bh_sem_t;
typedef struct bh_sem_lane bh_sem_lane_t;
typedef struct bh_sem_inbox bh_sem_inbox_t;

/* One per thread: the lanes (of any semaphore) that asked this thread to act. Pushed by any
 * thread, drained by its owner with bh_pool_inbox_run(). A queued lane holds a reference to its
 * semaphore, so a semaphore outlives the messages about it. */
struct bh_sem_inbox {
    _Atomic(bh_sem_lane_t *) head;
    uint32_t lane;                           /* this thread's lane in every semaphore */
    void (*wake)(bh_sem_inbox_t *in);        /* any thread: make the owner drain soon */
    void *data;
};

struct bh_sem_lane {
    /* Written by the owner thread, read by any. Each lane starts a cache line of its own. */
    _Alignas(64) _Atomic uint64_t tickets[BH_SEM_SHOWN]; /* oldest needy waiters, ascending */
    _Atomic uint32_t need;                  /* waiters with no connection on the way */
    _Atomic uint32_t idle;                  /* idle connections */
    _Atomic(bh_sem_inbox_t *) inbox;        /* set when the first pool attaches */
    /* Written by any thread. */
    _Atomic uint32_t granted;               /* permits handed over, not yet taken; | GONE */
    _Atomic uint32_t asked;                 /* 1: yield idle connections to needy waiters */
    _Atomic uint32_t queued;                /* 1: on its inbox */
    bh_sem_lane_t *next;                    /* inbox link, written by the one who queued it */
    bh_sem_t *sem;
    /* Owner thread only. */
    bh_list_t pools;                        /* bh_pool_t.lane_link */
    uint32_t n_pools;
    uint32_t n_waiters;                     /* waiters of the pools here */
    uint32_t spare;                         /* permits held here for a needy waiter here */
    uint32_t shown_need, shown_idle;        /* what was last published */
    uint64_t shown[BH_SEM_SHOWN];
};

struct bh_sem {
    _Atomic int64_t used;
    int64_t max;
    _Atomic uint64_t enqueued;              /* waiters ever queued: the next ticket */
    _Atomic uint64_t dequeued;              /* waiters ever dequeued */
    _Atomic uint32_t refs;
    uint32_t n_lanes;
    bh_sem_lane_t *lanes;                   /* [n_lanes], in the same allocation */
};

/* A semaphore of max permits for n_lanes threads (lanes 0 .. n_lanes - 1), with one reference
 * (the caller's). NULL on allocation failure. */
bh_sem_t *bh_sem_new(int64_t max, uint32_t n_lanes);
bh_sem_t *bh_sem_ref(bh_sem_t *s);
/* Any thread. Frees it when the last reference goes: every pool must have detached first. */
void bh_sem_unref(bh_sem_t *s);

static inline bh_sem_lane_t *bh_sem_lane(bh_sem_t *s, uint32_t i)
{
    assert(i < s->n_lanes);
    return &s->lanes[i];
}

/* Takes one permit if one is free. */
static inline bool bh_sem_try_acquire(bh_sem_t *s)
{
    int64_t used = atomic_load_explicit(&s->used, memory_order_relaxed);
    while (used < s->max) {
        if (atomic_compare_exchange_weak_explicit(&s->used, &used, used + 1,
                                                  memory_order_acq_rel, memory_order_relaxed))
            return true;
    }
    return false;
}

/* Gives back one permit. Releasing more than was acquired is a bug. */
static inline void bh_sem_release(bh_sem_t *s)
{
    int64_t prev = atomic_fetch_sub_explicit(&s->used, 1, memory_order_acq_rel);
    assert(prev > 0 && "bh_sem_release without a matching acquire");
    (void)prev;
}

static inline int64_t bh_sem_in_use(bh_sem_t *s)
{
    return atomic_load_explicit(&s->used, memory_order_relaxed);
}

/* A waiter is queued: its ticket (its place among the waiters of every lane). */
static inline uint64_t bh_sem_ticket(bh_sem_t *s)
{
    return atomic_fetch_add_explicit(&s->enqueued, 1, memory_order_relaxed);
}

/* A waiter left the queue (served, timed out, cancelled). */
static inline void bh_sem_left(bh_sem_t *s)
{
    atomic_fetch_add_explicit(&s->dequeued, 1, memory_order_relaxed);
}

/* Waiters queued on every lane (a snapshot that may be slightly stale). */
static inline uint64_t bh_sem_waiting(bh_sem_t *s)
{
    uint64_t out = atomic_load_explicit(&s->dequeued, memory_order_relaxed);
    uint64_t in = atomic_load_explicit(&s->enqueued, memory_order_relaxed);
    return in > out ? in - out : 0;
}

/* The ticket by which lane l would be given its next permit now, or NONE when it needs none
 * that is not already on its way (granted). *granted receives what it read for a later claim. */
static inline uint64_t bh_sem_lane_next(bh_sem_lane_t *l, uint32_t *granted)
{
    uint32_t g = atomic_load_explicit(&l->granted, memory_order_relaxed);
    *granted = g;
    if (g & BH_SEM_GONE)
        return BH_SEM_NONE;
    if (atomic_load_explicit(&l->need, memory_order_relaxed) <= g)
        return BH_SEM_NONE;
    return atomic_load_explicit(&l->tickets[g < BH_SEM_SHOWN ? g : BH_SEM_SHOWN - 1],
                                memory_order_relaxed);
}

/* The lane other than self with the oldest needy waiter whose ticket is below `below`, or NULL.
 * A read-only look: bh_sem_claim() hands a permit over for real. */
bh_sem_lane_t *bh_sem_oldest(bh_sem_t *s, const bh_sem_lane_t *self, uint64_t below,
                             uint64_t *ticket);

/* Hands a permit the caller holds (counted in used, attached to nothing) to the lane other than
 * self with the oldest needy waiter below `below`: its granted count goes up and it is queued on
 * its inbox. Returns that lane, or NULL when none needs one (the caller still holds the permit). */
bh_sem_lane_t *bh_sem_claim(bh_sem_t *s, const bh_sem_lane_t *self, uint64_t below);

/* Queues l on its thread's inbox and wakes that thread (unless already queued). Any thread. */
void bh_sem_post(bh_sem_lane_t *l);

/* Asks the lanes other than self that hold idle connections to yield them, until those asked
 * hold at least `need` of them (lanes already asked count too). Wakes only the lanes it asks. */
void bh_sem_ask_idle(bh_sem_t *s, const bh_sem_lane_t *self, uint32_t need);

/* Owner: takes every permit granted to l (to be held as l->spare). */
uint32_t bh_sem_lane_take(bh_sem_lane_t *l);

/* Owner: the first pool attaches (the lane can be given permits) / the last one detaches
 * (returns the permits granted meanwhile, which nobody can add to any more). */
void bh_sem_lane_open(bh_sem_lane_t *l, bh_sem_inbox_t *in);
uint32_t bh_sem_lane_close(bh_sem_lane_t *l);

/* Owner: pops every lane queued on in (each still holds its semaphore reference: the caller
 * drops it with bh_sem_unref after handling the lane). Returns a list linked by ->next. */
bh_sem_lane_t *bh_sem_inbox_take(bh_sem_inbox_t *in);

#endif
