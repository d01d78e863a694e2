/* Tiny MPI program baked into the DEBIAN_MPICH / DEBIAN_OPENMPI test images as /opt/app/hello.
 *
 * Every rank takes part in an MPI_Allreduce (sum of rank+1); rank 0 prints the MPI library's
 * version string (newlines folded to " | " so it stays on one line, which tells which libmpi the
 * dynamic linker actually picked: the image's or the host's) and the reduction result.
 * Output, for N ranks:
 *   mpi-hello: library: <MPI_Get_library_version, one line>
 *   mpi-hello: rank R of N on HOST          (one per rank, any order)
 *   mpi-hello: allreduce sum=S expected=E ok
 * Exit status 0 when the sum is right, 1 otherwise. */
#include <mpi.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    char host[MPI_MAX_PROCESSOR_NAME];
    int len = 0, hostlen = 0, rank = 0, size = 0, mine, sum = 0, expected, i;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &hostlen);
    MPI_Get_library_version(version, &len);

    /* Fold the (MPICH: multi-line) version string onto one line. */
    while (len > 0 && (version[len - 1] == '\n' || version[len - 1] == ' ' || version[len - 1] == '\t'))
        version[--len] = '\0';
    char folded[3 * MPI_MAX_LIBRARY_VERSION_STRING];
    size_t o = 0;
    for (i = 0; i < len && o + 4 < sizeof folded; i++) {
        if (version[i] == '\n') {
            memcpy(folded + o, " | ", 3);
            o += 3;
        } else {
            folded[o++] = version[i] == '\t' ? ' ' : version[i];
        }
    }
    folded[o] = '\0';

    if (rank == 0) {
        printf("mpi-hello: library: %s\n", folded);
        fflush(stdout);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    printf("mpi-hello: rank %d of %d on %s\n", rank, size, host);
    fflush(stdout);

    mine = rank + 1;
    MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    expected = size * (size + 1) / 2;
    if (rank == 0) {
        printf("mpi-hello: allreduce sum=%d expected=%d %s\n", sum, expected, sum == expected ? "ok" : "WRONG");
        fflush(stdout);
    }

    MPI_Finalize();
    return sum == expected ? 0 : 1;
}
