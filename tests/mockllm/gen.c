#include "gen.h"

#include "core/buf.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 16
#define MAX_OPTIONS 16

typedef struct gen {
    uint64_t state;   /* PRNG state, from the whole prompt */
    double stance;    /* 0..1 from the persona alone: the same expert leans the same way */
    uint64_t persona; /* hash of the persona */
    char who[96];     /* how the expert names itself */
    bool has_median;
    double median;
    char options[MAX_OPTIONS][64];
    int n_options;
} gen;

uint64_t mock_hash(uint64_t h, const char *s)
{
    if (h == 0)
        h = 1469598103934665603ULL;
    for (; s != NULL && *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    h ^= 0xff;
    h *= 1099511628211ULL;
    return h;
}

static uint64_t next(gen *g)
{
    /* splitmix64: tiny, good enough, and stable across platforms */
    uint64_t z = (g->state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double unit(gen *g)
{
    return (double)(next(g) >> 11) / 9007199254740992.0;
}

/* The persona is the first line of the system prompt without "You are" and a final period. */
static void read_persona(gen *g, const char *system)
{
    const char *s = system;
    while (*s == ' ' || *s == '\n')
        s++;
    if (strncmp(s, "You are ", 8) == 0)
        s += 8;
    size_t n = strcspn(s, "\n");
    if (n >= sizeof g->who)
        n = sizeof g->who - 1;
    memcpy(g->who, s, n);
    g->who[n] = '\0';
    while (n > 0 && (g->who[n - 1] == '.' || g->who[n - 1] == ' '))
        g->who[--n] = '\0';
    if (n == 0)
        snprintf(g->who, sizeof g->who, "an independent advisor");
    g->persona = mock_hash(0, g->who);
    g->stance = (double)(g->persona >> 11) / 9007199254740992.0;
}

static void read_feedback(gen *g, const char *prompt)
{
    const char *m = strstr(prompt, "Group median:");
    if (m != NULL) {
        char *end = NULL;
        double v = strtod(m + 13, &end);
        if (end != m + 13 && isfinite(v)) {
            g->has_median = true;
            g->median = v;
        }
    }
    const char *o = strstr(prompt, "Options:");
    if (o == NULL)
        return;
    o += 8;
    size_t line = strcspn(o, "\n");
    const char *end = o + line;
    while (o < end && g->n_options < MAX_OPTIONS) {
        const char *bar = memchr(o, '|', (size_t)(end - o));
        const char *stop = bar != NULL ? bar : end;
        const char *a = o, *b = stop;
        while (a < b && *a == ' ')
            a++;
        while (b > a && b[-1] == ' ')
            b--;
        size_t n = (size_t)(b - a);
        if (n > 0 && n < sizeof g->options[0]) {
            memcpy(g->options[g->n_options], a, n);
            g->options[g->n_options][n] = '\0';
            g->n_options++;
        }
        o = bar != NULL ? bar + 1 : end;
    }
}

static const char *const OPENERS[][2] = {
    {"From where I sit as ", ", "},
    {"Speaking as ", ", "},
    {"In my experience as ", ", "},
    {"My view as ", " is that "},
};
static const char *const CLAIMS[] = {
    "the evidence points to a cautious but clear path forward",
    "the main risk lies in the assumptions nobody has tested yet",
    "the timeline is tighter than the plan admits",
    "the upside is real if the team stages the commitment",
    "regulators will look first at the quality of the underlying data",
    "the cost side is understated and needs a second look",
    "the strongest option is the one that keeps later choices open",
    "stakeholders will accept the change if the rationale is explicit",
};
static const char *const FOLLOWS[] = {
    "I would weigh the downside scenarios before committing",
    "a small pilot would settle most of the open questions",
    "the dissenting arguments deserve a written answer",
    "we should set explicit criteria for stopping early",
    "the numbers should be checked by someone outside the team",
    "I would prioritise the steps that reduce uncertainty fastest",
};

static ap_status prose(gen *g, buf *out, int words)
{
    ap_status rc = AP_OK;
    int have = 0;
    buf tmp;
    buf_init(&tmp, 1 << 20);
    /* The opener follows the persona, the rest the whole prompt. */
    const char *const *op = OPENERS[g->persona % 4];
    rc = buf_printf(&tmp, "%s%s%s", op[0], g->who, op[1]);
    while (rc == AP_OK) {
        size_t c = (size_t)(next(g) % (sizeof CLAIMS / sizeof CLAIMS[0]));
        size_t f = (size_t)(next(g) % (sizeof FOLLOWS / sizeof FOLLOWS[0]));
        rc = buf_printf(&tmp, "%s. Therefore %s. ", CLAIMS[c], FOLLOWS[f]);
        have = 0;
        for (size_t i = 0; i < tmp.len; i++)
            have += tmp.data[i] == ' ' && i + 1 < tmp.len && tmp.data[i + 1] != ' ';
        if (have + 1 >= words)
            break;
    }
    if (rc != AP_OK)
        goto out;
    /* Cut at `words` words and end the sentence cleanly. */
    int seen = 1;
    size_t cut = tmp.len;
    for (size_t i = 0; i < tmp.len; i++) {
        if (tmp.data[i] == ' ' && i + 1 < tmp.len && tmp.data[i + 1] != ' ' && ++seen > words) {
            cut = i;
            break;
        }
    }
    while (cut > 0 && (tmp.data[cut - 1] == ' ' || tmp.data[cut - 1] == '.'))
        cut--;
    rc = buf_append(out, tmp.data, cut);
    if (rc == AP_OK)
        rc = buf_puts(out, ".");
out:
    buf_free(&tmp);
    return rc;
}

static const char *schema_type(const cJSON *s)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(s, "type");
    if (cJSON_IsString(t))
        return t->valuestring;
    if (cJSON_IsArray(t)) {
        const cJSON *e = NULL;
        cJSON_ArrayForEach(e, t)
        {
            if (cJSON_IsString(e) && strcmp(e->valuestring, "null") != 0)
                return e->valuestring;
        }
    }
    if (cJSON_GetObjectItemCaseSensitive(s, "properties") != NULL)
        return "object";
    if (cJSON_GetObjectItemCaseSensitive(s, "items") != NULL)
        return "array";
    if (cJSON_GetObjectItemCaseSensitive(s, "enum") != NULL)
        return "enum";
    return "string";
}

static bool num(const cJSON *s, const char *key, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, key);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return false;
    *out = v->valuedouble;
    return true;
}

static bool name_has(const char *name, const char *part)
{
    return name != NULL && strstr(name, part) != NULL;
}

/* A persona-biased pick among k choices: usually the persona's favourite, sometimes not. */
static int pick(gen *g, int k)
{
    if (k <= 1)
        return 0;
    if (unit(g) < 0.7)
        return (int)(g->persona % (uint64_t)k);
    return (int)(next(g) % (uint64_t)k);
}

static cJSON *value(gen *g, const cJSON *s, const char *name, int depth);

static cJSON *number(gen *g, const cJSON *s, const char *name, bool integer)
{
    double lo = 0, hi = 100, x;
    bool has_lo = num(s, "minimum", &lo), has_hi = num(s, "maximum", &hi);
    if (num(s, "exclusiveMinimum", &x)) {
        lo = integer ? floor(x) + 1 : x + (fabs(x) + 1) * 1e-6;
        has_lo = true;
    }
    if (num(s, "exclusiveMaximum", &x)) {
        hi = integer ? ceil(x) - 1 : x - (fabs(x) + 1) * 1e-6;
        has_hi = true;
    }
    bool unit_range =
        name_has(name, "confidence") || name_has(name, "probability") || name_has(name, "weight");
    if (!has_lo)
        lo = has_hi && hi < 0 ? hi - 100 : 0;
    if (!has_hi)
        hi = unit_range && !integer && lo <= 0 ? 1 : lo + 100;
    if (hi < lo)
        hi = lo;
    /* persona stance plus a little per-question noise */
    double u = 0.65 * g->stance + 0.35 * unit(g);
    double v = lo + (hi - lo) * u;
    if (g->has_median && name_has(name, "estimate")) {
        double f = 0.5 + 0.3 * g->stance;
        v += f * (g->median - v);
    }
    if (g->has_median && name_has(name, "confidence"))
        v += 0.3 * (hi - v);
    if (v < lo)
        v = lo;
    if (v > hi)
        v = hi;
    if (integer) {
        v = round(v);
        if (v < lo)
            v = ceil(lo);
        if (v > hi)
            v = floor(hi);
    } else {
        v = round(v * 1000.0) / 1000.0;
        if (v < lo || v > hi)
            v = lo;
    }
    return cJSON_CreateNumber(v);
}

static cJSON *string(gen *g, const cJSON *s, const char *name)
{
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    if (cJSON_IsArray(en) && cJSON_GetArraySize(en) > 0)
        return cJSON_Duplicate(cJSON_GetArrayItem(en, pick(g, cJSON_GetArraySize(en))), true);
    if (name != NULL && strcmp(name, "position") == 0 && g->n_options > 0)
        return cJSON_CreateString(g->options[pick(g, g->n_options)]);
    char text[512];
    size_t c = (size_t)(next(g) % (sizeof CLAIMS / sizeof CLAIMS[0]));
    if (name_has(name, "name") || name_has(name, "title") || name_has(name, "id"))
        snprintf(text, sizeof text, "%s %u", name, (unsigned)(next(g) % 1000));
    else
        snprintf(text, sizeof text, "As %s: %s", g->who, CLAIMS[c]);
    double mn = 0, mx = 0;
    size_t n = strlen(text);
    if (num(s, "maxLength", &mx) && mx >= 0 && (double)n > mx) {
        n = (size_t)mx;
        while (n > 0 && (text[n] & 0xc0) == 0x80) /* stay on a character boundary */
            n--;
        text[n] = '\0';
    }
    if (num(s, "minLength", &mn) && mn > (double)n) {
        size_t want = mn < (double)(sizeof text - 1) ? (size_t)mn : sizeof text - 1;
        memset(text + n, '.', want - n);
        text[want] = '\0';
    }
    return cJSON_CreateString(text);
}

static cJSON *array(gen *g, const cJSON *s, const char *name, int depth)
{
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
    double mn = 1, mx = 3;
    bool has_min = num(s, "minItems", &mn), has_max = num(s, "maxItems", &mx);
    if (!has_min)
        mn = has_max && mx < 1 ? mx : 1;
    if (!has_max)
        mx = mn > 3 ? mn : 3;
    if (mn < 0)
        mn = 0;
    if (mx > 50)
        mx = 50 > mn ? 50 : mn;
    cJSON *arr = cJSON_CreateArray();
    if (arr == NULL)
        return NULL;
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(items, "enum");
    int k = cJSON_IsArray(en) ? cJSON_GetArraySize(en) : 0;
    if (k > 0 && k <= 64) {
        /* enum items become a permutation, usable as a ranking */
        int order[64];
        for (int i = 0; i < k; i++)
            order[i] = i;
        int first = pick(g, k);
        order[0] = first, order[first] = 0;
        for (int i = k - 1; i > 1; i--) {
            int j = 1 + (int)(next(g) % (uint64_t)i);
            int t = order[i];
            order[i] = order[j], order[j] = t;
        }
        int n = k; /* a full permutation unless maxItems says less */
        if (has_max && n > (int)mx)
            n = (int)mx;
        for (int i = 0; i < n; i++)
            cJSON_AddItemToArray(arr, cJSON_Duplicate(cJSON_GetArrayItem(en, order[i]), true));
        for (int i = n; i < (int)mn; i++) /* more items than choices: repeat */
            cJSON_AddItemToArray(arr, cJSON_Duplicate(cJSON_GetArrayItem(en, order[i % k]), true));
        return arr;
    }
    int n = (int)mn + (int)(next(g) % (uint64_t)((int)mx - (int)mn + 1));
    for (int i = 0; i < n; i++) {
        cJSON *v = value(g, items, name, depth + 1);
        if (v == NULL || !cJSON_AddItemToArray(arr, v)) {
            cJSON_Delete(v);
            cJSON_Delete(arr);
            return NULL;
        }
    }
    return arr;
}

static bool required(const cJSON *s, const char *key)
{
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *e = NULL;
    cJSON_ArrayForEach(e, req)
    {
        if (cJSON_IsString(e) && strcmp(e->valuestring, key) == 0)
            return true;
    }
    return false;
}

static cJSON *object(gen *g, const cJSON *s, int depth)
{
    cJSON *obj = cJSON_CreateObject();
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *p = NULL;
    if (obj == NULL)
        return NULL;
    cJSON_ArrayForEach(p, props)
    {
        if (p->string == NULL)
            continue;
        bool take = required(s, p->string) || unit(g) < 0.85;
        if (!take)
            continue;
        cJSON *v = value(g, p, p->string, depth + 1);
        if (v == NULL) {
            cJSON_Delete(obj);
            return NULL;
        }
        cJSON_AddItemToObject(obj, p->string, v);
    }
    /* required names without a property schema still need a value */
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *r = NULL;
    cJSON_ArrayForEach(r, req)
    {
        if (cJSON_IsString(r) && cJSON_GetObjectItemCaseSensitive(obj, r->valuestring) == NULL)
            cJSON_AddItemToObject(obj, r->valuestring, cJSON_CreateString(g->who));
    }
    return obj;
}

static cJSON *value(gen *g, const cJSON *s, const char *name, int depth)
{
    if (depth > MAX_DEPTH || !cJSON_IsObject(s))
        return cJSON_CreateNull();
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(s, "const");
    if (c != NULL)
        return cJSON_Duplicate(c, true);
    const cJSON *alt = cJSON_GetObjectItemCaseSensitive(s, "anyOf");
    if (alt == NULL)
        alt = cJSON_GetObjectItemCaseSensitive(s, "oneOf");
    if (cJSON_IsArray(alt) && cJSON_GetArraySize(alt) > 0)
        return value(g, cJSON_GetArrayItem(alt, 0), name, depth + 1);
    const char *t = schema_type(s);
    if (strcmp(t, "object") == 0)
        return object(g, s, depth);
    if (strcmp(t, "array") == 0)
        return array(g, s, name, depth);
    if (strcmp(t, "number") == 0)
        return number(g, s, name, false);
    if (strcmp(t, "integer") == 0)
        return number(g, s, name, true);
    if (strcmp(t, "boolean") == 0)
        return cJSON_CreateBool(0.6 * g->stance + 0.4 * unit(g) > 0.5);
    if (strcmp(t, "null") == 0)
        return cJSON_CreateNull();
    return string(g, s, name);
}

char *mock_generate(const mock_prompt *p, int words)
{
    gen g;
    memset(&g, 0, sizeof g);
    read_persona(&g, p->system != NULL ? p->system : "");
    read_feedback(&g, p->last_user != NULL ? p->last_user : "");
    uint64_t h = mock_hash(p->seed + 1, p->model);
    h = mock_hash(h, p->system);
    h = mock_hash(h, p->messages);
    g.state = h;
    if (p->schema != NULL) {
        char *schema_text = cJSON_PrintUnformatted(p->schema);
        g.state = mock_hash(h, schema_text);
        free(schema_text);
        cJSON *v = value(&g, p->schema, NULL, 0);
        char *out = v != NULL ? cJSON_PrintUnformatted(v) : NULL;
        cJSON_Delete(v);
        return out;
    }
    buf out;
    buf_init(&out, 1 << 22);
    if (prose(&g, &out, words > 0 ? words : 1) != AP_OK) {
        buf_free(&out);
        return NULL;
    }
    return buf_steal(&out);
}

size_t mock_tokenize(const char *text, int json, size_t *ends, size_t max)
{
    size_t n = 0, len = strlen(text), i = 0;
    while (i < len && n < max) {
        size_t j = i + 1;
        if (json) {
            j = i + 6;
            if (j > len)
                j = len;
        } else {
            while (j < len && text[j] != ' ')
                j++;
        }
        while (j < len && ((unsigned char)text[j] & 0xc0) == 0x80)
            j++;
        ends[n++] = j;
        i = j;
    }
    if (n > 0)
        ends[n - 1] = len; /* the last piece takes whatever is left */
    return n;
}
