/* The fresh-memory limit: how long it takes to populate, in a NEW file (a memfd, as vmrecv's guest
 * memory), exactly the pages a receiver of the benchmark image must populate (its non-zero 4 KiB
 * pages, at their offsets), and how the ways a faster receiver could do it compare, on this host.
 *
 *   freshmem ranges IMAGE OUT     finds IMAGE's non-zero pages, writes them to OUT as pieces of at
 *                                 most 1 MiB (the receiver's batch), prints a summary on stderr
 *   freshmem VARIANT RANGES RUN [DIR]   one timed run; prints one tab-separated line
 *       limit fresh-VARIANT RUN SECONDS POPULATED_BYTES - - - CPU_SECONDS
 *
 * The data comes from one 1 MiB non-zero buffer (cache hot, as a receiver's batch buffer is after
 * the read), so what is measured is the pages, not the source. Timed: from creating the file to the
 * last byte stored, every thread joined; not timed: closing it (freeing the pages).
 * Variants (all single-threaded unless said):
 *   pwrite            pwrite() of each piece into a new memfd: vmrecv's way on one thread
 *   pwrite-2threads   two threads pwrite() alternate pieces (taken from a shared counter)
 *   memcpy            memcpy() into a shared mapping of the memfd: one page fault per 4 KiB page
 *   memcpy-2threads   two threads memcpy() alternate pieces into the mapping (as QEMU's multifd channels
 *                     read into guest memory): faults without the file's lock, each page zeroed first
 *   store-2threads    two threads each MADV_POPULATE_WRITE a piece, memcpy() into it and MADV_DONTNEED it
 *                     again (vmrecv's landers: a full file reported as an error, not SIGBUS; RSS kept flat)
 *   hybrid-2threads   one thread pwrite()s, the other stores as store-2threads but unmaps every 4 MiB: vmrecv's
 *                     landers (until 2026-12-01 19:25 UTC this variant unmapped each piece: the same times)
 *   hybrid-2threads-kept   the same, never unmapping (what the unmapping costs)
 *   populate-ahead    a second thread MADV_POPULATE_WRITEs (Linux 5.14+) the pieces ahead of the
 *                     writer, which memcpy()s into the mapping (pages then present: no faults)
 *   populate-ahead-pwrite  the same helper; the writer pwrite()s into the already allocated pages
 *   fallocate-ahead   a second thread fallocate()s the pieces ahead of the writer, which pwrite()s
 *   alloc-only        fallocate() of every piece, no data at all: the allocation alone
 *   hugetlb           memfd MFD_HUGETLB (2 MiB pages), memcpy() through the mapping (hugetlbfs has
 *                     no write()); the pool is grown by the 2 MiB blocks needed before the run (row
 *                     fresh-hugetlb-pool: the time that takes; fresh-hugetlb-with-pool: both) and
 *                     put back after it. Needs root (/proc/sys/vm/nr_hugepages).
 *   hugetlb-kept      memfd MFD_HUGETLB, memcpy() through the mapping, from a pool that is already there and
 *                     has been used (bench/throughput.sh --hugepages grows it and touches it once before the
 *                     run; this variant never changes it): what vmrecv --hugepages lands in
 *   hugetlb-kept-ahead the same, a second thread MADV_POPULATE_WRITEs the pieces ahead of the writer (as
 *                     vmrecv --hugepages does with the pages a round lists)
 *   thp-tmpfs         pwrite() into a new file on a private tmpfs mounted huge=always (mounted over
 *                     DIR in a mount namespace of this process only: nothing to clean up)
 *   thp-memfd         memfd, shmem_enabled set to "advise" for the run (then put back), mapping
 *                     MADV_HUGEPAGE, memcpy(). Needs root (/sys/kernel/mm/transparent_hugepage).
 * After the run the file's allocated bytes are checked (exactly the pages, for 4 KiB variants) and
 * sample pieces are read back. A variant the host cannot do prints why on stderr and no line. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif

enum { PAGE = 4096, PIECE = 1 << 20, HUGE = 2 << 20 };
static const char NR_HUGEPAGES[] = "/proc/sys/vm/nr_hugepages";
static const char POOL_FREE[] = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";
static const char POOL_RESERVED[] = "/sys/kernel/mm/hugepages/hugepages-2048kB/resv_hugepages";
static const char SHMEM_ENABLED[] = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

struct piece { uint64_t offset, length; };
static struct piece *pieces;
static uint64_t piece_count, file_size, populated;
static char *source;  /* PIECE bytes, non-zero */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* User and system seconds of all of freshmem's threads so far: what a fill asks of the cores. */
static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6;
}

