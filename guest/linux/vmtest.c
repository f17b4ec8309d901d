/*
 * vmtest: /init (PID 1) of the vmsend Linux test guest.
 *
 * It checks that a machine survives migration: memory, disk and clocks.
 * Forever, in small steps so that a pause shows up as a gap between two steps:
 *   - rewrites a memory working set a slice at a time; every page carries a
 *     header (magic, page index, pass number) and pseudo-random words, and a
 *     table outside the working set keeps each page's pass number and checksum,
 *     so a page that is stale, lost or zeroed fails its check the next time
 *     round;
 *   - writes one 4 KiB block of the disk (O_DIRECT, so the I/O reaches the
 *     device) carrying a sequence number and a checksum, reads it back, and
 *     reads an older block; an in-memory table of what each block must hold
 *     makes a stale or lost block fail;
 *   - watches CLOCK_MONOTONIC (never backwards) and CLOCK_REALTIME (moves as
 *     CLOCK_MONOTONIC does) between steps and keeps the largest gap.
 * Once a second it prints one heartbeat line on /dev/console. The line formats
 * are documented in guest/linux/README.md; keep the two in step.
 *
 * Settings come from the kernel command line (read from /proc/cmdline):
 *   vmtest.mem=16M        working set (K, M or G suffix; at least 64K)
 *   vmtest.slice=256K     memory rewritten per step
 *   vmtest.pause_ms=10    sleep between steps (0: never sleep)
 *   vmtest.disk=/dev/vda  block device to use, or "none"
 *   vmtest.disk_blocks=256  4 KiB blocks used at the start of the device
 *   vmtest.disk_ms=100    at most one disk step (1 write, 2 reads) per this many ms
 *
 * Build it static and without AVX (guest kernels on some hosts save only the
 * FXSAVE state, so AVX registers are not preserved across context switches):
 *   musl-gcc -static -O2 -march=x86-64 -mno-avx -mno-avx2 -mno-avx512f -o init vmtest.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define VMTEST_VERSION 1
#define PAGE 4096u
#define BLOCK 4096u
#define MEM_MAGIC 0x45474150544d56ull   /* "VMTPAGE" */
#define DISK_MAGIC 0x4b4f4c42544d56ull  /* "VMTBLOK" */
#define MAX_FAIL_LINES_PER_BEAT 8
#define CLOCK_SKEW_LIMIT_NS 50000000ll  /* realtime may drift from monotonic by 50 ms per step */

/* ---- settings ---- */
static uint64_t mem_bytes = 16u << 20;
static uint64_t slice_bytes = 256u << 10;
static long pause_ms = 10;
static char disk_path[128] = "/dev/vda";
static uint64_t disk_blocks = 256;
static long disk_ms = 100;

/* ---- counters (all printed in the heartbeat) ---- */
static uint64_t beats, loops, mem_passes, mem_failures, pages_checked;
static uint64_t disk_writes, disk_reads, disk_failures;
static uint64_t clock_jumps;
static int64_t max_gap_ns, beat_gap_ns;
static unsigned fail_lines;

/* ---- output ---- */
static void say(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof line - 2)
		n = sizeof line - 2;
	line[n++] = '\n';
	for (int off = 0; off < n;) {
		ssize_t w = write(1, line + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		off += w;
	}
}

/* A FAIL line, at most MAX_FAIL_LINES_PER_BEAT per second so a broken guest stays readable. */
#define fail(...) do { if (fail_lines++ < MAX_FAIL_LINES_PER_BEAT) say(__VA_ARGS__); } while (0)

static int64_t now_ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* ---- pseudo-random words and checksums (no libc, no vectors needed) ---- */
static inline uint64_t mix64(uint64_t x)
{
	x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27; x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint64_t checksum(const uint64_t *w, size_t nwords)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < nwords; i++)
		h = (h ^ w[i]) * 0x100000001b3ull;
	return mix64(h);
}

static void fill(uint64_t *w, size_t nwords, uint64_t seed)
{
	uint64_t x = mix64(seed) | 1;
	for (size_t i = 0; i < nwords; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;  /* xorshift64 */
		w[i] = x;
	}
}

