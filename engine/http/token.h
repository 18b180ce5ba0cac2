/* token.h - short-lived, single-panel stream tokens for browsers (EventSource cannot send an
 * Authorization header, so GET /v1/panels/{id}/events also takes ?token=).
 *
 * A token is "<expiry-ms>.<tenant>.<panel>.<key>.<hmac>": it names the one panel it opens and
 * the API key that asked for it (so that revoking the key ends the token too: auth.c checks the
 * key on every use), expires, and cannot be forged. The HMAC key is `http.stream_token_secret` when
 * configured, so every engine node behind a load balancer (and the next process after a restart)
 * accepts the tokens of the others; otherwise a secret drawn at start-up, and tokens do not outlive
 * the process that issued them. */
#ifndef AP_HTTP_TOKEN_H
#define AP_HTTP_TOKEN_H

#include "core/ids.h"
#include "core/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* 19 digits of expiry, three UUIDs, a SHA-256 in hex, four dots and a NUL (196) fit. */
#define TOKEN_MAX 224
#define TOKEN_SECRET_MIN 32 /* characters of a configured secret */
#define TOKEN_SECRET_MAX 512

/* Sets the signing key from a configured secret (borrowed; "" or NULL keeps the drawn one).
 * AP_INVALID for a secret shorter than TOKEN_SECRET_MIN or longer than TOKEN_SECRET_MAX, AP_IO
 * when no secret could be drawn. Call before any thread issues or verifies tokens. */
ap_status token_init(const char *secret, ap_err *err);

/* Writes a token for (tenant, panel), issued by the API key key_id, valid for ttl_ms into
 * out[TOKEN_MAX]; *expires_ms gets its expiry (epoch ms). AP_INVALID unless the three ids are
 * UUIDs as the store writes them (lower case). */
ap_status token_issue(const char *tenant_id, const char *panel_id, const char *key_id,
                      int64_t ttl_ms, char out[TOKEN_MAX], int64_t *expires_ms);

/* True when token is genuine, unexpired and for panel_id; tenant_out and key_out receive its
 * tenant and the id of the key that issued it. Whether that key is still active is the
 * caller's question. */
bool token_verify(const char *token, const char *panel_id, char tenant_out[IDS_UUID_LEN + 1],
                  char key_out[IDS_UUID_LEN + 1]);

#endif