static void fail(const char *what) {
    fprintf(stderr, "freshmem: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* ---- host settings changed for one run, put back on any exit (signals too) ------------------- */

static char saved_hugepages[32], saved_shmem[32];

static void write_setting(const char *path, const char *value) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return;
    ssize_t ignored = write(fd, value, strlen(value));
    (void)ignored;
    close(fd);
}

static void restore_settings(void) {  /* async-signal-safe: open/write/close only */
    if (saved_hugepages[0]) write_setting(NR_HUGEPAGES, saved_hugepages);
    if (saved_shmem[0]) write_setting(SHMEM_ENABLED, saved_shmem);
    saved_hugepages[0] = saved_shmem[0] = 0;
}

static void on_signal(int number) {
    restore_settings();
    signal(number, SIG_DFL);
    raise(number);
}

static int read_setting(const char *path, char *out, size_t size) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    if (!fgets(out, (int)size, f)) { fclose(f); return -1; }
    fclose(f);
    out[strcspn(out, "\n")] = 0;
    return 0;
}

/* shmem_enabled reads like "always within_size advise [never] deny force": the choice in brackets. */
static int current_choice(const char *line, char *out, size_t size) {
    const char *open = strchr(line, '['), *close = open ? strchr(open, ']') : NULL;
    if (!close || (size_t)(close - open) > size) return -1;
    memcpy(out, open + 1, (size_t)(close - open - 1));
    out[close - open - 1] = 0;
    return 0;
}

static long meminfo_kib(const char *key) {  /* e.g. "ShmemHugePages:" */
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long value = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) { value = atol(line + strlen(key)); break; }
    fclose(f);
    return value;
}

/* ---- the pieces ------------------------------------------------------------------------------- */

static int page_is_zero(const uint64_t *words) {
    uint64_t any = 0;
    for (int i = 0; i < PAGE / 8; i++) any |= words[i];
    return any == 0;
}

static int make_ranges(const char *image, const char *out) {
    int fd = open(image, O_RDONLY);
    struct stat info;
    if (fd < 0 || fstat(fd, &info) != 0) fail(image);
    uint64_t size = (uint64_t)info.st_size;
    if (size == 0 || size % HUGE) { fprintf(stderr, "freshmem: %s: size not a multiple of 2 MiB\n", image); return 1; }
    const char *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) fail("mmap image");
    FILE *f = fopen(out, "wb");
    if (!f) fail(out);
    uint64_t header[2] = {size, 0}, run_start = 0, pages = 0, runs = 0;
    fwrite(header, sizeof header, 1, f);
    int in_run = 0;
    for (uint64_t at = 0; at <= size; at += PAGE) {
        int nonzero = at < size && !page_is_zero((const uint64_t *)(map + at));
        if (nonzero) pages++;
        if (nonzero && !in_run) { run_start = at; in_run = 1; runs++; }
        if (!nonzero && in_run) {
            for (uint64_t p = run_start; p < at; p += PIECE) {
                struct piece piece = {p, at - p < PIECE ? at - p : PIECE};
                fwrite(&piece, sizeof piece, 1, f);
                header[1]++;
            }
            in_run = 0;
        }
        /* Drop what was read: scanning must not keep 2 GiB of the image mapped. */
        if (at % (64 << 20) == 0 && at) madvise((void *)(map + at - (64 << 20)), 64 << 20, MADV_DONTNEED);
    }
    fseek(f, 0, SEEK_SET);
    fwrite(header, sizeof header, 1, f);
    if (fclose(f) != 0) fail(out);
    munmap((void *)map, size);
    close(fd);
    fprintf(stderr, "freshmem: %s: %llu non-zero pages of %llu (%llu bytes) in %llu runs, %llu pieces of at most 1 MiB\n",
            image, (unsigned long long)pages, (unsigned long long)(size / PAGE),
            (unsigned long long)(pages * PAGE), (unsigned long long)runs, (unsigned long long)header[1]);
    return 0;
}

