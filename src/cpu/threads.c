/* A fork-join parallel loop on pthreads: tasks 0..n-1 are handed out through an atomic
 * counter, so which thread runs a task never changes what the task computes. Threads are
 * started per call; if one cannot be started, the calling thread does its share. */
#include "cpu/threads.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct pool_run {
    qattn_task_fn fn;
    void *arg;
    int64_t n_tasks;
    atomic_llong next;
} pool_run;

typedef struct worker {
    pool_run *run;
    int id;
    pthread_t thread;
} worker;

static void drain(pool_run *run, int worker_id) {
    for (;;) {
        long long t = atomic_fetch_add(&run->next, 1);
        if (t >= run->n_tasks) return;
        run->fn(run->arg, (int64_t)t, worker_id);
    }
}

static void *worker_main(void *arg) {
    worker *w = arg;
    drain(w->run, w->id);
    return NULL;
}

void qattn_parallel_for(int n_threads, int64_t n_tasks, qattn_task_fn fn, void *arg) {
    pool_run run = {.fn = fn, .arg = arg, .n_tasks = n_tasks};
    atomic_init(&run.next, 0);
    if (n_threads > n_tasks) n_threads = (int)n_tasks;
    if (n_threads > QATTN_MAX_THREADS) n_threads = QATTN_MAX_THREADS;
    worker workers[QATTN_MAX_THREADS];
    int started = 0;
    for (int i = 1; i < n_threads; i++) {
        workers[i] = (worker){.run = &run, .id = i};
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0) break;
        started = i;
    }
    drain(&run, 0);
    for (int i = 1; i <= started; i++) pthread_join(workers[i].thread, NULL);
}
