/* Device memory for `qattn bench --backend cuda`, without compiling against the CUDA headers.
 * The CLI target is not told whether the library was built with CUDA, so it refers to the
 * few CUDA runtime functions it needs weakly: in a CUDA build the static library links the
 * CUDA runtime and they resolve; otherwise they are NULL and cli_device_available() says so. */
#include "device.h"

#include <stddef.h>

/* The CUDA runtime API, as declared in cuda_runtime_api.h (cudaError_t is an int enum;
 * cudaMemcpyKind: 1 host->device, 2 device->host). */
extern int cudaMalloc(void **ptr, size_t bytes) __attribute__((weak));
extern int cudaFree(void *ptr) __attribute__((weak));
extern int cudaMemcpy(void *dst, const void *src, size_t bytes, int kind) __attribute__((weak));
extern int cudaDeviceSynchronize(void) __attribute__((weak));

enum { CUDA_MEMCPY_HOST_TO_DEVICE = 1, CUDA_MEMCPY_DEVICE_TO_HOST = 2 };

int cli_device_available(void) { return cudaMalloc && cudaFree && cudaMemcpy && cudaDeviceSynchronize; }

void *cli_device_alloc(size_t bytes) {
    void *p = NULL;
    if (!cli_device_available() || cudaMalloc(&p, bytes ? bytes : 1) != 0) return NULL;
    return p;
}

void cli_device_free(void *p) {
    if (p && cli_device_available()) cudaFree(p);
}

int cli_device_upload(void *dst, const void *src, size_t bytes) {
    return cli_device_available() && cudaMemcpy(dst, src, bytes, CUDA_MEMCPY_HOST_TO_DEVICE) == 0 ? 0 : -1;
}

int cli_device_download(void *dst, const void *src, size_t bytes) {
    return cli_device_available() && cudaMemcpy(dst, src, bytes, CUDA_MEMCPY_DEVICE_TO_HOST) == 0 ? 0 : -1;
}

int cli_device_synchronize(void) { return cli_device_available() && cudaDeviceSynchronize() == 0 ? 0 : -1; }