static void load_ranges(const char *path) {
    FILE *f = fopen(path, "rb");
    uint64_t header[2];
    if (!f || fread(header, sizeof header, 1, f) != 1) fail(path);
    file_size = header[0];
    piece_count = header[1];
    pieces = malloc(piece_count * sizeof *pieces);
    if (!pieces || fread(pieces, sizeof *pieces, piece_count, f) != piece_count) fail(path);
    fclose(f);
    for (uint64_t i = 0; i < piece_count; i++) populated += pieces[i].length;
}

static uint64_t huge_blocks_needed(void) {
    uint64_t count = 0, last = UINT64_MAX;
    for (uint64_t i = 0; i < piece_count; i++)
        for (uint64_t b = pieces[i].offset / HUGE; b <= (pieces[i].offset + pieces[i].length - 1) / HUGE; b++)
            if (b != last) { count++; last = b; }
    return count;
}

/* ---- the stores ------------------------------------------------------------------------------- */

static void pwrite_piece(int fd, uint64_t i) {
    uint64_t done = 0;
    while (done < pieces[i].length) {
        ssize_t n = pwrite(fd, source + done, pieces[i].length - done, (off_t)(pieces[i].offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail("pwrite");
        done += (uint64_t)n;
    }
}

static void *map_file(int fd) {
    void *map = mmap(NULL, file_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (map == MAP_FAILED) fail("mmap");
    return map;
}

/* A helper thread preparing the pieces ahead of the writer: it skips to just past the piece the
 * writer is at whenever the writer has caught up, so the two never wait for each other. */
struct ahead {
    int fd, use_fallocate;
    char *map;
    _Atomic uint64_t writer_at;  /* the piece the writer is storing */
    uint64_t prepared;           /* pieces the helper prepared itself (for the log) */
};

static void *prepare_ahead(void *argument) {
    struct ahead *a = argument;
    uint64_t next = 0;
    while (next < piece_count) {
        uint64_t writer = atomic_load_explicit(&a->writer_at, memory_order_relaxed);
        if (next <= writer) { next = writer + 1; continue; }
        const struct piece *p = &pieces[next];
        int result = a->use_fallocate ? fallocate(a->fd, 0, (off_t)p->offset, (off_t)p->length)
                                      : madvise(a->map + p->offset, p->length, MADV_POPULATE_WRITE);
        if (result != 0) fail(a->use_fallocate ? "fallocate" : "madvise(MADV_POPULATE_WRITE)");
        a->prepared++;
        next++;
    }
    return NULL;
}

enum store_way { BY_PWRITE, BY_MEMCPY, BY_POPULATED_MEMCPY, BY_POPULATED_MEMCPY_BATCHED, BY_POPULATED_MEMCPY_KEPT };
#define DROP_BATCH (4u << 20) /* vmrecv's WriteBehind.mappedBytesBeforeDrop */
struct shared_counter { int fd; char *map; _Atomic uint64_t next; };
struct store_thread { struct shared_counter *counter; enum store_way way; uint64_t low, high, stored; };

static void *store_from_counter(void *argument) {
    struct store_thread *t = argument;
    struct shared_counter *c = t->counter;
    for (;;) {
        uint64_t i = atomic_fetch_add(&c->next, 1);
        if (i >= piece_count) return NULL;
        char *target = c->map + pieces[i].offset;
        switch (t->way) {
        case BY_PWRITE: pwrite_piece(c->fd, i); break;
        case BY_MEMCPY: memcpy(target, source, pieces[i].length); break;
        case BY_POPULATED_MEMCPY:
        case BY_POPULATED_MEMCPY_BATCHED:
        case BY_POPULATED_MEMCPY_KEPT:
            if (madvise(target, pieces[i].length, MADV_POPULATE_WRITE) != 0) fail("madvise(MADV_POPULATE_WRITE)");
            memcpy(target, source, pieces[i].length);
            if (t->way == BY_POPULATED_MEMCPY) {
                if (madvise(target, pieces[i].length, MADV_DONTNEED) != 0) fail("madvise(MADV_DONTNEED)");
            } else if (t->way == BY_POPULATED_MEMCPY_BATCHED) {
                if (!t->stored) t->low = pieces[i].offset;
                t->high = pieces[i].offset + pieces[i].length;
                t->stored += pieces[i].length;
                if (t->stored >= DROP_BATCH) {
                    if (madvise(c->map + t->low, t->high - t->low, MADV_DONTNEED) != 0) fail("madvise(MADV_DONTNEED)");
                    t->stored = 0;
                }
            }
            break;
        }
    }
}

static int new_memfd(unsigned flags) {
    int fd = memfd_create("freshmem", MFD_CLOEXEC | flags);
    if (fd < 0) fail("memfd_create");
    if (ftruncate(fd, (off_t)file_size) != 0) fail("ftruncate");
    return fd;
}

/* Reads back sample pieces and checks the file holds exactly the pages (4 KiB variants). */
static void check(int fd, const char *variant, int exact) {
    struct stat info;
    if (fstat(fd, &info) != 0) fail("fstat");
    uint64_t allocated = (uint64_t)info.st_blocks * 512;
    if (exact && allocated != populated) {
        fprintf(stderr, "freshmem: %s: the file holds %llu bytes, not the %llu populated\n", variant,
                (unsigned long long)allocated, (unsigned long long)populated);
        exit(1);
    }
    char *back = malloc(PIECE);
    if (!back) fail("malloc");
    for (uint64_t i = 0; i < piece_count; i += piece_count / 7 + 1) {
        if (pread(fd, back, pieces[i].length, (off_t)pieces[i].offset) != (ssize_t)pieces[i].length ||
            memcmp(back, source, pieces[i].length) != 0) {
            fprintf(stderr, "freshmem: %s: piece %llu reads back wrong\n", variant, (unsigned long long)i);
            exit(1);
        }
    }
    free(back);
}

/* CPU: user and system seconds of what SECONDS timed; below 0, not measured (prints "-"). */
static void print_line(const char *variant, int run, double seconds, double cpu) {
    char cpu_text[32] = "-";
    if (cpu >= 0) snprintf(cpu_text, sizeof cpu_text, "%.4f", cpu);
    printf("limit\tfresh-%s\t%d\t%.4f\t%llu\t-\t-\t-\t%s\n", variant, run, seconds, (unsigned long long)populated,
           cpu_text);
    fflush(stdout);
}

static int run_variant(const char *variant, int run, const char *dir) {
    int fd = -1, exact = 1;
    char *map = NULL;
    double start, seconds;
    long huge_before = -1;
    double cpu_start = cpu_seconds();  /* the CPU printed is the variant's, its setup included */

    if (!strcmp(variant, "hugetlb")) {
        char text[32];
        if (read_setting(NR_HUGEPAGES, saved_hugepages, sizeof saved_hugepages) != 0) fail(NR_HUGEPAGES);
        long before = atol(saved_hugepages), want = before + (long)huge_blocks_needed();
        snprintf(text, sizeof text, "%ld", want);
        double pool_start = now();
        write_setting(NR_HUGEPAGES, text);
        double pool_seconds = now() - pool_start;
        if (read_setting(NR_HUGEPAGES, text, sizeof text) != 0 || atol(text) < want) {
            fprintf(stderr, "freshmem: hugetlb skipped: nr_hugepages %s, needed %ld (root? free memory?)\n", text, want);
            restore_settings();
            return 0;
        }
        double pool_cpu = cpu_seconds() - cpu_start;
        start = now();
        fd = new_memfd(MFD_HUGETLB | MFD_HUGE_2MB);
        map = map_file(fd);
        for (uint64_t i = 0; i < piece_count; i++) memcpy(map + pieces[i].offset, source, pieces[i].length);
        seconds = now() - start;
        double cpu = cpu_seconds() - cpu_start;
        munmap(map, file_size);
        map = NULL;
        exact = 0;
        check(fd, variant, exact);
        close(fd);
        restore_settings();
        print_line("hugetlb", run, seconds, cpu - pool_cpu);
        print_line("hugetlb-pool", run, pool_seconds, pool_cpu);
        print_line("hugetlb-with-pool", run, pool_seconds + seconds, cpu);
        return 0;
    }
    if (!strcmp(variant, "thp-tmpfs")) {
        char options[64], path[4096];
        if (!dir) { fprintf(stderr, "freshmem: thp-tmpfs needs a DIR to mount over\n"); return 2; }
        if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
            fprintf(stderr, "freshmem: thp-tmpfs skipped: no private mount namespace (%s; root?)\n", strerror(errno));
            return 0;
        }
        snprintf(options, sizeof options, "huge=always,size=%llu,mode=0700", (unsigned long long)(file_size + HUGE));
        if (mount("freshmem", dir, "tmpfs", MS_NOSUID | MS_NODEV, options) != 0) {
            fprintf(stderr, "freshmem: thp-tmpfs skipped: mount tmpfs -o %s: %s\n", options, strerror(errno));
            return 0;
        }
        snprintf(path, sizeof path, "%s/guest-ram", dir);
        huge_before = meminfo_kib("ShmemHugePages:");
        start = now();
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || unlink(path) != 0 || ftruncate(fd, (off_t)file_size) != 0) fail(path);
        for (uint64_t i = 0; i < piece_count; i++) pwrite_piece(fd, i);
        seconds = now() - start;
        exact = 0;
    } else if (!strcmp(variant, "thp-memfd")) {
        char line[128];
        if (read_setting(SHMEM_ENABLED, line, sizeof line) != 0 || current_choice(line, saved_shmem, sizeof saved_shmem) != 0) {
            fprintf(stderr, "freshmem: thp-memfd skipped: no %s\n", SHMEM_ENABLED);
            return 0;
        }
        write_setting(SHMEM_ENABLED, "advise");
        if (read_setting(SHMEM_ENABLED, line, sizeof line) != 0 || !strstr(line, "[advise]")) {
            fprintf(stderr, "freshmem: thp-memfd skipped: cannot set shmem_enabled to advise (root?)\n");
            restore_settings();
            return 0;
        }
        huge_before = meminfo_kib("ShmemHugePages:");
        start = now();
        fd = new_memfd(0);
        map = map_file(fd);
        if (madvise(map, file_size, MADV_HUGEPAGE) != 0) fail("madvise(MADV_HUGEPAGE)");
        for (uint64_t i = 0; i < piece_count; i++) memcpy(map + pieces[i].offset, source, pieces[i].length);
        seconds = now() - start;
        exact = 0;
    } else if (!strcmp(variant, "pwrite")) {
        start = now();
        fd = new_memfd(0);
        for (uint64_t i = 0; i < piece_count; i++) pwrite_piece(fd, i);
        seconds = now() - start;
    } else if (!strcmp(variant, "pwrite-2threads") || !strcmp(variant, "memcpy-2threads") ||
               !strcmp(variant, "store-2threads") || !strcmp(variant, "hybrid-2threads") ||
               !strcmp(variant, "hybrid-2threads-kept")) {
        enum store_way first = BY_PWRITE, second = BY_PWRITE;
        if (!strcmp(variant, "memcpy-2threads")) first = second = BY_MEMCPY;
        if (!strcmp(variant, "store-2threads")) first = second = BY_POPULATED_MEMCPY;
        if (!strcmp(variant, "hybrid-2threads")) second = BY_POPULATED_MEMCPY_BATCHED;
        if (!strcmp(variant, "hybrid-2threads-kept")) second = BY_POPULATED_MEMCPY_KEPT;
        pthread_t other;
        start = now();
        fd = new_memfd(0);
        if (first != BY_PWRITE || second != BY_PWRITE) map = map_file(fd);
        struct shared_counter counter = {.fd = fd, .map = map};
        struct store_thread mine = {&counter, first, 0, 0, 0}, its = {&counter, second, 0, 0, 0};
        if (pthread_create(&other, NULL, store_from_counter, &its) != 0) fail("pthread_create");
        store_from_counter(&mine);
        pthread_join(other, NULL);
        seconds = now() - start;
    } else if (!strcmp(variant, "memcpy")) {
        start = now();
        fd = new_memfd(0);
        map = map_file(fd);
        for (uint64_t i = 0; i < piece_count; i++) memcpy(map + pieces[i].offset, source, pieces[i].length);
        seconds = now() - start;
    } else if (!strcmp(variant, "populate-ahead") || !strcmp(variant, "populate-ahead-pwrite") ||
               !strcmp(variant, "fallocate-ahead")) {
        int use_pwrite = strcmp(variant, "populate-ahead") != 0;
        pthread_t helper;
        start = now();
        fd = new_memfd(0);
        struct ahead a = {.fd = fd, .use_fallocate = !strcmp(variant, "fallocate-ahead")};
        if (!a.use_fallocate || !use_pwrite) a.map = map = map_file(fd);
        if (pthread_create(&helper, NULL, prepare_ahead, &a) != 0) fail("pthread_create");
        for (uint64_t i = 0; i < piece_count; i++) {
            atomic_store_explicit(&a.writer_at, i, memory_order_relaxed);
            if (use_pwrite) pwrite_piece(fd, i);
            else memcpy(map + pieces[i].offset, source, pieces[i].length);
        }
        pthread_join(helper, NULL);
        seconds = now() - start;
        if (run == 1)
            fprintf(stderr, "freshmem: %s: the helper prepared %llu of %llu pieces\n", variant,
                    (unsigned long long)a.prepared, (unsigned long long)piece_count);
    } else if (!strcmp(variant, "hugetlb-kept") || !strcmp(variant, "hugetlb-kept-ahead")) {
        char text[32];
        long free_pages = read_setting(POOL_FREE, text, sizeof text) == 0 ? atol(text) : 0;
        long reserved = read_setting(POOL_RESERVED, text, sizeof text) == 0 ? atol(text) : 0;
        if (free_pages - reserved < (long)(file_size / HUGE)) {
            fprintf(stderr, "freshmem: %s skipped: the 2 MiB pool has %ld pages available, %llu needed "
                            "(bench/throughput.sh --hugepages grows it)\n",
                    variant, free_pages - reserved, (unsigned long long)(file_size / HUGE));
            return 0;
        }
        int ahead = !strcmp(variant, "hugetlb-kept-ahead");
        pthread_t helper;
        start = now();
        fd = new_memfd(MFD_HUGETLB | MFD_HUGE_2MB);
        /* Reserved whole, as vmrecv --hugepages and QEMU's hugetlb memfd map it (no MAP_NORESERVE). */
        map = mmap(NULL, file_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) fail("mmap of the pool");
        struct ahead a = {.fd = fd, .map = map};
        if (ahead && pthread_create(&helper, NULL, prepare_ahead, &a) != 0) fail("pthread_create");
        for (uint64_t i = 0; i < piece_count; i++) {
            atomic_store_explicit(&a.writer_at, i, memory_order_relaxed);
            memcpy(map + pieces[i].offset, source, pieces[i].length);
        }
        if (ahead) pthread_join(helper, NULL);
        seconds = now() - start;
        exact = 0;
    } else if (!strcmp(variant, "alloc-only")) {
        start = now();
        fd = new_memfd(0);
        for (uint64_t i = 0; i < piece_count; i++)
            if (fallocate(fd, 0, (off_t)pieces[i].offset, (off_t)pieces[i].length) != 0) fail("fallocate");
        seconds = now() - start;
        print_line(variant, run, seconds, cpu_seconds() - cpu_start);  /* no data: only the allocation is checked */
        struct stat info;
        if (fstat(fd, &info) != 0 || (uint64_t)info.st_blocks * 512 != populated) {
            fprintf(stderr, "freshmem: alloc-only: the file does not hold exactly the pages\n");
            return 1;
        }
        close(fd);
        return 0;
    } else {
        fprintf(stderr, "freshmem: unknown variant %s\n", variant);
        return 2;
    }
    if (huge_before >= 0 && run == 1)
        fprintf(stderr, "freshmem: %s: %ld MiB of shmem in transparent huge pages\n", variant,
                (meminfo_kib("ShmemHugePages:") - huge_before) >> 10);
    double cpu = cpu_seconds() - cpu_start;  /* before the check and the freeing, which are not the fill's */
    if (map) munmap(map, file_size);
    check(fd, variant, exact);
    close(fd);
    restore_settings();
    print_line(variant, run, seconds, cpu);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "ranges")) return make_ranges(argv[2], argv[3]);
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: freshmem ranges IMAGE OUT | freshmem VARIANT RANGES RUN [DIR]\n"
                        "  VARIANT: pwrite pwrite-2threads memcpy memcpy-2threads store-2threads hybrid-2threads hybrid-2threads-kept\n"
                        "           populate-ahead populate-ahead-pwrite\n"
                        "           fallocate-ahead alloc-only hugetlb hugetlb-kept hugetlb-kept-ahead thp-tmpfs\n"
                        "           thp-memfd\n");
        return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    load_ranges(argv[2]);
    source = malloc(PIECE);
    if (!source) fail("malloc");
    for (int i = 0; i < PIECE; i++) source[i] = (char)((i * 131 + 7) | 1);
    int status = run_variant(argv[1], atoi(argv[3]), argc == 5 ? argv[4] : NULL);
    restore_settings();
    return status;
}
