#include "core/jsonx.h"

#include "core/buf.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int jsonx_depth(const cJSON *item)
{
    int max = 0;
    if (!cJSON_IsArray(item) && !cJSON_IsObject(item))
        return 0;
    for (const cJSON *c = item->child; c != NULL; c = c->next) {
        int d = jsonx_depth(c);
        if (d > max)
            max = d;
    }
    return max + 1;
}

cJSON *jsonx_parse(const char *text, size_t len, int max_depth, ap_err *err)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (root == NULL) {
        size_t at = end != NULL && end >= text ? (size_t)(end - text) : 0;
        ap_err_set(err, AP_INVALID, "malformed JSON near byte %zu", at);
        return NULL;
    }
    while (end != NULL && (size_t)(end - text) < len &&
           (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
        end++;
    /* Anything left is trailing data, a NUL and what follows it included (a body of
     * `{...}\0garbage` is not the JSON value it starts with); only a terminator counted in
     * len may end the text. */
    size_t at = end != NULL ? (size_t)(end - text) : len;
    if (at < len && !(at == len - 1 && *end == '\0')) {
        cJSON_Delete(root);
        ap_err_set(err, AP_INVALID, "trailing data after JSON value at byte %zu",
                   (size_t)(end - text));
        return NULL;
    }
    if (jsonx_depth(root) > max_depth) {
        cJSON_Delete(root);
        ap_err_set(err, AP_INVALID, "JSON nested deeper than %d levels", max_depth);
        return NULL;
    }
    return root;
}

const char *jsonx_string(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

double jsonx_number(const cJSON *obj, const char *key, double dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* Trees printed here come from bounded inputs (parsed with a size limit, or built by the
 * engine); the cap only keeps a runaway tree from taking all memory. */
#define PRINT_MAX ((size_t)1 << 30)
#define PRINT_DEPTH 1024

static ap_status print_item(buf *b, const cJSON *it, int depth)
{
    if (depth > PRINT_DEPTH)
        return AP_LIMIT;
    ap_status rc = AP_OK;
    switch (it->type & 0xFF) {
    case cJSON_NULL:
        return buf_puts(b, "null");
    case cJSON_False:
        return buf_puts(b, "false");
    case cJSON_True:
        return buf_puts(b, "true");
    case cJSON_Number:
        return isfinite(it->valuedouble) ? jsonx_append_number(b, it->valuedouble)
                                         : buf_puts(b, "null");
    case cJSON_String: {
        const char *v = it->valuestring != NULL ? it->valuestring : "";
        return jsonx_append_string(b, v, strlen(v));
    }
    case cJSON_Raw:
        return it->valuestring != NULL ? buf_puts(b, it->valuestring) : AP_INVALID;
    case cJSON_Array:
    case cJSON_Object: {
        bool object = (it->type & 0xFF) == cJSON_Object;
        rc = buf_putc(b, object ? '{' : '[');
        for (const cJSON *c = it->child; c != NULL && rc == AP_OK; c = c->next) {
            if (c != it->child)
                rc = buf_putc(b, ',');
            if (rc == AP_OK && object) {
                const char *k = c->string != NULL ? c->string : "";
                rc = jsonx_append_string(b, k, strlen(k));
                if (rc == AP_OK)
                    rc = buf_putc(b, ':');
            }
            if (rc == AP_OK)
                rc = print_item(b, c, depth + 1);
        }
        return rc == AP_OK ? buf_putc(b, object ? '}' : ']') : rc;
    }
    default:
        return AP_INVALID;
    }
}

/* Not cJSON_PrintUnformatted: it prints a number in 15 digits when that reads back within an
 * epsilon of it, so 0.1 + 0.2 came back as 0.3 from a checkpoint, a replayed answer or a
 * stored result; here every number reads back as the same double. */
char *jsonx_print(const cJSON *item)
{
    if (item == NULL)
        return NULL;
    buf b;
    buf_init(&b, PRINT_MAX);
    if (print_item(&b, item, 0) != AP_OK) {
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b);
}

bool jsonx_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        /* Plain ASCII, most of any text, eight bytes at a time. */
        uint64_t word;
        if (n - i >= sizeof word) {
            memcpy(&word, p + i, sizeof word);
            if ((word & 0x8080808080808080ULL) == 0) {
                i += sizeof word;
                continue;
            }
        }
        unsigned char c = p[i];
        size_t need;
        unsigned int cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            need = 1, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            need = 2, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            need = 3, cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i <= need)
            return false;
        for (size_t k = 1; k <= need; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if ((need == 1 && cp < 0x80) || (need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += need + 1;
    }
    return true;
}

/* Whether byte c goes into a JSON string as it is. */
static bool plain_ascii(unsigned char c)
{
    return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

size_t jsonx_plain_end(const char *s, size_t i, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (n - i >= 8) {
        uint64_t x;
        memcpy(&x, s + i, 8);
        uint64_t quote = x ^ (ONES * '"'), slash = x ^ (ONES * '\\');
        uint64_t special =
            (x | ((x - ONES * 0x20) & ~x) | ((quote - ONES) & ~quote) | ((slash - ONES) & ~slash)) &
            HIGHS;
        /* the lowest flagged byte is always a real one (borrows only run upwards) */
        if (special != 0)
            return i + (size_t)(__builtin_ctzll(special) >> 3);
        i += 8;
    }
#endif
    while (i < n && plain_ascii((unsigned char)s[i]))
        i++;
    return i;
}

ap_status jsonx_append_string(buf *b, const char *s, size_t n)
{
    ap_status rc = buf_putc(b, '"');
    size_t i = 0;
    while (rc == AP_OK && i < n) {
        unsigned char c = (unsigned char)s[i];
        if (plain_ascii(c)) {
            /* runs of plain ASCII, most of any text, go in with one copy */
            size_t j = jsonx_plain_end(s, i + 1, n);
            rc = buf_append(b, s + i, j - i);
            i = j;
        } else if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            rc = buf_append(b, esc, 2);
            i++;
        } else if (c < 0x20) {
            static const char hex[] = "0123456789abcdef";
            static const char shortcut[0x20] = {
                ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't'};
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            if (shortcut[c] != '\0')
                esc[1] = shortcut[c];
            rc = buf_append(b, esc, shortcut[c] != '\0' ? 2 : sizeof esc);
            i++;
        } else {
            size_t len = (c & 0xe0) == 0xc0   ? 2
                         : (c & 0xf0) == 0xe0 ? 3
                         : (c & 0xf8) == 0xf0 ? 4
                                              : 0;
            if (len != 0 && i + len <= n && jsonx_utf8_valid(s + i, len)) {
                rc = buf_append(b, s + i, len);
                i += len;
            } else {
                rc = buf_append(b, "\xef\xbf\xbd", 3);
                i++;
            }
        }
    }
    return rc == AP_OK ? buf_putc(b, '"') : rc;
}

size_t jsonx_uint_text(char *out, uint64_t v)
{
    char tmp[JSONX_INT_MAX];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    size_t n = sizeof tmp - i;
    memcpy(out, tmp + i, n);
    out[n] = '\0';
    return n;
}

size_t jsonx_int_text(char *out, int64_t v)
{
    if (v >= 0)
        return jsonx_uint_text(out, (uint64_t)v);
    out[0] = '-';
    return 1 + jsonx_uint_text(out + 1, 0 - (uint64_t)v);
}

ap_status jsonx_append_number(buf *b, double d)
{
    if (!isfinite(d))
        return AP_INVALID;
    char tmp[32];
    if (d == floor(d) && fabs(d) < 9007199254740992.0)
        return buf_append(b, tmp, jsonx_int_text(tmp, (int64_t)d));
    snprintf(tmp, sizeof tmp, "%.15g", d);
    if (strtod(tmp, NULL) != d)
        snprintf(tmp, sizeof tmp, "%.17g", d);
    return buf_puts(b, tmp);
}

bool jsonx_escapes_nul(const char *s, size_t n)
{
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"') {
            in_str = !in_str;
        } else if (in_str && s[i] == '\\') {
            if (i + 5 < n && memcmp(s + i + 1, "u0000", 5) == 0)
                return true;
            i++; /* the escaped character, a quote or a backslash included */
        }
    }
    return false;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Small objects pairwise, large ones sorted: a 1 MiB body can hold one object of 100,000
 * keys. A large object whose names cannot be sorted (no memory) counts as a duplicate. */
static const char *object_duplicate(const cJSON *obj)
{
    size_t n = 0;
    for (const cJSON *c = obj->child; c != NULL; c = c->next)
        n++;
    if (n <= 16) {
        for (const cJSON *a = obj->child; a != NULL; a = a->next)
            for (const cJSON *b = a->next; b != NULL; b = b->next)
                if (strcmp(a->string, b->string) == 0)
                    return a->string;
        return NULL;
    }
    const char **names = malloc(n * sizeof *names);
    if (names == NULL)
        return obj->child->string;
    size_t i = 0;
    for (const cJSON *c = obj->child; c != NULL; c = c->next)
        names[i++] = c->string;
    qsort(names, n, sizeof *names, cmp_names);
    const char *dup = NULL;
    for (i = 1; i < n && dup == NULL; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            dup = names[i];
    free(names);
    return dup;
}

const char *jsonx_duplicate_key(const cJSON *root)
{
    if (root == NULL)
        return NULL;
    if (cJSON_IsObject(root)) {
        const char *dup = object_duplicate(root);
        if (dup != NULL)
            return dup;
    }
    for (const cJSON *c = root->child; c != NULL; c = c->next) {
        const char *dup = jsonx_duplicate_key(c);
        if (dup != NULL)
            return dup;
    }
    return NULL;
}
