#include "http/token.h"

#include "core/clock.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned char secret[TOKEN_SECRET_MAX];
static size_t secret_len = 32;
static pthread_once_t secret_once = PTHREAD_ONCE_INIT;
static bool secret_ok;

static void init_secret(void)
{
    secret_ok = ids_random(secret, secret_len) == AP_OK;
}

ap_status token_init(const char *configured, ap_err *err)
{
    pthread_once(&secret_once, init_secret);
    size_t n = configured != NULL ? strlen(configured) : 0;
    if (n == 0)
        return secret_ok ? AP_OK : ap_err_set(err, AP_IO, "cannot draw a stream-token secret");
    if (n < TOKEN_SECRET_MIN || n > TOKEN_SECRET_MAX)
        return ap_err_set(err, AP_INVALID,
                          "http.stream_token_secret must have %d to %d characters, not %zu",
                          TOKEN_SECRET_MIN, TOKEN_SECRET_MAX, n);
    memcpy(secret, configured, n);
    secret_len = n;
    secret_ok = true;
    return AP_OK;
}

static void sign(const char *payload, size_t n, char out[IDS_SHA256_HEX_LEN + 1])
{
    ids_hmac_sha256_hex(secret, secret_len, payload, n, out);
}

/* The fields of a token have fixed widths (token_verify reads them so): ids as the store
 * writes them only. */
static bool canonical_uuid(const char *id)
{
    char norm[IDS_UUID_LEN + 1];
    return id != NULL && ids_uuid_normalize(id, norm) && strcmp(norm, id) == 0;
}

ap_status token_issue(const char *tenant_id, const char *panel_id, const char *key_id,
                      int64_t ttl_ms, char out[TOKEN_MAX], int64_t *expires_ms)
{
    pthread_once(&secret_once, init_secret);
    if (!secret_ok)
        return AP_IO;
    if (!canonical_uuid(tenant_id) || !canonical_uuid(panel_id) || !canonical_uuid(key_id))
        return AP_INVALID;
    int64_t exp = clock_wall_ms() + ttl_ms;
    int n = snprintf(out, TOKEN_MAX, "%lld.%s.%s.%s.", (long long)exp, tenant_id, panel_id, key_id);
    if (n < 0 || n + IDS_SHA256_HEX_LEN + 1 > TOKEN_MAX)
        return AP_LIMIT;
    char mac[IDS_SHA256_HEX_LEN + 1];
    sign(out, (size_t)n - 1, mac);
    memcpy(out + n, mac, sizeof mac);
    *expires_ms = exp;
    return AP_OK;
}

bool token_verify(const char *token, const char *panel_id, char tenant_out[IDS_UUID_LEN + 1],
                  char key_out[IDS_UUID_LEN + 1])
{
    pthread_once(&secret_once, init_secret);
    if (!secret_ok || token == NULL || panel_id == NULL || strlen(token) >= TOKEN_MAX)
        return false;
    const char *last = strrchr(token, '.');
    if (last == NULL || strlen(last + 1) != IDS_SHA256_HEX_LEN)
        return false;
    char mac[IDS_SHA256_HEX_LEN + 1];
    sign(token, (size_t)(last - token), mac);
    if (!ids_equal_ct(mac, IDS_SHA256_HEX_LEN, last + 1, IDS_SHA256_HEX_LEN))
        return false;
    /* Genuine: the fields are ours, but parse them carefully all the same. A token of the
     * format before keys were signed in (no key field) fails here; it lived 5 minutes. */
    char *end = NULL;
    long long exp = strtoll(token, &end, 10);
    if (end == token || *end != '.' || exp < clock_wall_ms())
        return false;
    const char *tenant = end + 1;
    if (last - tenant != 3 * (IDS_UUID_LEN + 1) - 1)
        return false;
    const char *panel = tenant + IDS_UUID_LEN + 1;
    const char *key = panel + IDS_UUID_LEN + 1;
    if (tenant[IDS_UUID_LEN] != '.' || panel[IDS_UUID_LEN] != '.' ||
        strlen(panel_id) != IDS_UUID_LEN || strncmp(panel, panel_id, IDS_UUID_LEN) != 0)
        return false;
    memcpy(tenant_out, tenant, IDS_UUID_LEN);
    tenant_out[IDS_UUID_LEN] = '\0';
    memcpy(key_out, key, IDS_UUID_LEN);
    key_out[IDS_UUID_LEN] = '\0';
    return true;
}
