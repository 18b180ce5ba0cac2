#include "core/jview.h"

#include "core/jsonx.h"

#include <stdlib.h>
#include <string.h>

/* Texts past 4 GiB cannot be indexed by the 32-bit offsets, and nothing the engine reads is
 * that large: such input is refused rather than silently wrapped. */
#define MAX_TEXT UINT32_MAX

/* No enclosing container. */
#define NO_TOKEN UINT32_MAX

static int hex(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The 4 hex digits at s[at..at+4), or -1. */
static long hex4(const unsigned char *s, size_t len, size_t at)
{
    if (len < 4 || at > len - 4)
        return -1;
    long u = 0;
    for (int k = 0; k < 4; k++) {
        int h = hex(s[at + (size_t)k]);
        if (h < 0)
            return -1;
        u = u * 16 + h;
    }
    return u;
}

/* Length of the well-formed UTF-8 sequence at s[i] (lead byte >= 0x80), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t len, size_t i)
{
    unsigned char c = s[i];
    size_t need;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0)
        need = 1, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0)
        need = 2, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0)
        need = 3, cp = c & 0x07;
    else
        return 0;
    if (len - i <= need)
        return 0;
    for (size_t k = 1; k <= need; k++) {
        if ((s[i + k] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if ((need == 1 && cp < 0x80) || (need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return need + 1;
}

/* A \u escape at s[at] ('\\' 'u' XXXX): its length (6, or 12 for a surrogate pair), or 0. */
static size_t unicode_escape(const unsigned char *s, size_t len, size_t at, uint32_t *cp)
{
    long u = hex4(s, len, at + 2);
    if (u < 0 || (u >= 0xdc00 && u <= 0xdfff))
        return 0;
    if (u < 0xd800 || u > 0xdbff) {
        *cp = (uint32_t)u;
        return 6;
    }
    if (at + 12 > len || s[at + 6] != '\\' || s[at + 7] != 'u')
        return 0;
    long lo = hex4(s, len, at + 8);
    if (lo < 0xdc00 || lo > 0xdfff)
        return 0;
    *cp = 0x10000 + (((uint32_t)u - 0xd800) << 10) + ((uint32_t)lo - 0xdc00);
    return 12;
}

static size_t skip_ws(const unsigned char *s, size_t len, size_t i)
{
    while (i < len && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t'))
        i++;
    return i;
}

/* Makes room for one more token. Every token covers at least one byte, so the text bounds
 * the array. */
static bool tok_room(jview *v, size_t len)
{
    if (v->n < v->cap)
        return true;
    size_t cap = (size_t)v->cap * 2;
    if (cap > len + 1)
        cap = len + 1;
    jview_tok *t =
        v->tok == v->inline_tok ? malloc(cap * sizeof *t) : realloc(v->tok, cap * sizeof *t);
    if (t == NULL)
        return false;
    if (v->tok == v->inline_tok)
        memcpy(t, v->inline_tok, v->n * sizeof *t);
    v->tok = t;
    v->cap = (uint32_t)cap;
    return true;
}

/* Scans the string whose opening quote is at s[*pos] and leaves *pos one past its closing
 * quote; false (with *pos at the offending byte) when it is not a well-formed string. */
static bool scan_string(const unsigned char *s, size_t len, size_t *pos, uint8_t *escaped)
{
    size_t i = *pos + 1;
    bool ok = false;
    for (;;) {
        i = jsonx_plain_end((const char *)s, i, len);
        if (i >= len)
            break;
        unsigned char c = s[i];
        if (c == '"') {
            i++;
            ok = true;
            break;
        }
        size_t n = 0;
        if (c == '\\') {
            *escaped = 1;
            unsigned char e = i + 1 < len ? s[i + 1] : '\0';
            uint32_t cp;
            if (e == 'u')
                n = unicode_escape(s, len, i, &cp);
            else if (e != '\0' && strchr("\"\\/bfnrt", e) != NULL)
                n = 2;
        } else if (c >= 0x80) {
            n = utf8_seq(s, len, i);
        }
        if (n == 0)
            break; /* a control character or a broken escape or sequence */
        i += n;
    }
    *pos = i;
    return ok;
}

static size_t digits(const unsigned char *s, size_t len, size_t i)
{
    while (i < len && s[i] >= '0' && s[i] <= '9')
        i++;
    return i;
}

/* Scans the number at s[*pos] (RFC 8259: no leading zeros, no bare dot or exponent). */
static bool scan_number(const unsigned char *s, size_t len, size_t *pos)
{
    size_t i = *pos, d;
    bool ok = false;
    if (s[i] == '-')
        i++;
    if (i < len && s[i] == '0')
        i++;
    else if ((d = digits(s, len, i)) > i)
        i = d;
    else
        goto out;
    if (i < len && s[i] == '.') {
        if ((d = digits(s, len, i + 1)) == i + 1)
            goto out;
        i = d;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            i++;
        if ((d = digits(s, len, i)) == i)
            goto out;
        i = d;
    }
    ok = true;
out:
    *pos = i;
    return ok;
}

static bool scan_literal(const unsigned char *s, size_t len, size_t *pos, const char *word,
                         size_t n)
{
    if (len - *pos < n || memcmp(s + *pos, word, n) != 0)
        return false;
    *pos += n;
    return true;
}

void jview_init(jview *v)
{
    v->src = "";
    v->tok = v->inline_tok;
    v->n = 0;
    v->cap = JVIEW_INLINE;
}

/* One pass, no recursion: `open` is the innermost open container, and while a container is
 * open its `next` field links to the one around it (it gets its real value at the close). */
ap_status jview_parse(jview *v, const char *text, size_t len, int max_depth, ap_err *err)
{
    enum { VALUE, KEY, AFTER } state = VALUE;
    const unsigned char *s = (const unsigned char *)text;
    size_t pos = 0;
    int depth = 0;
    uint32_t open = NO_TOKEN;
    ap_status rc = AP_INVALID;
    jview_init(v);
    v->src = text;
    if (len >= MAX_TEXT)
        return ap_err_set(err, AP_INVALID, "JSON text too large");
    for (;;) {
        if (state == VALUE || state == KEY) {
            pos = skip_ws(s, len, pos);
            if (pos >= len || (state == KEY && s[pos] != '"'))
                goto out;
            if (!tok_room(v, len)) {
                rc = AP_NOMEM;
                goto out;
            }
            uint32_t t = v->n++;
            jview_tok *tk = &v->tok[t];
            *tk = (jview_tok){.start = (uint32_t)pos};
            unsigned char c = s[pos];
            bool ok;
            if (c == '{' || c == '[') {
                if (++depth > max_depth)
                    goto out;
                tk->type = c == '{' ? JVIEW_OBJECT : JVIEW_ARRAY;
                tk->next = open;
                open = t;
                pos = skip_ws(s, len, pos + 1);
                if (pos < len && s[pos] == (c == '{' ? '}' : ']')) {
                    pos++;
                    goto close;
                }
                state = c == '{' ? KEY : VALUE;
                continue;
            }
            if (c == '"') {
                tk->type = JVIEW_STRING;
                ok = scan_string(s, len, &pos, &tk->escaped);
            } else if (c == 't') {
                tk->type = JVIEW_TRUE;
                ok = scan_literal(s, len, &pos, "true", 4);
            } else if (c == 'f') {
                tk->type = JVIEW_FALSE;
                ok = scan_literal(s, len, &pos, "false", 5);
            } else if (c == 'n') {
                tk->type = JVIEW_NULL;
                ok = scan_literal(s, len, &pos, "null", 4);
            } else {
                tk->type = JVIEW_NUMBER;
                ok = (c == '-' || (c >= '0' && c <= '9')) && scan_number(s, len, &pos);
            }
            if (!ok)
                goto out;
            tk->end = (uint32_t)pos;
            tk->next = v->n;
            if (state == KEY) {
                pos = skip_ws(s, len, pos);
                if (pos >= len || s[pos] != ':')
                    goto out;
                pos++;
                state = VALUE;
                continue;
            }
        }
        /* a value just ended */
        if (open == NO_TOKEN)
            break;
        jview_tok *ct = &v->tok[open];
        ct->count++;
        pos = skip_ws(s, len, pos);
        if (pos >= len)
            goto out;
        unsigned char c = s[pos];
        if (c == ',') {
            pos++;
            state = ct->type == JVIEW_OBJECT ? KEY : VALUE;
            continue;
        }
        if (c != (ct->type == JVIEW_OBJECT ? '}' : ']'))
            goto out;
        pos++;
    close:
        ct = &v->tok[open];
        open = ct->next;
        ct->end = (uint32_t)pos;
        ct->next = v->n;
        depth--;
        state = AFTER;
    }
    pos = skip_ws(s, len, pos);
    if (pos == len)
        return AP_OK;
out:
    if (rc == AP_NOMEM)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    if (depth > max_depth)
        return ap_err_set(err, AP_INVALID, "JSON nested deeper than %d levels", max_depth);
    return ap_err_set(err, AP_INVALID, "malformed JSON near byte %zu", pos);
}

void jview_free(jview *v)
{
    if (v != NULL && v->tok != v->inline_tok)
        free(v->tok);
    if (v != NULL)
        v->tok = v->inline_tok;
}

static const jview_tok *at(const jview *v, int i)
{
    return i >= 0 && (uint32_t)i < v->n ? &v->tok[i] : NULL;
}

jview_type jview_type_of(const jview *v, int i)
{
    const jview_tok *t = at(v, i);
    return t != NULL ? (jview_type)t->type : JVIEW_NONE;
}

uint32_t jview_count(const jview *v, int i)
{
    const jview_tok *t = at(v, i);
    return t != NULL && (t->type == JVIEW_OBJECT || t->type == JVIEW_ARRAY) ? t->count : 0;
}

int jview_index(const jview *v, int arr, uint32_t k)
{
    const jview_tok *t = at(v, arr);
    if (t == NULL || t->type != JVIEW_ARRAY || k >= t->count)
        return -1;
    uint32_t i = (uint32_t)arr + 1;
    while (k-- > 0)
        i = v->tok[i].next;
    return (int)i;
}

bool jview_string_is(const jview *v, int i, const char *s)
{
    const jview_tok *t = at(v, i);
    if (t == NULL || t->type != JVIEW_STRING)
        return false;
    size_t n = strlen(s);
    if (!t->escaped)
        return t->end - t->start - 2 == n && memcmp(v->src + t->start + 1, s, n) == 0;
    char small[256];
    size_t len = jview_string(v, i, small, sizeof small);
    if (len < sizeof small)
        return len == n && memcmp(small, s, n) == 0;
    char *big = malloc(len + 1);
    bool eq = big != NULL && jview_string(v, i, big, len + 1) == n && memcmp(big, s, n) == 0;
    free(big);
    return eq;
}

static bool key_is(const jview *v, uint32_t i, const char *key, size_t n)
{
    const jview_tok *kt = &v->tok[i];
    if (kt->escaped)
        return jview_string_is(v, (int)i, key);
    /* keys of one object often share a length (model, usage, error): the first byte settles
     * most of those without a memcmp call */
    const char *k = v->src + kt->start + 1;
    return kt->end - kt->start - 2 == n && (n == 0 || (k[0] == key[0] && memcmp(k, key, n) == 0));
}

int jview_get(const jview *v, int obj, const char *key)
{
    const jview_tok *t = at(v, obj);
    if (t == NULL || t->type != JVIEW_OBJECT)
        return -1;
    size_t n = strlen(key);
    uint32_t i = (uint32_t)obj + 1;
    for (uint32_t k = 0; k < t->count; k++) {
        if (key_is(v, i, key, n))
            return (int)i + 1;
        i = v->tok[i + 1].next;
    }
    return -1;
}

static size_t put_utf8(char *out, size_t cap, size_t len, uint32_t cp)
{
    unsigned char b[4];
    size_t n;
    if (cp < 0x80)
        b[0] = (unsigned char)cp, n = 1;
    else if (cp < 0x800)
        b[0] = (unsigned char)(0xc0 | (cp >> 6)), b[1] = (unsigned char)(0x80 | (cp & 0x3f)), n = 2;
    else if (cp < 0x10000)
        b[0] = (unsigned char)(0xe0 | (cp >> 12)),
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f)),
        b[2] = (unsigned char)(0x80 | (cp & 0x3f)), n = 3;
    else
        b[0] = (unsigned char)(0xf0 | (cp >> 18)),
        b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f)),
        b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f)),
        b[3] = (unsigned char)(0x80 | (cp & 0x3f)), n = 4;
    for (size_t k = 0; k < n; k++)
        if (len + k + 1 < cap)
            out[len + k] = (char)b[k];
    return n;
}

