/* The GPU decode's per-context state and driver entry points (src/cuda/kv_decode_driver.cu), the
 * state held inside the CUDA backend's state (backend.cu: cuda_state.kvd). Filled once by
 * qattn_cuda_prepare_kvd when the context is created, so the hot path makes no device query; the
 * split scratch is cached here (see kv_decode_driver.cu). backend.cu hands it to the decode
 * (qattn_cuda_kv_decode), which never reaches into the backend. The kernels (kv_decode.cu) sit
 * below the driver, behind kv_decode_kernels.cuh. */
#ifndef QATTN_CUDA_KV_DECODE_CUH
#define QATTN_CUDA_KV_DECODE_CUH

#include <cuda_runtime.h>
#include <stddef.h>

#include "qattn.h"

#include "cuda_common.cuh"
#include "kv_decode_kernels.cuh" /* QATTN_KVD_SLOTS */

struct qattn_kvd_state {
    int sm_count;
    int resident[QATTN_KVD_SLOTS]; /* blocks of each split-kernel instance resident per SM (>= 1), by qattn_kvd_slot_* */
    /* Cached scratch: split partials (not initialised) and the arrival counters, zero between
     * calls (zeroed when allocated; the last block of each unit puts its counter back to 0). */
    void *part;
    size_t part_bytes;
    void *cnt;
    size_t cnt_bytes;
    qattn_cuda_serial serial; /* the scratch serialises the context's decodes */
};

/* Once per context, with its device current: raise the split kernels' shared-memory limits,
 * record their residency, create the event. */
cudaError_t qattn_cuda_prepare_kvd(qattn_kvd_state *s, int sm_count);
/* With the context's device current: free the scratch and the event (synchronises the device). */
void qattn_cuda_release_kvd(qattn_kvd_state *s);
/* qattn_kv_decode_cuda (include/qattn.h) with ctx's decode state ks, which backend.cu passes
 * (NULL when ctx has no CUDA state: refused after the arguments are checked). */
qattn_status qattn_cuda_kv_decode(qattn_ctx *ctx, qattn_kvd_state *ks, const qattn_kv_cache *c, const qattn_kv_device_cache *dev,
                                  const qattn_decode_params *dp);

#endif
