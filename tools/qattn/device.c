/* Device memory for `qattn bench --backend cuda`. Built against the CUDA runtime when the
 * library has its CUDA backend (QATTN_HAVE_CUDA, set by CMake for this target too); otherwise
 * every function reports that no device is available. */
#include "device.h"

#include <stddef.h>

#if defined(QATTN_HAVE_CUDA)
#include <cuda_runtime_api.h>

int cli_device_available(void) {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

void *cli_device_alloc(size_t bytes) {
    void *p = NULL;
    return cudaMalloc(&p, bytes ? bytes : 1) == cudaSuccess ? p : NULL;
}

void cli_device_free(void *p) {
    if (p) cudaFree(p);
}

int cli_device_upload(void *dst, const void *src, size_t bytes) {
    return cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice) == cudaSuccess ? 0 : -1;
}

int cli_device_download(void *dst, const void *src, size_t bytes) {
    return cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost) == cudaSuccess ? 0 : -1;
}

int cli_device_synchronize(void) { return cudaDeviceSynchronize() == cudaSuccess ? 0 : -1; }

#else

int cli_device_available(void) { return 0; }
void *cli_device_alloc(size_t bytes) { (void)bytes; return NULL; }
void cli_device_free(void *p) { (void)p; }
int cli_device_upload(void *dst, const void *src, size_t bytes) { (void)dst; (void)src; (void)bytes; return -1; }
int cli_device_download(void *dst, const void *src, size_t bytes) { (void)dst; (void)src; (void)bytes; return -1; }
int cli_device_synchronize(void) { return -1; }

#endif
