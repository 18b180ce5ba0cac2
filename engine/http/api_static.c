/* api_static.c - the web UI: static files from the configured web_dir.
 *
 * Only plain file names directly in web_dir are served ("/", "/ui/app.js"); a name with a
 * path separator or a leading dot cannot be asked for, so nothing outside web_dir leaks. */
#include "core/fileio.h"
#include "http/api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATIC_MAX (2 * 1024 * 1024)

static const struct {
    const char *ext;
    const char *type;
} types[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".svg", "image/svg+xml"},
    {".json", "application/json"},
    {".png", "image/png"},
    {".ico", "image/x-icon"},
};

static const char *type_of(const char *name)
{
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot != NULL && i < sizeof types / sizeof types[0]; i++)
        if (strcmp(dot, types[i].ext) == 0)
            return types[i].type;
    return NULL;
}

static bool safe_name(const char *name)
{
    if (name[0] == '\0' || name[0] == '.' || strlen(name) > 128)
        return false;
    for (const char *p = name; *p != '\0'; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.'))
            return false;
    return true;
}

static void serve_file(http_request *req, const api_deps *d, const char *name)
{
    const char *ctype = type_of(name);
    if (!safe_name(name) || ctype == NULL) {
        http_reply_error(req, 404, "not_found", "no such file");
        return;
    }
    char *data = NULL;
    size_t n = 0;
    ap_err err = {0};
    ap_status rc = fileio_read_in(d->cfg->web_dir, name, STATIC_MAX, &data, &n, &err);
    if (rc == AP_NOTFOUND || rc == AP_INVALID) {
        http_reply_error(req, 404, "not_found", "no such file");
    } else if (rc != AP_OK) {
        http_reply_error(req, 500, "internal", "cannot read %s", name);
    } else {
        http_add_header(req, "Cache-Control", "no-cache");
        http_add_header(req, "X-Content-Type-Options", "nosniff");
        http_add_header(req, "Content-Security-Policy",
                        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                        "style-src 'self'; script-src 'self'; frame-ancestors 'none'");
        http_reply_bytes(req, 200, ctype, data, n);
    }
    free(data);
}

void api_ui_index(http_request *req, void *app)
{
    serve_file(req, app, "index.html");
}

void api_ui_file(http_request *req, void *app)
{
    serve_file(req, app, http_param(req, "file"));
}
