/* Passive outlier ejection. Per endpoint: the failure run, the ejection count, and the start and
 * end of the last ejection (0 = never ejected; "ejected" means now < until). */
#include "bh_alloc.h"
#include "bh_outlier.h"

typedef struct ep {
    _Atomic uint32_t run;
    _Atomic uint32_t ejections;
    _Atomic uint64_t since_ms, until_ms;
    _Atomic bool healthy;
} ep_t;

struct bh_outlier {
    bh_conf_outlier_t conf;
    size_t n;
    size_t max_ejectable;
    atomic_flag deciding;
    _Atomic uint64_t ejections, skipped, released;
    ep_t ep[];
};

bh_outlier_t *bh_outlier_new(const bh_conf_outlier_t *conf, size_t n_endpoints)
{
    bh_outlier_t *o;
    double m;

    if (n_endpoints > (SIZE_MAX - sizeof *o) / sizeof(ep_t))
        return NULL;
    o = bh_calloc(1, sizeof *o + n_endpoints * sizeof(ep_t));
    if (o == NULL)
        return NULL;
    o->conf = *conf;
    o->n = n_endpoints;
    m = conf->max_ejected * (double)n_endpoints + 1e-9; /* 0.5 x 4 is 2, not 1.999 */
    o->max_ejectable = m <= 0 ? 0 : (size_t)m > n_endpoints ? n_endpoints : (size_t)m;
    atomic_flag_clear(&o->deciding);
    atomic_init(&o->ejections, 0);
    atomic_init(&o->skipped, 0);
    atomic_init(&o->released, 0);
    for (size_t i = 0; i < n_endpoints; i++) {
        atomic_init(&o->ep[i].run, 0);
        atomic_init(&o->ep[i].ejections, 0);
        atomic_init(&o->ep[i].since_ms, 0);
        atomic_init(&o->ep[i].until_ms, 0);
        atomic_init(&o->ep[i].healthy, true);
    }
    return o;
}

void bh_outlier_free(bh_outlier_t *o)
{
    bh_free(o);
}

static uint64_t until_of(bh_outlier_t *o, size_t i)
{
    return atomic_load_explicit(&o->ep[i].until_ms, memory_order_relaxed);
}

bool bh_outlier_is_ejected(bh_outlier_t *o, size_t i, uint64_t now_ms, uint64_t *until_ms)
{
    uint64_t u = until_of(o, i);

    if (until_ms != NULL)
        *until_ms = u;
    return now_ms < u;
}

static size_t count_ejected(bh_outlier_t *o, uint64_t now_ms)
{
    size_t n = 0;

    for (size_t i = 0; i < o->n; i++)
        n += now_ms < until_of(o, i);
    return n;
}

/* The ejected endpoint whose evidence is oldest (ejected first), o->n when none is. One that
 * fails its active health checks is passed over: releasing it would not make it eligible. */
static size_t stalest_ejected(bh_outlier_t *o, uint64_t now_ms)
{
    size_t best = o->n;
    uint64_t best_since = UINT64_MAX;

    for (size_t i = 0; i < o->n; i++) {
        uint64_t since = atomic_load_explicit(&o->ep[i].since_ms, memory_order_relaxed);
        if (now_ms < until_of(o, i) && since < best_since &&
            atomic_load_explicit(&o->ep[i].healthy, memory_order_relaxed)) {
            best = i;
            best_since = since;
        }
    }
    return best;
}

/* Makes room under max_ejected for a new ejection: the endpoint ejected first comes back now.
 * Its evidence is older than the failure run that just ended, and it may well have recovered
 * (a rolling restart); keeping it out would leave the traffic on the endpoint known to fail.
 * Its multiplier is kept, so if it still fails it goes out again, for longer. */
static bool make_room(bh_outlier_t *o, uint64_t now_ms, size_t *released)
{
    *released = o->n;
    if (count_ejected(o, now_ms) < o->max_ejectable)
        return true;
    size_t j = stalest_ejected(o, now_ms);
    if (j == o->n) { /* max_ejectable is 0, or each ejected one is unhealthy too */
        atomic_fetch_add_explicit(&o->skipped, 1, memory_order_relaxed);
        return false;
    }
    atomic_store_explicit(&o->ep[j].until_ms, now_ms, memory_order_relaxed);
    atomic_fetch_add_explicit(&o->released, 1, memory_order_relaxed);
    *released = j;
    return true;
}

