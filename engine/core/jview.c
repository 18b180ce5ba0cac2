#include "core/jview.h"

#include <stdlib.h>
#include <string.h>

/* Texts past 4 GiB cannot be indexed by the 32-bit offsets, and nothing the engine reads is
 * that large: such input is refused rather than silently wrapped. */
#define MAX_TEXT UINT32_MAX

typedef struct parser {
    jview *v;
    const unsigned char *s;
    size_t len, pos;
    int depth, max_depth;
    ap_status rc;
} parser;

static int fail(parser *p, ap_status rc)
{
    if (p->rc == AP_OK)
        p->rc = rc;
    return -1;
}

static int push(parser *p, jview_type type, size_t start)
{
    jview *v = p->v;
    if (v->n == v->cap) {
        /* every token covers at least one byte, so the text bounds the array */
        size_t cap = (size_t)v->cap * 2;
        if (cap > p->len + 1)
            cap = p->len + 1;
        jview_tok *t =
            v->tok == v->inline_tok ? malloc(cap * sizeof *t) : realloc(v->tok, cap * sizeof *t);
        if (t == NULL)
            return fail(p, AP_NOMEM);
        if (v->tok == v->inline_tok)
            memcpy(t, v->inline_tok, v->n * sizeof *t);
        v->tok = t;
        v->cap = (uint32_t)cap;
    }
    v->tok[v->n] = (jview_tok){.type = (uint8_t)type, .start = (uint32_t)start};
    return (int)v->n++;
}

static void skip_ws(parser *p)
{
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            return;
        p->pos++;
    }
}

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

/* Bytes that stand for themselves inside a string: not a quote, backslash, control character
 * or part of a multi-byte sequence. Most of a document is runs of them, skipped 8 at a time. */
static bool plain(unsigned char c)
{
    return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

static size_t skip_plain(const unsigned char *s, size_t i, size_t len)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (len - i >= 8) {
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
    while (i < len && plain(s[i]))
        i++;
    return i;
}

static int string(parser *p)
{
    int t = push(p, JVIEW_STRING, p->pos);
    if (t < 0)
        return -1;
    const unsigned char *s = p->s;
    size_t i = p->pos + 1;
    while (i < p->len) {
        i = skip_plain(s, i, p->len);
        if (i >= p->len)
            break;
        unsigned char c = s[i];
        if (c == '"') {
            p->pos = i + 1;
            p->v->tok[t].end = (uint32_t)p->pos;
            p->v->tok[t].next = p->v->n;
            return t;
        }
        if (c < 0x20)
            break;
        if (c == '\\') {
            p->v->tok[t].escaped = 1;
            if (i + 1 >= p->len)
                break;
            unsigned char e = s[i + 1];
            uint32_t cp;
            size_t n = 2;
            if (e == 'u')
                n = unicode_escape(s, p->len, i, &cp);
            else if (strchr("\"\\/bfnrt", e) == NULL || e == '\0')
                n = 0;
            if (n == 0)
                break;
            i += n;
        } else if (c >= 0x80) {
            size_t n = utf8_seq(s, p->len, i);
            if (n == 0)
                break;
            i += n;
        } else {
            i++;
        }
    }
    p->pos = i;
    return fail(p, AP_INVALID);
}

static bool digits(parser *p)
{
    size_t from = p->pos;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
        p->pos++;
    return p->pos > from;
}

static int number(parser *p)
{
    int t = push(p, JVIEW_NUMBER, p->pos);
    if (t < 0)
        return -1;
    if (p->s[p->pos] == '-')
        p->pos++;
    if (p->pos < p->len && p->s[p->pos] == '0')
        p->pos++;
    else if (!digits(p))
        return fail(p, AP_INVALID);
    if (p->pos < p->len && p->s[p->pos] == '.') {
        p->pos++;
        if (!digits(p))
            return fail(p, AP_INVALID);
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-'))
            p->pos++;
        if (!digits(p))
            return fail(p, AP_INVALID);
    }
    p->v->tok[t].end = (uint32_t)p->pos;
    p->v->tok[t].next = p->v->n;
    return t;
}

static int literal(parser *p, const char *word, jview_type type)
{
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0)
        return fail(p, AP_INVALID);
    int t = push(p, type, p->pos);
    if (t < 0)
        return -1;
    p->pos += n;
    p->v->tok[t].end = (uint32_t)p->pos;
    p->v->tok[t].next = p->v->n;
    return t;
}

