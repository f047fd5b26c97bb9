/* Minimal CUDA device memory helpers for the CLI (device.c explains how they link).
 * All return -1 / NULL when the build has no CUDA runtime or the call fails. */
#ifndef QATTN_CLI_DEVICE_H
#define QATTN_CLI_DEVICE_H

#include <stddef.h>

int cli_device_available(void); /* 1 if this build has CUDA and a device is visible */
void *cli_device_alloc(size_t bytes);
void cli_device_free(void *p);
int cli_device_upload(void *dst, const void *src, size_t bytes);
int cli_device_download(void *dst, const void *src, size_t bytes);
int cli_device_synchronize(void);

#endif /* QATTN_CLI_DEVICE_H */