/* Endpoint i reached its failure threshold: eject it, within max_ejected. */
static bool try_eject(bh_outlier_t *o, size_t i, uint64_t now_ms, bh_outlier_event_t *ev)
{
    ep_t *e = &o->ep[i];
    uint32_t times;
    uint64_t d;
    size_t released;
    bool ejected = false;

    if (atomic_flag_test_and_set_explicit(&o->deciding, memory_order_acquire))
        return false; /* another thread is deciding; the next failure decides again */
    if (now_ms < until_of(o, i)) {
        atomic_store_explicit(&e->run, 0,
                              memory_order_relaxed); /* late failures of an ejected one */
    } else if (make_room(o, now_ms, &released)) {
        times = atomic_load_explicit(&e->ejections, memory_order_relaxed) + 1;
        d = o->conf.eject_for_ms;
        d = d > BH_OUTLIER_MAX_EJECT_MS / times ? BH_OUTLIER_MAX_EJECT_MS : d * times;
        atomic_store_explicit(&e->ejections, times, memory_order_relaxed);
        atomic_store_explicit(&e->since_ms, now_ms, memory_order_relaxed);
        atomic_store_explicit(&e->until_ms, now_ms + d, memory_order_relaxed);
        atomic_store_explicit(&e->run, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&o->ejections, 1, memory_order_relaxed);
        if (ev != NULL)
            *ev = (bh_outlier_event_t){.eject_ms = d, .times = times, .released = released};
        ejected = true;
    }
    atomic_flag_clear_explicit(&o->deciding, memory_order_release);
    return ejected;
}

bool bh_outlier_record_ev(bh_outlier_t *o, size_t i, bool failed, uint64_t now_ms,
                          bh_outlier_event_t *ev)
{
    ep_t *e;
    uint32_t run;

    if (i >= o->n)
        return false;
    e = &o->ep[i];
    if (!failed) {
        uint64_t u = until_of(o, i);
        atomic_store_explicit(&e->run, 0, memory_order_relaxed);
        if (u != 0 && now_ms >= u && now_ms - u >= BH_OUTLIER_MAX_EJECT_MS &&
            atomic_load_explicit(&e->ejections, memory_order_relaxed) != 0)
            atomic_store_explicit(&e->ejections, 0, memory_order_relaxed);
        return false;
    }
    run = atomic_fetch_add_explicit(&e->run, 1, memory_order_relaxed) + 1;
    if (o->conf.consecutive_failures > 0 && run >= o->conf.consecutive_failures)
        return try_eject(o, i, now_ms, ev);
    return false;
}

void bh_outlier_set_healthy(bh_outlier_t *o, size_t i, bool healthy)
{
    if (i < o->n)
        atomic_store_explicit(&o->ep[i].healthy, healthy, memory_order_relaxed);
}

bool bh_outlier_is_healthy(bh_outlier_t *o, size_t i)
{
    return i < o->n && atomic_load_explicit(&o->ep[i].healthy, memory_order_relaxed);
}

size_t bh_outlier_eligible(bh_outlier_t *o, uint64_t now_ms, bool *eligible, bool *panic)
{
    size_t n = 0;

    for (size_t i = 0; i < o->n; i++) {
        eligible[i] = now_ms >= until_of(o, i) &&
                      atomic_load_explicit(&o->ep[i].healthy, memory_order_relaxed);
        n += eligible[i];
    }
    if (panic != NULL)
        *panic = n == 0 && o->n > 0;
    if (n == 0) {
        for (size_t i = 0; i < o->n; i++)
            eligible[i] = true;
        n = o->n;
    }
    return n;
}

uint32_t bh_outlier_ejections(bh_outlier_t *o, size_t i)
{
    return i < o->n ? atomic_load_explicit(&o->ep[i].ejections, memory_order_relaxed) : 0;
}

void bh_outlier_stats(bh_outlier_t *o, uint64_t now_ms, bh_outlier_stats_t *out)
{
    out->endpoints = o->n;
    out->ejected = count_ejected(o, now_ms);
    out->max_ejectable = o->max_ejectable;
    out->unhealthy = 0;
    out->eligible = 0;
    for (size_t i = 0; i < o->n; i++) {
        bool healthy = atomic_load_explicit(&o->ep[i].healthy, memory_order_relaxed);
        out->unhealthy += !healthy;
        out->eligible += healthy && now_ms >= until_of(o, i);
    }
    out->ejections = atomic_load_explicit(&o->ejections, memory_order_relaxed);
    out->ejections_skipped = atomic_load_explicit(&o->skipped, memory_order_relaxed);
    out->ejections_released = atomic_load_explicit(&o->released, memory_order_relaxed);
}
