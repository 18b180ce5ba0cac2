/* loop.h - the event loop of one runner thread: epoll fd watches, timers and cross-thread
 * posts. Panels, LLM providers (curl multi via CURLMOPT_SOCKETFUNCTION/TIMERFUNCTION) and the
 * simulated provider all run on it; nothing on the loop thread may block.
 *
 * Everything except llm_loop_post and llm_loop_stop must be called on the loop's thread. */
#ifndef AP_LLM_LOOP_H
#define AP_LLM_LOOP_H

#include "core/status.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct llm_loop llm_loop;
typedef struct llm_timer llm_timer;

#define LLM_LOOP_READ 1u
#define LLM_LOOP_WRITE 2u

typedef void (*llm_loop_fd_cb)(llm_loop *loop, int fd, unsigned events, void *ud);
typedef void (*llm_loop_timer_cb)(llm_loop *loop, void *ud);
typedef void (*llm_loop_post_cb)(llm_loop *loop, void *ud);
typedef bool (*llm_loop_idle_cb)(llm_loop *loop, void *ud);

/* Creates a loop; caller frees with llm_loop_free. */
ap_status llm_loop_new(llm_loop **out, ap_err *err);

/* Frees the loop, its timers and pending posts (their callbacks are not run); NULL is fine. */
void llm_loop_free(llm_loop *loop);

/* Watches fd for events (LLM_LOOP_READ|LLM_LOOP_WRITE); called again it replaces the events
 * and callback. events 0 removes the watch. The fd stays owned by the caller. */
ap_status llm_loop_watch(llm_loop *loop, int fd, unsigned events, llm_loop_fd_cb cb, void *ud);

/* Stops watching fd (before the caller closes it). */
void llm_loop_unwatch(llm_loop *loop, int fd);

/* Runs cb once after delay_ms (0: on the next iteration). The handle is valid until the
 * callback starts or llm_loop_timer_cancel; NULL on allocation failure. */
llm_timer *llm_loop_timer_add(llm_loop *loop, int64_t delay_ms, llm_loop_timer_cb cb, void *ud);

/* Cancels a pending timer (its callback will not run); t may be NULL. */
void llm_loop_timer_cancel(llm_loop *loop, llm_timer *t);

/* From any thread: runs cb(ud) on the loop thread soon. Thread-safe. */
ap_status llm_loop_post(llm_loop *loop, llm_loop_post_cb cb, void *ud);

/* Adds a source of idle work: cb(loop, ud) does one small piece of it (tens of microseconds)
 * and returns whether more is left. The loop calls it only once nothing else has been ready
 * for LLM_LOOP_QUIET_US, between its other callbacks, a slice of ~100 us at a time, so it
 * never delays them by more than that and a piece; sources take turns. Returns the source's id for
 * llm_loop_idle_more, or -1 when the loop has LLM_LOOP_IDLE_MAX already. Loop thread only (or
 * before the loop runs). */
int llm_loop_idle_add(llm_loop *loop, llm_loop_idle_cb cb, void *ud);

/* Says source id has idle work again (after its cb returned false). Loop thread only. */
void llm_loop_idle_more(llm_loop *loop, int id);

/* Removes source id (its cb is not called again; its slot is free for another). Loop thread
 * only; id may be -1. */
void llm_loop_idle_remove(llm_loop *loop, int id);

#define LLM_LOOP_IDLE_MAX 4
#define LLM_LOOP_QUIET_US 2000

/* Runs the loop until llm_loop_stop. */
void llm_loop_run(llm_loop *loop);

/* Runs one iteration, waiting at most max_wait_ms (-1: until something happens). */
void llm_loop_run_once(llm_loop *loop, int max_wait_ms);

/* From any thread: makes llm_loop_run return after the current iteration. */
void llm_loop_stop(llm_loop *loop);

/* Milliseconds on the loop's clock (monotonic). */
int64_t llm_loop_now_ms(void);

#endif
