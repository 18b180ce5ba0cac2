/* http1.h - mockllm's HTTP/1.1 transport (libmicrohttpd). */
#ifndef MOCKLLM_HTTP1_H
#define MOCKLLM_HTTP1_H

#include <stdbool.h>
#include <sys/socket.h>

/* Starts the daemon with mock_o.threads threads and the timer thread that resumes parked
 * streams. It has no listening socket of its own: connections come from http1_add. */
bool http1_start(void);

/* Hands an accepted connection to the daemon (takes ownership of fd, closing it on failure). */
bool http1_add(int fd, const struct sockaddr *sa, unsigned salen);

/* Releases parked streams, stops the daemon and the timer thread. */
void http1_stop(void);

#endif
