/* The context's persistent thread pool and the fork-join parallel loop on it (src/core/threads.c). */
#ifndef QATTN_CORE_THREADS_H
#define QATTN_CORE_THREADS_H

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

typedef struct qattn_ctx qattn_ctx;
typedef struct qattn_pool qattn_pool;

/* A pool with no threads yet (they start on the first call that needs them), allocated through
 * ctx's hooks; NULL if memory or a mutex/condition variable cannot be had. */
qattn_pool *qattn_pool_create(qattn_ctx *ctx);
/* Joins every worker and frees the pool (through ctx's hooks). NULL is a no-op. */
void qattn_pool_destroy(qattn_ctx *ctx, qattn_pool *pool);
/* Keeps at most n_threads - 1 workers (the caller is the n-th): joins those above. Growing is lazy. */
void qattn_pool_resize(qattn_pool *pool, int n_threads);

/* Runs fn(arg, task, worker) for every task in [0, n_tasks); worker is in [0, n_threads) and
 * identifies per-thread scratch; the calling thread is worker 0. Returns when all tasks are done.
 * Tasks are handed out through an atomic counter, so which thread runs a task never changes what
 * it computes. With pool NULL, a single thread, or a worker that cannot be started, the calling
 * thread does the rest. */
typedef void (*qattn_task_fn)(void *arg, int64_t task, int worker);
void qattn_parallel_for(qattn_pool *pool, int n_threads, int64_t n_tasks, qattn_task_fn fn, void *arg);

#endif
