/* recycle.h - blocks that go back to the thread that made them.
 *
 * A runner thread makes the items its panels hand to the event writer, and the writer (or an
 * SSE reader holding an event) frees them. With glibc's malloc that one-way traffic defeats
 * the per-thread caches: the maker's caches never see a freed block, so its mallocs search its
 * arena's bins under the arena lock, and each free on the other thread takes that same lock
 * (in the 2,000-panel burst of bench/runtime the writer and the runners waited on each other
 * there hundreds of times a run).
 *
 * A thread that makes such blocks binds a pool (recycle_thread_begin); its recycle_alloc
 * calls then take blocks of a few size classes from the pool, and recycle_free, on any thread,
 * puts them back on the pool's return list, which the maker takes over whole when its own
 * list runs dry. A pool makes a bounded number of bytes of blocks (past it, and for larger
 * sizes or unbound threads, blocks are plain malloc'd ones); it outlives its thread until the
 * last of its blocks comes back. ASan builds poison a pooled block while it waits, so a use
 * after recycle_free is reported as one after free() would be. */
#ifndef AP_RECYCLE_H
#define AP_RECYCLE_H

#include "core/status.h"

#include <stddef.h>

/* The largest size served from a pool; larger blocks are malloc'd. */
#define RECYCLE_MAX 4096

/* Binds a new pool to the calling thread, which makes up to keep bytes of blocks (0: 8 MiB).
 * AP_NOMEM; AP_ERROR when the thread already has one. */
ap_status recycle_thread_begin(size_t keep);

/* Unbinds the calling thread's pool (none: nothing) and frees it once all its blocks are
 * back; blocks still out stay valid. */
void recycle_thread_end(void);

/* n bytes (n > 0), 16-aligned, or NULL when out of memory; caller frees with recycle_free. */
void *recycle_alloc(size_t n);

/* Frees a block of recycle_alloc, on any thread; accepts NULL. */
void recycle_free(void *p);

#endif
