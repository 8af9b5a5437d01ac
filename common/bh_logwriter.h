/* A writer of whole lines on a thread of its own, for logs: callers hand it pieces and never wait
 * for the destination, so a slow or stalled one (a pipe nobody reads: a container's stdout whose
 * reader is stuck, journald under pressure) cannot hold up an event loop. At most cap bytes wait;
 * a piece beyond that is refused and the caller counts its lines as dropped. Pieces are written in
 * the order they were handed over, one at a time, so lines never interleave. */
#ifndef BH_LOGWRITER_H
#define BH_LOGWRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bh_logwriter bh_logwriter_t;

/* Starts the writer thread for fd (owned by the caller, open until bh_logwriter_stop returned),
 * keeping at most cap bytes queued. NULL when out of memory or threads. */
bh_logwriter_t *bh_logwriter_start(int fd, size_t cap);
/* Hands n bytes of whole lines to the writer. Returns false (nothing queued) when that would
 * exceed its cap or memory is short. Any thread. */
bool bh_logwriter_put(bh_logwriter_t *lw, const char *data, size_t n);
/* Lines lost to failed writes (a full disk, a closed pipe) so far. Any thread. */
uint64_t bh_logwriter_lost(const bh_logwriter_t *lw);
/* Writes what is queued, waiting at most timeout_ms for a stalled destination, then stops the
 * thread and frees the writer (a writer still stuck in write(2) is left to the process's exit). */
void bh_logwriter_stop(bh_logwriter_t *lw, uint64_t timeout_ms);
/* The number of lines ('\n') in p[0..n). */
uint64_t bh_logwriter_lines(const char *p, size_t n);

#endif
