/* sync_file_range(SYNC_FILE_RANGE_WRITE) where it exists (Linux), a no-op elsewhere.
   Returns 0 or an errno value. Used by _fastio.pyx (start_writeback). */
#ifndef UDRFLOW_FASTIO_IMPL_H
#define UDRFLOW_FASTIO_IMPL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>

#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)
#define FASTIO_HAVE_WRITEBACK 1
static int fastio_start_writeback(int fd, long long offset, long long nbytes) {
    int rc;
    do {
        rc = sync_file_range(fd, (off_t)offset, (off_t)nbytes, SYNC_FILE_RANGE_WRITE);
    } while (rc != 0 && errno == EINTR);
    return rc == 0 ? 0 : errno;
}
#else
#define FASTIO_HAVE_WRITEBACK 0
static int fastio_start_writeback(int fd, long long offset, long long nbytes) {
    (void)fd; (void)offset; (void)nbytes;
    return 0;
}
#endif

#endif
