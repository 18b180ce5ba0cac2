/* memtune.h - process-wide allocator settings for the long-running server. */
#ifndef AP_MEMTUNE_H
#define AP_MEMTUNE_H

/* Tunes glibc malloc for `serve` (a no-op with another C library): freed memory at the top of an
 * arena is kept up to MEMTUNE_TRIM_BYTES instead of being handed back to the kernel at once, and an
 * arena grows MEMTUNE_TOP_PAD_BYTES at a time. Panels allocate and free in waves (a Lua state,
 * its answers, the writer's items), and glibc's default of trimming above 128 KiB made every
 * wave pay for mprotect/madvise calls and fresh page faults: ~5 % of the CPU of a loaded
 * engine. The cost is that RSS stays at its recent peak (bounded by the panels' own limits)
 * rather than falling back between waves. Call once, before the threads start. */
void memtune_server(void);

#define MEMTUNE_TRIM_BYTES (256 * 1024 * 1024)
#define MEMTUNE_TOP_PAD_BYTES (16 * 1024 * 1024)

#endif
