/* clock.h - wall and monotonic time in the units the engine uses. */
#ifndef AP_CLOCK_H
#define AP_CLOCK_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Milliseconds since the Unix epoch. */
int64_t clock_wall_ms(void);

/* Monotonic milliseconds and microseconds, for deadlines and durations. */
int64_t clock_mono_ms(void);
int64_t clock_mono_us(void);

/* Monotonic microseconds as of the last timer tick: up to a tick (a few ms) behind
 * clock_mono_us, and several times cheaper to read, for checks on hot paths. */
int64_t clock_coarse_us(void);

/* The CLOCK_REALTIME instant ms milliseconds from now, for pthread_cond_timedwait. */
struct timespec clock_deadline_ms(int64_t ms);

/* The clock_mono_us() value us as a CLOCK_MONOTONIC instant, for pthread_cond_timedwait on a
 * condition variable set to that clock. */
struct timespec clock_mono_at(int64_t us);

/* Formats epoch milliseconds as "2026-11-28T12:00:00.123Z" into buf (>= 25 bytes). */
void clock_format_rfc3339(int64_t ms, char *buf, size_t cap);

#endif
