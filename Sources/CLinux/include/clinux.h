#ifndef CLINUX_H
#define CLINUX_H
/// Linux calls and constants that Glibc's Swift module hides (they need _GNU_SOURCE or live in linux/ headers).
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/// memfd_create(name, MFD_CLOEXEC), with MFD_HUGETLB | MFD_HUGE_2MB when `huge` is set: the file then lives on
/// hugetlbfs and takes its pages from the host's pool of 2 MiB huge pages.
int clinux_memfd_create(const char *name, int huge);
/// The huge page size of the hugetlbfs mount `fd` is on (fstatfs), 0 if it is not on hugetlbfs, -1 on error.
long clinux_hugetlbfs_page_size(int fd);

/// 1 if `fd` is a file on tmpfs (shared memory, as a memfd), 0 if not, -1 on error.
int clinux_is_tmpfs(int fd);
/// vmsplice(2): lends the pages of `vectors` to a pipe.
ssize_t clinux_vmsplice(int fd, const struct iovec *vectors, unsigned long count, unsigned int flags);
/// Bytes written into a pipe that its reader has not taken yet (FIONREAD), or -1.
int clinux_pipe_unread(int fd);
/// Grows a pipe (F_SETPIPE_SZ); returns the new size or -1.
int clinux_set_pipe_size(int fd, int size);
/// The pipe's capacity (F_GETPIPE_SZ), or -1.
int clinux_pipe_size(int fd);

extern const int CLINUX_SEEK_DATA;
extern const int CLINUX_SEEK_HOLE;
extern const int CLINUX_FALLOC_PUNCH_HOLE;
extern const int CLINUX_MADV_POPULATE_WRITE;
extern const short CLINUX_POSIX_SPAWN_SETSID;

/// fallocate(2).
int clinux_fallocate(int fd, int mode, off_t offset, off_t length);

/// sync_file_range(2) of the whole file with SYNC_FILE_RANGE_WRITE: starts writing its dirty pages back, waits for none.
int clinux_start_writeback(int fd);
#endif
