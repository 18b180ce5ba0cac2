/* auth.c - layer 1 of tenant isolation: who is calling, and may they call this route.
 *
 * Tenant routes take `Authorization: Bearer <key>`; the key resolves to a tenant and a role.
 * `X-Tenant-ID`, when sent, must name the key's tenant. The operator key is accepted only on
 * operator routes and never stands in for a tenant. */
#include "core/ids.h"
#include "core/log.h"
#include "http/api.h"
#include "http/token.h"
#include "store/store.h"

#include <string.h>
#include <strings.h>

#define BEARER "Bearer "

static const char *bearer_token(const http_request *req)
{
    const char *h = http_header(req, "Authorization");
    if (h == NULL || strncasecmp(h, BEARER, strlen(BEARER)) != 0)
        return NULL;
    h += strlen(BEARER);
    while (*h == ' ')
        h++;
    return *h != '\0' ? h : NULL;
}

static bool is_operator_key(const api_deps *d, const char *token)
{
    const char *op = d->cfg->operator_key;
    if (op == NULL || op[0] == '\0')
        return false;
    return ids_equal_ct(op, strlen(op), token, strlen(token));
}

static void deny(http_request *req, unsigned status, const char *code, const char *msg)
{
    if (status == 401)
        http_add_header(req, "WWW-Authenticate", "Bearer realm=\"askpanel\"");
    http_reply_error(req, status, code, "%s", msg);
}

bool api_authenticate(http_request *req, unsigned flags, void *app)
{
    api_deps *d = app;
    http_principal *p = http_principal_of(req);
    const char *token = bearer_token(req);
    const char *stream_token = http_query(req, "token");
    if (token == NULL && stream_token != NULL && (flags & HTTP_STREAM_TOKEN)) {
        const char *panel = http_param(req, "id");
        char tenant[IDS_UUID_LEN + 1];
        if (panel == NULL || !token_verify(stream_token, panel, tenant)) {
            deny(req, 401, "unauthenticated", "the stream token is invalid or has expired");
            return false;
        }
        p->authenticated = true;
        p->role = STORE_ROLE_MEMBER;
        memcpy(p->tenant_id, tenant, sizeof tenant);
        return true;
    }
    if (token == NULL) {
        deny(req, 401, "unauthenticated", "an API key is required (Authorization: Bearer ...)");
        return false;
    }
    if (flags & HTTP_AUTH_OPERATOR) {
        if (!is_operator_key(d, token)) {
            deny(req, 403, "forbidden", "this route needs the operator key");
            return false;
        }
        p->authenticated = true;
        p->operator_key = true;
        return true;
    }
    if (is_operator_key(d, token)) {
        deny(req, 403, "forbidden", "the operator key is only accepted on /v1/admin routes");
        return false;
    }
    store_key key;
    ap_err err = {0};
    ap_status rc = store_key_resolve(d->store, token, &key, &err);
    if (rc == AP_NOTFOUND || rc == AP_DENIED || rc == AP_INVALID) {
        deny(req, 401, "unauthenticated",
             rc == AP_DENIED ? "this API key has been revoked" : "invalid API key");
        return false;
    }
    if (rc != AP_OK) {
        http_reply_ap_err(req, &err);
        return false;
    }
    const char *claimed = http_header(req, "X-Tenant-ID");
    if (claimed != NULL) {
        char norm[IDS_UUID_LEN + 1];
        if (!ids_uuid_normalize(claimed, norm) || strcmp(norm, key.tenant_id) != 0) {
            log_fields f = {.request_id = http_request_id(req),
                            .tenant_id = key.tenant_id,
                            .event = "security"};
            log_msg(LOG_LEVEL_WARN, &f, "X-Tenant-ID does not match the API key's tenant");
            deny(req, 403, "forbidden", "X-Tenant-ID does not match the API key's tenant");
            return false;
        }
    }
    if ((flags & HTTP_AUTH_ADMIN) && key.role != STORE_ROLE_ADMIN) {
        deny(req, 403, "forbidden", "this route needs an admin key");
        return false;
    }
    p->authenticated = true;
    p->role = (int)key.role;
    memcpy(p->tenant_id, key.tenant_id, sizeof key.tenant_id);
    memcpy(p->key_id, key.id, sizeof key.id);
    return true;
}