/* ---- settings from /proc/cmdline ---- */
static uint64_t parse_size(const char *s)
{
	char *end;
	uint64_t v = strtoull(s, &end, 0);
	switch (*end) {
	case 'k': case 'K': v <<= 10; break;
	case 'm': case 'M': v <<= 20; break;
	case 'g': case 'G': v <<= 30; break;
	}
	return v;
}

static void read_settings(void)
{
	char buf[4096];
	int fd = open("/proc/cmdline", O_RDONLY);
	if (fd < 0)
		return;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = 0;
	for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n")) {
		if (!strncmp(tok, "vmtest.mem=", 11))
			mem_bytes = parse_size(tok + 11);
		else if (!strncmp(tok, "vmtest.slice=", 13))
			slice_bytes = parse_size(tok + 13);
		else if (!strncmp(tok, "vmtest.pause_ms=", 16))
			pause_ms = strtol(tok + 16, NULL, 0);
		else if (!strncmp(tok, "vmtest.disk_blocks=", 19))
			disk_blocks = strtoull(tok + 19, NULL, 0);
		else if (!strncmp(tok, "vmtest.disk_ms=", 15))
			disk_ms = strtol(tok + 15, NULL, 0);
		else if (!strncmp(tok, "vmtest.disk=", 12))
			snprintf(disk_path, sizeof disk_path, "%s", tok + 12);
	}
	if (mem_bytes < 16 * PAGE)
		mem_bytes = 16 * PAGE;
	mem_bytes -= mem_bytes % PAGE;
	if (slice_bytes < PAGE)
		slice_bytes = PAGE;
	if (slice_bytes > mem_bytes)
		slice_bytes = mem_bytes;
	if (pause_ms < 0)
		pause_ms = 0;
	if (disk_ms < 0)
		disk_ms = 0;
}

/* ---- memory working set ---- */
struct page_head { uint64_t magic, index, pass, pad; };

struct page_rec { uint64_t pass, sum; };

static uint8_t *mem;            /* the working set */
static struct page_rec *table;  /* what each page must hold, kept apart from it */
static uint64_t npages, next_page, mem_pass = 1;

static void write_page(uint64_t i, uint64_t pass)
{
	uint64_t *w = (uint64_t *)(mem + i * PAGE);
	struct page_head *h = (struct page_head *)w;
	fill(w + 4, PAGE / 8 - 4, pass * 0x9e3779b97f4a7c15ull ^ i);
	h->magic = MEM_MAGIC; h->index = i; h->pass = pass; h->pad = 0;
	table[i].pass = pass;
	table[i].sum = checksum(w, PAGE / 8);
}

static void check_page(uint64_t i)
{
	const uint64_t *w = (const uint64_t *)(mem + i * PAGE);
	const struct page_head *h = (const struct page_head *)w;
	uint64_t sum = checksum(w, PAGE / 8);
	pages_checked++;
	if (h->magic != MEM_MAGIC || h->index != i || h->pass != table[i].pass || sum != table[i].sum) {
		mem_failures++;
		fail("vmtest: FAIL mem page=%" PRIu64 " want_pass=%" PRIu64 " got_pass=%" PRIu64
		     " magic_ok=%d index_ok=%d sum_ok=%d", i, table[i].pass, h->pass,
		     h->magic == MEM_MAGIC, h->index == i, sum == table[i].sum);
	}
}

