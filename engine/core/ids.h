/* ids.h - identifiers and secrets: UUIDs, random bytes, hex, SHA-256, constant-time compare. */
#ifndef AP_IDS_H
#define AP_IDS_H

#include "core/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IDS_UUID_LEN 36 /* canonical text form, without the NUL */
#define IDS_SHA256_HEX_LEN 64

/* Fills buf with n bytes from the kernel's CSPRNG; AP_IO if it cannot. */
ap_status ids_random(void *buf, size_t n);

/* Writes a new random (v4) UUID in canonical lower-case form into out[37]. */
ap_status ids_uuid_v4(char out[IDS_UUID_LEN + 1]);

/* Writes a new time-ordered (v7) UUID for the Unix time unix_ms into out[37]: ids made in
 * order sort in order, so a table keyed by them grows at one end of its index instead of
 * touching a random page per insert. The creation time can be read from the id. */
ap_status ids_uuid_v7(int64_t unix_ms, char out[IDS_UUID_LEN + 1]);

/* Validates a UUID in any case (with hyphens, 36 chars) and writes its lower-case canonical
 * form into out[37]; false (out untouched) when in is not a UUID. */
bool ids_uuid_normalize(const char *in, char out[IDS_UUID_LEN + 1]);

/* Writes n bytes as lower-case hex into out (2n+1 bytes, NUL-terminated). */
void ids_hex(const void *data, size_t n, char *out);

/* SHA-256 of data as lower-case hex into out[65]. */
void ids_sha256_hex(const void *data, size_t n, char out[IDS_SHA256_HEX_LEN + 1]);

/* One piece of the text that ids_sha256_hex_parts hashes. */
typedef struct ids_part {
    const void *data;
    size_t n;
} ids_part;

/* ids_sha256_hex of the n parts concatenated, without building the text; false when the
 * digest could not be computed (out of memory). */
bool ids_sha256_hex_parts(const ids_part *parts, size_t n, char out[IDS_SHA256_HEX_LEN + 1]);

/* HMAC-SHA-256 of data under key as lower-case hex into out[65]. */
void ids_hmac_sha256_hex(const void *key, size_t key_len, const void *data, size_t n,
                         char out[IDS_SHA256_HEX_LEN + 1]);

/* Compares two byte strings in time that depends only on their lengths. */
bool ids_equal_ct(const void *a, size_t alen, const void *b, size_t blen);

#endif
