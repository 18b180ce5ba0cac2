#include "core/ids.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>

ap_status ids_random(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return AP_IO;
        }
        p += got;
        n -= (size_t)got;
    }
    return AP_OK;
}

/* Random bits for ids come from a per-thread block of the kernel's generator: the store makes
 * ~16 ids per panel (usage records), and a getrandom call for each was ~0.8 % of a loaded
 * engine's CPU. Secrets (ids_random) still read the kernel directly. A forked child starts
 * with an empty block, so it never hands out its parent's ids. */
#define ID_BITS_BLOCK 512

static _Thread_local unsigned char id_bits[ID_BITS_BLOCK];
static _Thread_local size_t id_bits_left;
static pthread_once_t id_bits_once = PTHREAD_ONCE_INIT;

static void id_bits_forget(void)
{
    id_bits_left = 0;
}

static void id_bits_init(void)
{
    pthread_atfork(NULL, NULL, id_bits_forget);
}

static ap_status id_random(unsigned char *out, size_t n)
{
    if (id_bits_left < n) {
        pthread_once(&id_bits_once, id_bits_init);
        ap_status rc = ids_random(id_bits, sizeof id_bits);
        if (rc != AP_OK)
            return rc;
        id_bits_left = sizeof id_bits;
    }
    id_bits_left -= n;
    memcpy(out, id_bits + id_bits_left, n);
    return AP_OK;
}

static void format_uuid(const unsigned char b[16], char out[IDS_UUID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

ap_status ids_uuid_v4(char out[IDS_UUID_LEN + 1])
{
    unsigned char b[16];
    ap_status rc = id_random(b, sizeof b);
    if (rc != AP_OK)
        return rc;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    format_uuid(b, out);
    return AP_OK;
}

ap_status ids_uuid_v7(int64_t unix_ms, char out[IDS_UUID_LEN + 1])
{
    unsigned char b[16];
    ap_status rc = id_random(b + 6, sizeof b - 6);
    if (rc != AP_OK)
        return rc;
    uint64_t ms = unix_ms > 0 ? (uint64_t)unix_ms : 0;
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(ms >> (8 * (5 - i)));
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x70);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    format_uuid(b, out);
    return AP_OK;
}

/* Plain comparisons rather than isxdigit and tolower: the store normalises several ids per
 * row it writes, and the locale lookups were most of the cost. A NUL fails the check of its
 * position, so nothing past the end of in is read. */
bool ids_uuid_normalize(const char *in, char out[IDS_UUID_LEN + 1])
{
    if (in == NULL)
        return false;
    char tmp[IDS_UUID_LEN + 1];
    for (int i = 0; i < IDS_UUID_LEN; i++) {
        unsigned char c = (unsigned char)in[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return false;
        } else if (c >= 'A' && c <= 'F') {
            c = (unsigned char)(c - 'A' + 'a');
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return false;
        }
        tmp[i] = (char)c;
    }
    if (in[IDS_UUID_LEN] != '\0')
        return false;
    tmp[IDS_UUID_LEN] = '\0';
    memcpy(out, tmp, sizeof tmp);
    return true;
}

void ids_hex(const void *data, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[p[i] >> 4];
        out[2 * i + 1] = hex[p[i] & 15];
    }
    out[2 * n] = '\0';
}

void ids_sha256_hex(const void *data, size_t n, char out[IDS_SHA256_HEX_LEN + 1])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(data, n, md);
    ids_hex(md, sizeof md, out);
}

/* Fetched once: SHA256() and EVP_sha256() look the algorithm up in the provider tables on
 * every call, which cost more than hashing a short text. */
static pthread_mutex_t sha256_mu = PTHREAD_MUTEX_INITIALIZER;
static EVP_MD *sha256_md;

/* The fetched SHA-256, fetched again after a failure (out of memory) rather than never. */
static EVP_MD *sha256(void)
{
    pthread_mutex_lock(&sha256_mu);
    if (sha256_md == NULL)
        sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    EVP_MD *md = sha256_md;
    pthread_mutex_unlock(&sha256_mu);
    return md;
}

bool ids_sha256_hex_parts(const ids_part *parts, size_t n, char out[IDS_SHA256_HEX_LEN + 1])
{
    EVP_MD *alg = sha256();
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    EVP_MD_CTX *ctx = alg != NULL ? EVP_MD_CTX_new() : NULL;
    bool ok = ctx != NULL && EVP_DigestInit_ex2(ctx, alg, NULL) == 1;
    for (size_t i = 0; ok && i < n; i++)
        ok = EVP_DigestUpdate(ctx, parts[i].data, parts[i].n) == 1;
    ok = ok && EVP_DigestFinal_ex(ctx, md, &md_len) == 1 && md_len == SHA256_DIGEST_LENGTH;
    EVP_MD_CTX_free(ctx);
    if (ok)
        ids_hex(md, md_len, out);
    return ok;
}

void ids_hmac_sha256_hex(const void *key, size_t key_len, const void *data, size_t n,
                         char out[IDS_SHA256_HEX_LEN + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    HMAC(EVP_sha256(), key, (int)key_len, data, n, md, &md_len);
    ids_hex(md, md_len, out);
}

bool ids_equal_ct(const void *a, size_t alen, const void *b, size_t blen)
{
    if (alen != blen)
        return false;
    const volatile unsigned char *x = a;
    const volatile unsigned char *y = b;
    unsigned char diff = 0;
    for (size_t i = 0; i < alen; i++)
        diff |= (unsigned char)(x[i] ^ y[i]);
    return diff == 0;
}