static int mem_setup(void)
{
	npages = mem_bytes / PAGE;
	/* MAP_POPULATE: fault everything in now, in one call, before the first beat */
	mem = mmap(NULL, mem_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	table = mmap(NULL, npages * sizeof *table, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (mem == MAP_FAILED || table == MAP_FAILED)
		return -1;
	for (uint64_t i = 0; i < npages; i++)
		write_page(i, mem_pass);
	mem_pass++;
	return 0;
}

/* One step: check and rewrite the next slice of pages. */
static void mem_step(void)
{
	for (uint64_t n = slice_bytes / PAGE; n; n--) {
		check_page(next_page);
		write_page(next_page, mem_pass);
		if (++next_page == npages) {
			next_page = 0;
			mem_pass++;
			mem_passes++;
		}
	}
}

/* ---- disk ---- */
struct block_head { uint64_t magic, index, seq, sum; };  /* sum covers the rest of the block */

static int disk_fd = -1;
static uint64_t *disk_seq;   /* what each block must hold: 0 = not written by this boot */
static uint8_t *blk;         /* one aligned block for O_DIRECT */
static uint64_t disk_next, disk_seq_next = 1;
static const char *disk_state = "none";

static int disk_setup(void)
{
	if (!strcmp(disk_path, "none") || disk_blocks == 0) {
		disk_state = "off";
		return 0;
	}
	disk_fd = open(disk_path, O_RDWR | O_DIRECT | O_SYNC | O_CLOEXEC);
	if (disk_fd < 0) {
		disk_state = "none";
		return 0;
	}
	off_t end = lseek(disk_fd, 0, SEEK_END);   /* a block device's size */
	uint64_t size = end > 0 ? (uint64_t)end : 0;
	if (size < BLOCK) {
		close(disk_fd);
		disk_fd = -1;
		disk_state = "none";
		return 0;
	}
	if (disk_blocks > size / BLOCK)
		disk_blocks = size / BLOCK;
	disk_seq = calloc(disk_blocks, sizeof *disk_seq);
	if (posix_memalign((void **)&blk, BLOCK, BLOCK) != 0 || !disk_seq)
		return -1;
	disk_state = "ok";
	return 0;
}

static int disk_read_check(uint64_t b)
{
	ssize_t n = pread(disk_fd, blk, BLOCK, (off_t)(b * BLOCK));
	disk_reads++;
	if (n != BLOCK) {
		disk_failures++;
		fail("vmtest: FAIL disk read block=%" PRIu64 " ret=%zd errno=%d", b, n, n < 0 ? errno : 0);
		return -1;
	}
	const struct block_head *h = (const struct block_head *)blk;
	uint64_t sum = checksum((const uint64_t *)blk + 4, BLOCK / 8 - 4);
	if (h->magic != DISK_MAGIC || h->index != b || h->seq != disk_seq[b] || h->sum != sum) {
		disk_failures++;
		fail("vmtest: FAIL disk block=%" PRIu64 " want_seq=%" PRIu64 " got_seq=%" PRIu64
		     " magic_ok=%d index_ok=%d sum_ok=%d", b, disk_seq[b], h->seq,
		     h->magic == DISK_MAGIC, h->index == b, h->sum == sum);
		return -1;
	}
	return 0;
}

/* One step: write the next block, read it back, and read back the block half the ring away. */
static void disk_step(void)
{
	if (disk_fd < 0)
		return;
	uint64_t b = disk_next;
	struct block_head *h = (struct block_head *)blk;
	uint64_t seq = disk_seq_next++;
	fill((uint64_t *)blk + 4, BLOCK / 8 - 4, seq * 0xc2b2ae3d27d4eb4full ^ b);
	h->magic = DISK_MAGIC; h->index = b; h->seq = seq;
	h->sum = checksum((const uint64_t *)blk + 4, BLOCK / 8 - 4);
	ssize_t n = pwrite(disk_fd, blk, BLOCK, (off_t)(b * BLOCK));
	disk_writes++;
	if (n != BLOCK) {
		disk_failures++;
		fail("vmtest: FAIL disk write block=%" PRIu64 " ret=%zd errno=%d", b, n, n < 0 ? errno : 0);
		disk_seq[b] = 0;   /* unknown now */
	} else {
		disk_seq[b] = seq;
		disk_read_check(b);
	}
	uint64_t old = (b + disk_blocks / 2) % disk_blocks;
	if (old != b && disk_seq[old])
		disk_read_check(old);
	disk_next = (b + 1) % disk_blocks;
}

/* ---- clocks ---- */
static int64_t last_mono, last_real;

static void clock_step(int64_t mono, int64_t real)
{
	int64_t gap = mono - last_mono;
	int64_t skew = (real - last_real) - gap;
	if (gap < 0) {
		clock_jumps++;
		fail("vmtest: FAIL clock monotonic went back by %" PRId64 " us", -gap / 1000);
	}
	if (skew > CLOCK_SKEW_LIMIT_NS || skew < -CLOCK_SKEW_LIMIT_NS) {
		clock_jumps++;
		fail("vmtest: FAIL clock realtime moved %" PRId64 " ms apart from monotonic", skew / 1000000);
	}
	if (gap > max_gap_ns)
		max_gap_ns = gap;
	if (gap > beat_gap_ns)
		beat_gap_ns = gap;
	last_mono = mono;
	last_real = real;
}

static void idle_forever(void)
{
	for (;;)
		pause();
}

int main(void)
{
	int64_t t0 = now_ns(CLOCK_MONOTONIC);

	/* It writes to the start of /dev/vda: never run it anywhere but as a test guest's init. */
	if (getpid() != 1) {
		static const char msg[] = "vmtest: refusing to run: not PID 1 (this is a test guest's /init; it overwrites /dev/vda)\n";
		if (write(2, msg, sizeof msg - 1) < 0)
			return 1;
		return 1;
	}

	/* PID 1 in an initramfs: /dev and /proc are ours to mount. */
	mkdir("/dev", 0755);
	mkdir("/proc", 0555);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	mount("proc", "/proc", "proc", 0, NULL);
	if (fcntl(1, F_GETFD) < 0) {   /* no /dev/console in the initramfs: open it from devtmpfs */
		int fd = open("/dev/console", O_RDWR);
		if (fd >= 0) {
			dup2(fd, 0); dup2(fd, 1); dup2(fd, 2);
			if (fd > 2)
				close(fd);
		}
	}
	read_settings();

	if (mem_setup() != 0) {
		say("vmtest: FATAL cannot map %" PRIu64 " bytes of working set (errno=%d)", mem_bytes, errno);
		idle_forever();
	}
	if (disk_setup() != 0) {
		say("vmtest: FATAL out of memory for the disk check");
		idle_forever();
	}
	int64_t t1 = now_ns(CLOCK_MONOTONIC);
	say("vmtest: ready version=%d uptime_ms=%" PRId64 " setup_ms=%" PRId64 " cpus=%ld mem_kib=%" PRIu64
	    " slice_kib=%" PRIu64 " pause_ms=%ld disk=%s disk_path=%s disk_blocks=%" PRIu64 " disk_ms=%ld",
	    VMTEST_VERSION, t1 / 1000000, (t1 - t0) / 1000000, sysconf(_SC_NPROCESSORS_ONLN),
	    mem_bytes >> 10, slice_bytes >> 10, pause_ms, disk_state, disk_path,
	    disk_fd >= 0 ? disk_blocks : 0, disk_ms);

	last_mono = now_ns(CLOCK_MONOTONIC);
	last_real = now_ns(CLOCK_REALTIME);
	int64_t next_beat = last_mono + 1000000000ll;
	int64_t next_disk = last_mono;
	/* The clocks are read after every step, so a gap is the longest time one step (or a pause of
	 * the whole machine in between) took. */
	for (;;) {
		int64_t mono;
		mem_step();
		loops++;
		clock_step(mono = now_ns(CLOCK_MONOTONIC), now_ns(CLOCK_REALTIME));
		if (disk_fd >= 0 && mono >= next_disk) {
			disk_step();
			next_disk = mono + disk_ms * 1000000ll;
			clock_step(mono = now_ns(CLOCK_MONOTONIC), now_ns(CLOCK_REALTIME));
		}
		if (pause_ms) {
			struct timespec ts = { pause_ms / 1000, (pause_ms % 1000) * 1000000 };
			while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
				;
			clock_step(mono = now_ns(CLOCK_MONOTONIC), now_ns(CLOCK_REALTIME));
		}
		if (mono >= next_beat) {
			beats++;
			say("vmtest: beat=%" PRIu64 " uptime_ms=%" PRId64 " realtime_ms=%" PRId64 " loops=%" PRIu64
			    " mem_passes=%" PRIu64 " mem_pages=%" PRIu64 " mem_failures=%" PRIu64
			    " disk=%s disk_writes=%" PRIu64 " disk_reads=%" PRIu64 " disk_failures=%" PRIu64
			    " clock_jumps=%" PRIu64 " gap_ms=%" PRId64 " max_gap_ms=%" PRId64,
			    beats, mono / 1000000, last_real / 1000000, loops, mem_passes, pages_checked, mem_failures,
			    disk_state, disk_writes, disk_reads, disk_failures, clock_jumps,
			    beat_gap_ns / 1000000, max_gap_ns / 1000000);
			beat_gap_ns = 0;
			fail_lines = 0;
			next_beat += 1000000000ll;
			if (next_beat <= mono)   /* after a long stall, beat again in a second, not in a burst */
				next_beat = mono + 1000000000ll;
		}
	}
}
