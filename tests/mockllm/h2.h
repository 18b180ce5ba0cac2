/* h2.h - mockllm's listener and HTTP/2 transport.
 *
 * One thread accepts every connection and looks at its first bytes: an HTTP/2 client with
 * prior knowledge (the "PRI * HTTP/2.0" preface, as curl sends for h2c) is served here with
 * nghttp2; anything else goes to the HTTP/1.1 transport. Many streams share one connection,
 * so the frames of every stream due at one moment leave in one write per connection. */
#ifndef MOCKLLM_H2_H
#define MOCKLLM_H2_H

#include <stdbool.h>

/* Binds mock_o.host:mock_o.port and starts the thread; *port is the bound port. */
bool h2_start(unsigned *port);

/* Stops the thread and closes every connection it serves. */
void h2_stop(void);

#endif
