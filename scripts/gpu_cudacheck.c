/* /opt/app/cudacheck in the image scripts/gpu_launch_check.sh builds: a real CUDA runtime
 * (libcudart.so.12 from PyPI's nvidia-cuda-runtime-cu12) asked what a CUDA app asks first. It
 * prints the runtime's and the driver's CUDA versions, cudaGetDeviceCount, each device's name, and
 * checks a host -> device -> host cudaMemcpy round trip of 1 MiB on device 0.
 * Exit 0: all of that worked; 2: a CUDA call failed (its error string is printed); 3: the bytes
 * that came back differ.
 * The wheel's cuda_runtime_api.h needs crt/host_defines.h, which only the compiler's wheel has:
 * the few calls used are declared here, as CUDA 12's runtime API defines them (a CUDA 12 header
 * maps cudaGetDeviceProperties to the _v2 entry point, whose struct starts with char name[256]). */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int cudaError_t;
enum { cudaSuccess = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2 };
extern cudaError_t cudaRuntimeGetVersion(int *version);
extern cudaError_t cudaDriverGetVersion(int *version);
extern cudaError_t cudaGetDeviceCount(int *count);
extern cudaError_t cudaGetDeviceProperties_v2(void *prop, int device);
extern cudaError_t cudaSetDevice(int device);
extern cudaError_t cudaMalloc(void **ptr, size_t size);
extern cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, int kind);
extern cudaError_t cudaFree(void *ptr);
extern const char *cudaGetErrorName(cudaError_t err);
extern const char *cudaGetErrorString(cudaError_t err);

#define ROUND_TRIP (1u << 20)

static int failed(const char *what, cudaError_t err)
{
    printf("cudacheck: %s: error %d %s: %s\n", what, (int)err, cudaGetErrorName(err), cudaGetErrorString(err));
    return 2;
}

static int round_trip(void)
{
    unsigned char *host = malloc(ROUND_TRIP), *back = malloc(ROUND_TRIP);
    void *dev = NULL;
    cudaError_t err;
    unsigned i;

    if (!host || !back) {
        printf("cudacheck: out of host memory\n");
        return 2;
    }
    for (i = 0; i < ROUND_TRIP; i++)
        host[i] = (unsigned char)(i * 2654435761u >> 24);
    memset(back, 0, ROUND_TRIP);
    if ((err = cudaMalloc(&dev, ROUND_TRIP)) != cudaSuccess)
        return failed("cudaMalloc", err);
    if ((err = cudaMemcpy(dev, host, ROUND_TRIP, cudaMemcpyHostToDevice)) != cudaSuccess)
        return failed("cudaMemcpy host->device", err);
    if ((err = cudaMemcpy(back, dev, ROUND_TRIP, cudaMemcpyDeviceToHost)) != cudaSuccess)
        return failed("cudaMemcpy device->host", err);
    cudaFree(dev);
    if (memcmp(host, back, ROUND_TRIP) != 0) {
        printf("cudacheck: round trip of %u bytes: MISMATCH\n", ROUND_TRIP);
        return 3;
    }
    printf("cudacheck: round trip host->device->host of %u bytes: OK\n", ROUND_TRIP);
    free(host);
    free(back);
    return 0;
}

int main(void)
{
    int runtime = 0, driver = 0, count = 0, i;
    cudaError_t err;
    /* Far bigger than cudaDeviceProp of any CUDA release (about 1 KiB): the name, its first
     * field, is all that is read. */
    static char props[1 << 16];

    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    printf("cudacheck: CUDA runtime %d, driver supports CUDA %d\n", runtime, driver);
    if ((err = cudaGetDeviceCount(&count)) != cudaSuccess)
        return failed("cudaGetDeviceCount", err);
    printf("cudacheck: cudaGetDeviceCount = %d\n", count);
    for (i = 0; i < count; i++) {
        if ((err = cudaGetDeviceProperties_v2(props, i)) != cudaSuccess)
            return failed("cudaGetDeviceProperties", err);
        printf("cudacheck: device %d: %.256s\n", i, props);
    }
    if (count == 0) {
        printf("cudacheck: no CUDA device\n");
        return 2;
    }
    if ((err = cudaSetDevice(0)) != cudaSuccess)
        return failed("cudaSetDevice", err);
    return round_trip();
}
