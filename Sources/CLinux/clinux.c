#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <linux/magic.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>
#include "clinux.h"

#ifndef MADV_POPULATE_WRITE  /* Linux 5.14; glibc before 2.35 does not name it */
#define MADV_POPULATE_WRITE 23
#endif

int clinux_memfd_create(const char *name, int huge) {
    return memfd_create(name, MFD_CLOEXEC | (huge ? MFD_HUGETLB | MFD_HUGE_2MB : 0));
}

int clinux_is_tmpfs(int fd) {
    struct statfs info;
    if (fstatfs(fd, &info) != 0) return -1;
    return info.f_type == TMPFS_MAGIC;
}

long clinux_hugetlbfs_page_size(int fd) {
    struct statfs info;
    if (fstatfs(fd, &info) != 0) return -1;
    return info.f_type == HUGETLBFS_MAGIC ? (long)info.f_bsize : 0;
}

ssize_t clinux_vmsplice(int fd, const struct iovec *vectors, unsigned long count, unsigned int flags) {
    return vmsplice(fd, vectors, count, flags);
}

int clinux_pipe_unread(int fd) {
    int count = 0;
    return ioctl(fd, FIONREAD, &count) == 0 ? count : -1;
}

int clinux_set_pipe_size(int fd, int size) { return fcntl(fd, F_SETPIPE_SZ, size); }
int clinux_pipe_size(int fd) { return fcntl(fd, F_GETPIPE_SZ); }

const int CLINUX_SEEK_DATA = SEEK_DATA;
const int CLINUX_SEEK_HOLE = SEEK_HOLE;
const int CLINUX_FALLOC_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
const int CLINUX_MADV_POPULATE_WRITE = MADV_POPULATE_WRITE;
const short CLINUX_POSIX_SPAWN_SETSID = POSIX_SPAWN_SETSID;

int clinux_fallocate(int fd, int mode, off_t offset, off_t length) { return fallocate(fd, mode, offset, length); }

int clinux_start_writeback(int fd) { return sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE); }
