/* The physical limits the throughput benchmark compares against: how fast one pipe carries
 * bytes, and how fast memory is copied and scanned. Prints one tab-separated line per run:
 *   limit MEASURE RUN SECONDS PAYLOAD_BYTES - - -
 * Usage: pipelimit write|vmsplice|memcpy|zeroscan|memfd-fill CHUNK_BYTES TOTAL_BYTES RUNS [SOURCE_BYTES]
 *   write     writer write()s CHUNK bytes at a time, a forked reader read()s 1 MiB at a time
 *   vmsplice  writer vmsplice()s CHUNK bytes at a time (pipe enlarged to CHUNK), reader read()s
 *   memcpy    copies TOTAL bytes in CHUNK pieces between two buffers
 *   zeroscan  checks TOTAL bytes of zero memory for a non-zero word (what finding zero pages costs)
 *   memfd-fill  pwrites TOTAL bytes in CHUNK pieces into a new memfd: what a destination pays to
 *             give every received page a fresh page of its own, whatever copies it
 * The data comes from a non-zero buffer of SOURCE_BYTES (default 256 MiB, far larger than the
 * caches, as guest RAM is), reused round-robin; a buffer of CHUNK bytes measures cache-hot copies. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { MAX_SOURCE_BYTES = 256 << 20, READ_BYTES = 1 << 20 };
static size_t source_bytes = MAX_SOURCE_BYTES;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void fail(const char *what) {
    fprintf(stderr, "pipelimit: %s: %s\n", what, strerror(errno));
    exit(1);
}

static char *filled_buffer(size_t bytes, int value) {
    char *buffer = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buffer == MAP_FAILED) fail("mmap");
    for (size_t i = 0; i < bytes; i++) buffer[i] = value ? (char)(i * 131 + 7) | 1 : 0;
    return buffer;
}

/* The reader: read()s until end of file, exits 0 if it saw exactly `expected` bytes. */
static void read_all(int fd, uint64_t expected) {
    char *buffer = malloc(READ_BYTES);
    if (!buffer) fail("malloc");
    uint64_t seen = 0;
    for (;;) {
        ssize_t got = read(fd, buffer, READ_BYTES);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) fail("read");
        if (got == 0) break;
        seen += (uint64_t)got;
    }
    _exit(seen == expected ? 0 : 3);
}

static double pipe_run(int use_vmsplice, size_t chunk, uint64_t total, const char *source) {
    int fds[2];
    if (pipe(fds) < 0) fail("pipe");
    if (use_vmsplice && fcntl(fds[1], F_SETPIPE_SZ, (int)chunk) < 0) fail("F_SETPIPE_SZ");
    pid_t reader = fork();
    if (reader < 0) fail("fork");
    if (reader == 0) {
        close(fds[1]);
        read_all(fds[0], total);
    }
    close(fds[0]);
    double start = now();
    uint64_t sent = 0;
    size_t offset = 0;
    while (sent < total) {
        size_t want = chunk;
        if (want > total - sent) want = (size_t)(total - sent);
        if (offset + want > source_bytes) offset = 0;
        ssize_t put;
        if (use_vmsplice) {
            struct iovec piece = {.iov_base = (void *)(source + offset), .iov_len = want};
            put = vmsplice(fds[1], &piece, 1, 0);
        } else {
            put = write(fds[1], source + offset, want);
        }
        if (put < 0 && errno == EINTR) continue;
        if (put < 0) fail(use_vmsplice ? "vmsplice" : "write");
        sent += (uint64_t)put;
        offset += (size_t)put;
    }
    close(fds[1]);
    int status;
    if (waitpid(reader, &status, 0) < 0) fail("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "pipelimit: the reader did not see all %llu bytes\n", (unsigned long long)total);
        exit(1);
    }
    return now() - start;
}

static double memcpy_run(size_t chunk, uint64_t total, const char *source, char *target) {
    double start = now();
    size_t offset = 0;
    for (uint64_t done = 0; done < total; done += chunk) {
        if (offset + chunk > source_bytes) offset = 0;
        memcpy(target + offset, source + offset, chunk);
        offset += chunk;
    }
    __asm__ volatile("" : : "r"(target) : "memory");
    return now() - start;
}

static double zeroscan_run(uint64_t total, const uint64_t *zeros) {
    double start = now();
    uint64_t words = source_bytes / 8, found = 0;
    for (uint64_t done = 0; done < total; done += source_bytes) {
        uint64_t any = 0;
        for (uint64_t i = 0; i < words; i++) any |= zeros[i];
        found += any != 0;
        __asm__ volatile("" : : "r"(found));
    }
    if (found) exit(4);
    return now() - start;
}

static double memfd_fill_run(size_t chunk, uint64_t total, const char *source) {
    int fd = memfd_create("pipelimit", 0);
    if (fd < 0 || ftruncate(fd, (off_t)total) != 0) fail("memfd");
    double start = now();
    for (uint64_t done = 0; done < total; done += chunk) {
        if (pwrite(fd, source, chunk, (off_t)done) != (ssize_t)chunk) fail("pwrite");
    }
    double seconds = now() - start;
    close(fd);
    return seconds;
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: pipelimit write|vmsplice|memcpy|zeroscan|memfd-fill CHUNK_BYTES TOTAL_BYTES RUNS [SOURCE_BYTES]\n");
        return 2;
    }
    const char *mode = argv[1];
    size_t chunk = strtoull(argv[2], NULL, 0);
    uint64_t total = strtoull(argv[3], NULL, 0);
    int runs = atoi(argv[4]);
    if (argc == 6) source_bytes = strtoull(argv[5], NULL, 0);
    if (source_bytes == 0 || source_bytes > MAX_SOURCE_BYTES || chunk == 0 || chunk > source_bytes ||
        total == 0 || runs < 1) {
        fprintf(stderr, "pipelimit: need 0 < CHUNK <= SOURCE_BYTES <= %d, TOTAL and RUNS positive\n",
                MAX_SOURCE_BYTES);
        return 2;
    }
    int is_write = !strcmp(mode, "write"), is_vmsplice = !strcmp(mode, "vmsplice");
    int is_memcpy = !strcmp(mode, "memcpy"), is_zeroscan = !strcmp(mode, "zeroscan");
    int is_fill = !strcmp(mode, "memfd-fill");
    if (!(is_write || is_vmsplice || is_memcpy || is_zeroscan || is_fill)) {
        fprintf(stderr, "pipelimit: unknown mode %s\n", mode);
        return 2;
    }
    char *source = filled_buffer(source_bytes, !is_zeroscan);
    char *target = is_memcpy ? filled_buffer(source_bytes, 0) : NULL;
    char label[64];
    if (is_zeroscan || is_fill) snprintf(label, sizeof label, "%s", mode);
    else snprintf(label, sizeof label, "%s-%zuk%s", mode, chunk >> 10,
                  source_bytes < MAX_SOURCE_BYTES ? "-cachehot" : "");
    for (int run = 1; run <= runs; run++) {
        double seconds = is_memcpy ? memcpy_run(chunk, total, source, target)
                       : is_fill ? memfd_fill_run(chunk, total, source)
                       : is_zeroscan ? zeroscan_run(total, (const uint64_t *)source)
                       : pipe_run(is_vmsplice, chunk, total, source);
        printf("limit\t%s\t%d\t%.4f\t%llu\t-\t-\t-\n", label, run, seconds, (unsigned long long)total);
        fflush(stdout);
    }
    return 0;
}
