/* MPI ping-pong between ranks 0 and 1, baked into the MPI test images as /opt/app/pingpong (and
 * built natively against the host MPI by benchmarks/bench_pingpong.py).
 *
 *   pingpong [LAT_ITERS [BW_ITERS]]     (defaults 20000 and 500; a tenth of each as warm-up)
 *
 * Latency: 8-byte messages, half the mean round trip, in microseconds. Bandwidth: 1 MiB messages,
 * bytes of one message / half the mean round trip, in MB/s (10^6 bytes). Every message carries its
 * iteration number, which the peer echoes and rank 0 checks; the 1 MiB payload is checked whole
 * after the last round trip. Rank 0 prints, on success:
 *   pingpong: library: <first line of MPI_Get_library_version>
 *   pingpong: lat8_us=X bw1m_MBps=Y lat_iters=N bw_iters=M check=ok
 * Exit status 0 when every check passed, 1 on a wrong payload, 2 when not run on exactly 2 ranks. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BIG (1 << 20)

static int pingpong(int rank, unsigned char *buf, int bytes, int iters, int warmup, double *seconds)
{
    int bad = 0;
    double t0 = 0.0;
    for (int i = -warmup; i < iters; i++) {
        uint64_t tag = (uint64_t)(i + warmup) * 2654435761u + (uint64_t)bytes;
        if (i == 0)
            t0 = MPI_Wtime();
        if (rank == 0) {
            memcpy(buf, &tag, sizeof tag);
            MPI_Send(buf, bytes, MPI_BYTE, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, bytes, MPI_BYTE, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            uint64_t back;
            memcpy(&back, buf, sizeof back);
            bad |= back != tag;
        } else {
            MPI_Recv(buf, bytes, MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, bytes, MPI_BYTE, 0, 0, MPI_COMM_WORLD);
        }
    }
    *seconds = MPI_Wtime() - t0;
    return bad;
}

int main(int argc, char **argv)
{
    int rank = 0, size = 0, len = 0, bad = 0;
    int lat_iters = argc > 1 ? atoi(argv[1]) : 20000;
    int bw_iters = argc > 2 ? atoi(argv[2]) : 500;
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    double t_lat = 0.0, t_bw = 0.0;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 2 || lat_iters < 1 || bw_iters < 1) {
        if (rank == 0)
            fprintf(stderr, "pingpong: needs exactly 2 ranks (got %d) and positive iteration counts\n", size);
        MPI_Finalize();
        return 2;
    }
    MPI_Get_library_version(version, &len);
    version[strcspn(version, "\n")] = '\0';

    unsigned char *buf = malloc(BIG);
    unsigned char *pattern = malloc(BIG);
    if (buf == NULL || pattern == NULL)
        MPI_Abort(MPI_COMM_WORLD, 3);
    for (int i = 0; i < BIG; i++)
        pattern[i] = (unsigned char)(i * 7 + 3);

    MPI_Barrier(MPI_COMM_WORLD);
    bad |= pingpong(rank, buf, 8, lat_iters, lat_iters / 10, &t_lat);
    memcpy(buf, pattern, BIG);
    MPI_Barrier(MPI_COMM_WORLD);
    bad |= pingpong(rank, buf, BIG, bw_iters, bw_iters / 10, &t_bw);
    /* Everything but the 8-byte header must have survived every round trip unchanged. */
    if (rank == 0)
        bad |= memcmp(buf + 8, pattern + 8, BIG - 8) != 0;

    if (rank == 0) {
        double half_lat = t_lat / lat_iters / 2.0, half_bw = t_bw / bw_iters / 2.0;
        printf("pingpong: library: %s\n", version);
        printf("pingpong: lat8_us=%.3f bw1m_MBps=%.1f lat_iters=%d bw_iters=%d check=%s\n", half_lat * 1e6,
               BIG / half_bw / 1e6, lat_iters, bw_iters, bad ? "FAILED" : "ok");
        fflush(stdout);
    }
    free(buf);
    free(pattern);
    MPI_Finalize();
    return bad ? 1 : 0;
}
