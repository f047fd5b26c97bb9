/* The context's persistent thread pool: workers start on the first parallel call that needs them,
 * then park on a condition variable between calls (no thread is created per call) and are joined
 * by qattn_pool_resize / qattn_pool_destroy. One job at a time: a context is used by one thread at
 * a time (qattn.h), and a nested call runs on its caller's thread. */
#include "core/threads.h"

#include "qattn_internal.h"

#include <pthread.h>
#include <stdatomic.h>

struct qattn_pool {
    pthread_mutex_t mu;
    pthread_cond_t wake; /* a new job, or workers above keep_below must leave */
    pthread_cond_t done; /* the last participating worker finished the job */
    int n_started;       /* workers 1..n_started run */
    int keep_below;      /* workers with id >= keep_below exit when woken */
    int active;          /* workers 1..active take part in the current job */
    int running;         /* participating workers not yet finished */
    bool busy;           /* a job is in progress (a nested call runs serially) */
    uint64_t generation; /* counts jobs, so a parked worker can tell a new one */
    qattn_task_fn fn;
    void *arg;
    int64_t n_tasks;
    atomic_llong next;
    struct worker {
        qattn_pool *pool;
        int id;
        uint64_t seen; /* the last generation this worker saw (set before it starts) */
        pthread_t thread;
    } workers[QATTN_MAX_THREADS];
};

static void drain(qattn_pool *pool, qattn_task_fn fn, void *arg, int64_t n_tasks, int worker_id) {
    for (;;) {
        long long t = atomic_fetch_add(&pool->next, 1);
        if (t >= n_tasks) return;
        fn(arg, (int64_t)t, worker_id);
    }
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    qattn_pool *pool = w->pool;
    pthread_mutex_lock(&pool->mu);
    uint64_t seen = w->seen; /* not the current generation: a job posted while it started is for it */
    for (;;) {
        while (w->id < pool->keep_below && (pool->generation == seen || w->id > pool->active)) {
            seen = pool->generation; /* a job this worker is not part of counts as seen */
            pthread_cond_wait(&pool->wake, &pool->mu);
        }
        if (w->id >= pool->keep_below) break;
        seen = pool->generation;
        qattn_task_fn fn = pool->fn;
        void *job_arg = pool->arg;
        int64_t n_tasks = pool->n_tasks;
        pthread_mutex_unlock(&pool->mu);
        drain(pool, fn, job_arg, n_tasks, w->id);
        pthread_mutex_lock(&pool->mu);
        if (--pool->running == 0) pthread_cond_signal(&pool->done);
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

qattn_pool *qattn_pool_create(qattn_ctx *ctx) {
    qattn_pool *pool = qattn_alloc(ctx, sizeof *pool);
    if (!pool) return NULL;
    memset(pool, 0, sizeof *pool);
    pool->keep_below = QATTN_MAX_THREADS;
    atomic_init(&pool->next, 0);
    bool mu = pthread_mutex_init(&pool->mu, NULL) == 0, wake = mu && pthread_cond_init(&pool->wake, NULL) == 0;
    bool done = wake && pthread_cond_init(&pool->done, NULL) == 0;
    if (!done) {
        if (wake) pthread_cond_destroy(&pool->wake);
        if (mu) pthread_mutex_destroy(&pool->mu);
        qattn_free(ctx, pool);
        return NULL;
    }
    return pool;
}

void qattn_pool_resize(qattn_pool *pool, int n_threads) {
    if (!pool) return;
    int keep = n_threads < 1 ? 1 : n_threads > QATTN_MAX_THREADS ? QATTN_MAX_THREADS : n_threads; /* ids below keep stay */
    pthread_mutex_lock(&pool->mu);
    int started = pool->n_started;
    if (keep > started) {
        pthread_mutex_unlock(&pool->mu);
        return;
    }
    pool->keep_below = keep;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);
    for (int i = keep; i <= started; i++) pthread_join(pool->workers[i].thread, NULL);
    pthread_mutex_lock(&pool->mu);
    pool->n_started = keep - 1;
    pool->keep_below = QATTN_MAX_THREADS;
    pthread_mutex_unlock(&pool->mu);
}

void qattn_pool_destroy(qattn_ctx *ctx, qattn_pool *pool) {
    if (!pool) return;
    qattn_pool_resize(pool, 1);
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mu);
    qattn_free(ctx, pool);
}

/* Starts workers up to id want - 1 (caller holds the lock; workers block on it until released).
 * Returns how many run; a worker that cannot be started leaves its share to the others. */
static int grow(qattn_pool *pool, int want) {
    while (pool->n_started < want - 1) {
        struct worker *w = &pool->workers[pool->n_started + 1];
        w->pool = pool;
        w->id = pool->n_started + 1;
        w->seen = pool->generation;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) break;
        pool->n_started++;
    }
    return pool->n_started;
}

void qattn_parallel_for(qattn_pool *pool, int n_threads, int64_t n_tasks, qattn_task_fn fn, void *arg) {
    if (n_tasks <= 0) return;
    if (n_threads > n_tasks) n_threads = (int)n_tasks;
    if (n_threads > QATTN_MAX_THREADS) n_threads = QATTN_MAX_THREADS;
    if (!pool || n_threads <= 1) {
        for (int64_t t = 0; t < n_tasks; t++) fn(arg, t, 0);
        return;
    }
    pthread_mutex_lock(&pool->mu);
    if (pool->busy) { /* nested: this thread does it all */
        pthread_mutex_unlock(&pool->mu);
        for (int64_t t = 0; t < n_tasks; t++) fn(arg, t, 0);
        return;
    }
    int started = grow(pool, n_threads);
    pool->busy = true;
    pool->active = started < n_threads - 1 ? started : n_threads - 1;
    pool->running = pool->active;
    pool->fn = fn;
    pool->arg = arg;
    pool->n_tasks = n_tasks;
    atomic_store(&pool->next, 0);
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);

    drain(pool, fn, arg, n_tasks, 0);

    pthread_mutex_lock(&pool->mu);
    while (pool->running > 0) pthread_cond_wait(&pool->done, &pool->mu);
    pool->busy = false;
    pthread_mutex_unlock(&pool->mu);
}