static int value(parser *p);

/* An object or array: members are "key": value pairs (the key a string token of its own). */
static int container(parser *p, bool object)
{
    if (++p->depth > p->max_depth)
        return fail(p, AP_INVALID);
    int t = push(p, object ? JVIEW_OBJECT : JVIEW_ARRAY, p->pos);
    if (t < 0)
        return -1;
    unsigned char close = object ? '}' : ']';
    uint32_t count = 0;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
    } else {
        for (;;) {
            if (object) {
                skip_ws(p);
                if (p->pos >= p->len || p->s[p->pos] != '"' || string(p) < 0)
                    return fail(p, AP_INVALID);
                skip_ws(p);
                if (p->pos >= p->len || p->s[p->pos] != ':')
                    return fail(p, AP_INVALID);
                p->pos++;
            }
            if (value(p) < 0)
                return -1;
            count++;
            skip_ws(p);
            if (p->pos >= p->len)
                return fail(p, AP_INVALID);
            unsigned char c = p->s[p->pos++];
            if (c == close)
                break;
            if (c != ',')
                return fail(p, AP_INVALID);
        }
    }
    p->depth--;
    p->v->tok[t].end = (uint32_t)p->pos;
    p->v->tok[t].next = p->v->n;
    p->v->tok[t].count = count;
    return t;
}

static int value(parser *p)
{
    skip_ws(p);
    if (p->pos >= p->len)
        return fail(p, AP_INVALID);
    switch (p->s[p->pos]) {
    case '{':
        return container(p, true);
    case '[':
        return container(p, false);
    case '"':
        return string(p);
    case 't':
        return literal(p, "true", JVIEW_TRUE);
    case 'f':
        return literal(p, "false", JVIEW_FALSE);
    case 'n':
        return literal(p, "null", JVIEW_NULL);
    default:
        if (p->s[p->pos] == '-' || (p->s[p->pos] >= '0' && p->s[p->pos] <= '9'))
            return number(p);
        return fail(p, AP_INVALID);
    }
}

void jview_init(jview *v)
{
    v->src = "";
    v->tok = v->inline_tok;
    v->n = 0;
    v->cap = JVIEW_INLINE;
}

ap_status jview_parse(jview *v, const char *text, size_t len, int max_depth, ap_err *err)
{
    jview_init(v);
    v->src = text;
    if (len >= MAX_TEXT)
        return ap_err_set(err, AP_INVALID, "JSON text too large");
    parser p = {.v = v, .s = (const unsigned char *)text, .len = len, .max_depth = max_depth};
    if (value(&p) >= 0) {
        skip_ws(&p);
        if (p.pos < p.len)
            fail(&p, AP_INVALID);
    }
    if (p.rc == AP_NOMEM)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    if (p.rc != AP_OK) {
        if (p.depth > max_depth)
            return ap_err_set(err, AP_INVALID, "JSON nested deeper than %d levels", max_depth);
        return ap_err_set(err, AP_INVALID, "malformed JSON near byte %zu", p.pos);
    }
    return AP_OK;
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

int jview_get(const jview *v, int obj, const char *key)
{
    const jview_tok *t = at(v, obj);
    if (t == NULL || t->type != JVIEW_OBJECT)
        return -1;
    size_t n = strlen(key);
    uint32_t i = (uint32_t)obj + 1;
    for (uint32_t k = 0; k < t->count; k++) {
        const jview_tok *kt = &v->tok[i];
        bool match = kt->escaped ? jview_string_is(v, (int)i, key)
                                 : kt->end - kt->start - 2 == n &&
                                       memcmp(v->src + kt->start + 1, key, n) == 0;
        if (match)
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
    memcpy(tmp, v->src + t->start, t->end - t->start);
    tmp[t->end - t->start] = '\0';
    return strtod(tmp, NULL);
}
