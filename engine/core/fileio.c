#include "core/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Reads the open fd (taken over: closed here) of the file named path, as fileio_read. */
static ap_status read_fd(int fd, const char *path, size_t max, char **out, size_t *len, ap_err *err)
{
    ap_status rc = AP_OK;
    char *data = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = ap_err_set(err, AP_INVALID, "%s: not a regular file", path);
        goto out;
    }
    data = malloc(max + 1);
    if (data == NULL) {
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
        goto out;
    }
    size_t n = 0;
    while (n < max + 1) {
        ssize_t got = read(fd, data + n, max + 1 - n);
        if (got == 0)
            break;
        if (got < 0 && errno != EINTR) {
            rc = ap_err_set(err, AP_IO, "%s: read error: %s", path, strerror(errno));
            goto out;
        }
        n += got > 0 ? (size_t)got : 0;
    }
    if (n > max) {
        rc = ap_err_set(err, AP_LIMIT, "%s: larger than %zu bytes", path, max);
        goto out;
    }
    data[n] = '\0';
    *out = data;
    if (len != NULL)
        *len = n;
    data = NULL;
out:
    free(data);
    close(fd);
    return rc;
}

/* Non-blocking opens, so that opening a FIFO returns at once and fstat can refuse it. */
ap_status fileio_read(const char *path, size_t max, char **out, size_t *len, ap_err *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return ap_err_set(err, errno == ENOENT ? AP_NOTFOUND : AP_IO, "cannot read %s: %s", path,
                          strerror(errno));
    return read_fd(fd, path, max, out, len, err);
}

ap_status fileio_read_in(const char *dir, const char *name, size_t max, char **out, size_t *len,
                         ap_err *err)
{
    *out = NULL;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return ap_err_set(err, errno == ENOENT ? AP_NOTFOUND : AP_IO, "cannot read %s: %s", dir,
                          strerror(errno));
    int fd = -1, e = ENOENT;
    if (strchr(name, '/') == NULL) {
        fd = openat(dfd, name, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
        e = errno;
    }
    close(dfd);
    if (fd < 0) /* ELOOP: a symbolic link */
        return ap_err_set(err, e == ENOENT || e == ELOOP ? AP_NOTFOUND : AP_IO,
                          "cannot read %s in %s: %s", name, dir, strerror(e));
    return read_fd(fd, name, max, out, len, err);
}
