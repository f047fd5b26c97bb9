/* Fork-join parallel loop for the CPU backend (src/cpu/threads.c). */
#ifndef QATTN_CPU_THREADS_H
#define QATTN_CPU_THREADS_H

#include "qattn.h" /* QATTN_MAX_THREADS: the one thread limit, public */

#include <stdatomic.h>
#include <stdint.h>

/* *first = min(*first, value), atomically: workers report the lowest index of something found
 * (e.g. the first overflowing row), so the report does not depend on the thread schedule. */
static inline void qattn_atomic_min(atomic_llong *first, long long value) {
    long long seen = atomic_load(first);
    while (value < seen && !atomic_compare_exchange_weak(first, &seen, value)) {
    }
}

/* Runs fn(arg, task, worker) for every task in [0, n_tasks); worker is in [0, n_threads)
 * and identifies per-thread scratch. Returns when all tasks are done. */
typedef void (*qattn_task_fn)(void *arg, int64_t task, int worker);
void qattn_parallel_for(int n_threads, int64_t n_tasks, qattn_task_fn fn, void *arg);

#endif