size_t jview_string(const jview *v, int i, char *out, size_t cap)
{
    const jview_tok *t = at(v, i);
    size_t len = 0;
    if (t != NULL && t->type == JVIEW_STRING) {
        const unsigned char *s = (const unsigned char *)v->src;
        size_t pos = t->start + 1, end = t->end - 1;
        if (!t->escaped) {
            len = end - pos;
            if (cap > 0)
                memcpy(out, s + pos, len < cap ? len : cap - 1);
        } else {
            while (pos < end) {
                uint32_t cp = s[pos];
                size_t adv = 1;
                if (cp == '\\') {
                    unsigned char e = s[pos + 1];
                    adv = 2;
                    switch (e) {
                    case 'b':
                        cp = '\b';
                        break;
                    case 'f':
                        cp = '\f';
                        break;
                    case 'n':
                        cp = '\n';
                        break;
                    case 'r':
                        cp = '\r';
                        break;
                    case 't':
                        cp = '\t';
                        break;
                    case 'u':
                        adv = unicode_escape(s, end, pos, &cp);
                        break;
                    default:
                        cp = e;
                        break;
                    }
                    /* \u0000 ends the string; adv is never 0 for a parsed view */
                    if (cp == 0 || adv == 0)
                        break;
                    len += put_utf8(out, cap, len, cp);
                } else {
                    if (len + 1 < cap)
                        out[len] = (char)cp;
                    len++;
                }
                pos += adv;
            }
        }
    }
    if (cap > 0)
        out[len < cap ? len : cap - 1] = '\0';
    return len;
}

double jview_number(const jview *v, int i, double dflt)
{
    const jview_tok *t = at(v, i);
    char tmp[64];
    if (t == NULL || t->type != JVIEW_NUMBER || t->end - t->start >= sizeof tmp)
        return dflt;
    /* counts and indexes are small integers: no need for strtod and a copy */
    const char *p = v->src + t->start, *end = v->src + t->end;
    bool neg = *p == '-';
    if (end - p - neg <= 15) {
        int64_t n = 0;
        const char *q = p + neg;
        while (q < end && *q >= '0' && *q <= '9')
            n = n * 10 + (*q++ - '0');
        if (q == end)
            return (double)(neg ? -n : n);
    }
    memcpy(tmp, p, t->end - t->start);
    tmp[t->end - t->start] = '\0';
    return strtod(tmp, NULL);
}
