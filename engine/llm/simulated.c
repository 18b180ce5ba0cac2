#include "llm/simulated.h"

#include "core/buf.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/jsonx.h"
#include "llm/cfg.h"
#include "core/log.h"
#include "llm/provider.h"

#include <ctype.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SIM_MAX_DEPTH 8
/* An array's length: at most SIM_MAX_ITEMS where the schema allows more, and a minItems above
 * SIM_MIN_ITEMS_MAX is taken as that (the schema is the script's: 1e9 would be gigabytes). */
#define SIM_MAX_ITEMS 8
#define SIM_MIN_ITEMS_MAX 64
#define SIM_TEXT_MAX (256 * 1024)
#define SIM_PROSE_MAX 4096 /* one prose answer or string; longer (a huge role) fails */
/* What one JSON answer may cost: a unit is a value generated or a schema member looked at.
 * Nested arrays multiply (8 levels of 64 items), so the schema alone does not bound the work;
 * past either limit the answer is cut (see gen). Normal schemas use a few hundred units and
 * a few KiB. */
#define SIM_WORK_MAX ((size_t)1 << 18)
#define SIM_PRINT_WORK 32 /* a const or enum member printed by cJSON: allocated, walked, freed */
#define SIM_OUT_MAX ((size_t)1 << 20)
/* The JSON answer's buffer: past SIM_OUT_MAX only one value (a const or enum member of the
 * schema, which is at most as large as the schema text) and the closing brackets follow. */
#define SIM_JSON_MAX ((size_t)16 << 20)
#define SIM_CHUNK 24 /* bytes per streamed delta */
#define SIM_PARSED 8 /* parsed JSON texts a provider keeps */

/* ---- deterministic randomness ----------------------------------------------------------- */

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* FNV-1a steps over s[0..n), four bytes per loop test: the prompt and the schema text are
 * hashed on every call. */
static uint64_t fnv(uint64_t h, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        h = (h ^ p[i]) * 0x100000001b3ULL;
        h = (h ^ p[i + 1]) * 0x100000001b3ULL;
        h = (h ^ p[i + 2]) * 0x100000001b3ULL;
        h = (h ^ p[i + 3]) * 0x100000001b3ULL;
    }
    for (; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

static uint64_t hash_str(uint64_t h, const char *s)
{
    h ^= 0xcbf29ce484222325ULL;
    if (s != NULL)
        h = fnv(h, s, strlen(s));
    return mix(h);
}

/* What a prompt says, read once per prompt text: an ask_all sends one prompt to every expert. */
typedef struct prompt_facts {
    bool has_median;
    double median;
    bool has_previous; /* "Previous estimate: N": the expert's own last answer */
    double previous;
    char options[8][96];
    int noptions;
    char topic[6][32];
    int ntopic;
} prompt_facts;

typedef struct sim {
    uint64_t rng;
    uint64_t common; /* shared by all experts: the "truth" of this prompt */
    uint64_t who;    /* the expert: id, persona and role */
    double stance;   /* 0 cautious .. 1 bold, from the persona */
    double pull;     /* how far this expert moves toward a group median */
    const char *name, *role, *persona;
    const prompt_facts *f; /* of the prompt */
    buf scratch;           /* one string's text before it is cut and escaped */
    size_t work;           /* units of SIM_WORK_MAX spent on this answer */
    bool cut;              /* the answer ran out of budget: no more values are generated */
} sim;

static uint64_t next(sim *s)
{
    s->rng = mix(s->rng);
    return s->rng;
}

static double unit(sim *s)
{
    return (double)(next(s) >> 11) / 9007199254740992.0;
}

static double field_common(const sim *s, const char *field)
{
    return (double)(hash_str(s->common, field) >> 11) / 9007199254740992.0;
}

/* Words of a prompt that say nothing about its topic (lengths kept: checked per prompt word). */
#define W(s)                                                                                       \
    {                                                                                              \
        s, sizeof s - 1                                                                            \
    }
static const struct {
    const char *w;
    size_t n;
} stop_words[] = {
    W("should"),    W("would"),   W("answer"),    W("question"), W("please"),   W("between"),
    W("respond"),   W("format"),  W("expert"),    W("experts"),  W("estimate"), W("confidence"),
    W("schema"),    W("options"), W("median"),    W("previous"), W("reason"),   W("reasons"),
    W("position"),  W("provide"), W("return"),    W("consider"), W("explain"),  W("briefly"),
    W("anonymous"), W("panel"),   W("panellist"), W("round"),
};
#undef W

static bool is_stop_word(const char *w, size_t n)
{
    /* The first letter rules out most words before a whole comparison. */
    int first = tolower((unsigned char)w[0]);
    for (size_t i = 0; i < sizeof stop_words / sizeof stop_words[0]; i++)
        if (stop_words[i].n == n && stop_words[i].w[0] == first &&
            strncasecmp(stop_words[i].w, w, n) == 0)
            return true;
    return false;
}

/* ---- reading the prompt ------------------------------------------------------------------ */

static void read_prompt(const char *prompt, prompt_facts *f)
{
    memset(f, 0, sizeof *f);
    const char *m = strstr(prompt, "Group median:");
    if (m != NULL) {
        char *end = NULL;
        double v = strtod(m + strlen("Group median:"), &end);
        if (end != m + strlen("Group median:") && isfinite(v)) {
            f->has_median = true;
            f->median = v;
        }
    }
    const char *pe = strstr(prompt, "Previous estimate:");
    if (pe != NULL) {
        char *end = NULL;
        double v = strtod(pe + strlen("Previous estimate:"), &end);
        if (end != pe + strlen("Previous estimate:") && isfinite(v)) {
            f->has_previous = true;
            f->previous = v;
        }
    }
    const char *o = strstr(prompt, "Options:");
    if (o != NULL) {
        o += strlen("Options:");
        while (f->noptions < 8 && *o != '\0' && *o != '\n') {
            while (*o == ' ' || *o == '|')
                o++;
            const char *e = o;
            while (*e != '\0' && *e != '\n' && *e != '|')
                e++;
            const char *t = e;
            while (t > o && t[-1] == ' ')
                t--;
            if (t > o) {
                size_t n = (size_t)(t - o);
                if (n >= sizeof f->options[0])
                    n = sizeof f->options[0] - 1;
                memcpy(f->options[f->noptions], o, n);
                f->options[f->noptions][n] = '\0';
                f->noptions++;
            }
            o = e;
        }
    }
    /* topic words: the first few long words of the prompt */
    const char *p = prompt;
    while (*p != '\0' && f->ntopic < 6) {
        while (*p != '\0' && !isalpha((unsigned char)*p))
            p++;
        const char *w = p;
        while (isalpha((unsigned char)*p) || *p == '-')
            p++;
        size_t n = (size_t)(p - w);
        if (n >= 6 && n < sizeof f->topic[0] && !is_stop_word(w, n)) {
            bool dup = false;
            for (int i = 0; i < f->ntopic; i++)
                dup = dup || (strncasecmp(f->topic[i], w, n) == 0 && f->topic[i][n] == '\0');
            if (!dup) {
                for (size_t i = 0; i < n; i++)
                    f->topic[f->ntopic][i] = (char)tolower((unsigned char)w[i]);
                f->topic[f->ntopic][n] = '\0';
                f->ntopic++;
            }
        }
    }
}

/* The prompt without its feedback lines: what stays the same from round to round. */
static uint64_t stable_hash(uint64_t seed, const char *prompt)
{
    uint64_t h = seed ^ 0x51ed27ULL;
    const char *line = prompt;
    while (*line != '\0') {
        const char *end = strchr(line, '\n');
        size_t n = end != NULL ? (size_t)(end - line) : strlen(line);
        if (strncmp(line, "Group median:", 13) != 0 && strncmp(line, "Previous", 8) != 0 &&
            strncmp(line, "Round", 5) != 0)
            h = fnv(h, line, n);
        line += n + (end != NULL ? 1 : 0);
    }
    return mix(h);
}

/* ---- prose -------------------------------------------------------------------------------- */

static const char *const cautious_open[] = {
    "I would move carefully here",
    "The downside risks deserve more weight than they are getting",
    "My reading is that the evidence is thinner than it looks",
};
static const char *const bold_open[] = {
    "I see a clear opportunity",
    "The case for acting now is strong",
    "My view is that the upside outweighs the risks",
};
static const char *const middles[][3] = {
    {"The key question is how ", " interacts with ", ""},
    {"We should test our assumptions about ", " before committing on ", ""},
    {"Experience with ", " suggests that ", " will decide the outcome"},
    {"A staged plan around ", " keeps options open on ", ""},
};

static const char *const closes[] = {
    "I would want a clear checkpoint before the next commitment.",
    "On balance I recommend proceeding, with explicit exit criteria.",
    "I would ask for one more piece of evidence before deciding.",
    "The team should document dissent so it can be revisited.",
};

/* Appends the pieces in order: what buf_printf("%s%s...") wrote, without formatting. */
static ap_status put_all(buf *b, const char *const *parts, size_t n)
{
    ap_status rc = AP_OK;
    for (size_t i = 0; i < n && rc == AP_OK; i++)
        rc = buf_puts(b, parts[i]);
    return rc;
}

static ap_status prose(sim *s, buf *b)
{
    const prompt_facts *f = s->f;
    const char *t1 = f->ntopic > 0 ? f->topic[next(s) % (uint64_t)f->ntopic] : "the question";
    const char *t2 = f->ntopic > 1 ? f->topic[next(s) % (uint64_t)f->ntopic] : "execution";
    if (f->ntopic > 1 && strcmp(t1, t2) == 0)
        t2 = strcmp(t1, f->topic[0]) == 0 ? f->topic[1] : f->topic[0];
    const char *open = s->stance < 0.5 ? cautious_open[next(s) % 3] : bold_open[next(s) % 3];
    const char *const *m = middles[next(s) % 4];
    const char *close = closes[next(s) % 4];
    const char *parts[] = {"Speaking as ", s->role, ": ", open, ". ", m[0], t1,
                           m[1],           t2,      m[2], ". ", close};
    return put_all(b, parts, sizeof parts / sizeof parts[0]);
}

static char *prose_string(sim *s)
{
    buf b;
    buf_init(&b, SIM_PROSE_MAX);
    if (prose(s, &b) != AP_OK) {
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b);
}

/* ---- writing the answer as cJSON_PrintUnformatted would ------------------------------------- */

/* s[0..n) as cJSON prints a string: '"', '\\' and control bytes escaped, every other byte as
 * it is. Not jsonx_append_string, which replaces invalid UTF-8: a name, an option or a
 * maxLength cut can hold a partial sequence, and the answer must stay what it was. */
static ap_status put_string(buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    ap_status rc = buf_putc(b, '"');
    size_t i = 0;
    while (rc == AP_OK && i < n) {
        size_t j = i;
        while (j < n && (unsigned char)s[j] >= 0x20 && s[j] != '"' && s[j] != '\\')
            j++;
        rc = buf_append(b, s + i, j - i);
        if (rc != AP_OK || j == n)
            break;
        unsigned char c = (unsigned char)s[j];
        char esc[6] = {'\\', (char)c, 0, 0, 0, 0};
        size_t len = 2;
        switch (c) {
        case '"':
        case '\\':
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            esc[1] = 'u', esc[2] = '0', esc[3] = '0', esc[4] = hex[c >> 4], esc[5] = hex[c & 15];
            len = 6;
        }
        rc = buf_append(b, esc, len);
        i = j + 1;
    }
    return rc == AP_OK ? buf_putc(b, '"') : rc;
}

static ap_status put_cstring(buf *b, const char *s)
{
    return put_string(b, s != NULL ? s : "", s != NULL ? strlen(s) : 0);
}

/* A number through cJSON itself, into the stack: the exact text for every case below. */
static ap_status put_number_cjson(buf *b, double d)
{
    cJSON item;
    memset(&item, 0, sizeof item);
    item.type = cJSON_Number;
    cJSON_SetNumberHelper(&item, d);
    char tmp[64];
    if (!cJSON_PrintPreallocated(&item, tmp, (int)sizeof tmp, false))
        return AP_NOMEM;
    return buf_puts(b, tmp);
}

/* A whole number below 1e15 prints as its digits whichever way cJSON takes (%d, or %1.15g,
 * which stays in fixed notation below 1e15). -0 (which cJSON prints as "-0") and everything
 * else goes through cJSON. */
static ap_status put_number(buf *b, double d)
{
    char tmp[JSONX_INT_MAX];
    if (d == floor(d) && fabs(d) < 1e15 && !(d == 0 && signbit(d)))
        return buf_append(b, tmp, jsonx_int_text(tmp, (int64_t)d));
    return put_number_cjson(b, d);
}

/* k / 1000 for a whole k, the numbers gen_number answers. For 1 <= |k| < 1e12 and k / 1000 not
 * whole, the double nearest k / 1000 is within a relative 2^-53 of it while 15 significant
 * digits step by a relative 1e-15 or more, so %1.15g shows exactly the digits of k / 1000 in
 * fixed notation (0.001 <= |d| < 1e9), and they read back as the same double: that is what
 * cJSON prints, written here without printf and sscanf. */
static ap_status put_thousandths(buf *b, double k)
{
    if (!(fabs(k) >= 1 && fabs(k) < 1e12) || fmod(k, 1000) == 0)
        return put_number(b, k / 1000);
    uint64_t m = (uint64_t)fabs(k);
    char tmp[JSONX_INT_MAX + 8];
    size_t n = 0;
    if (k < 0)
        tmp[n++] = '-';
    n += jsonx_int_text(tmp + n, (int64_t)(m / 1000));
    unsigned frac = (unsigned)(m % 1000);
    tmp[n++] = '.';
    tmp[n++] = (char)('0' + frac / 100);
    tmp[n++] = (char)('0' + frac / 10 % 10);
    tmp[n++] = (char)('0' + frac % 10);
    while (tmp[n - 1] == '0') /* frac != 0: a digit stays */
        n--;
    return buf_append(b, tmp, n);
}

/* A value of the schema (a const or an enum member) as cJSON prints it. Scalars are written
 * here, without the allocation of a print (a schema can ask for thousands of them): a parsed
 * number has the valuedouble and valueint of put_number's item. An array or an object adds
 * SIM_PRINT_WORK to *work. */
static ap_status put_item(buf *b, const cJSON *item, size_t *work)
{
    if (cJSON_IsString(item))
        return put_cstring(b, item->valuestring);
    if (cJSON_IsNumber(item))
        return put_number(b, item->valuedouble);
    if (cJSON_IsBool(item) || cJSON_IsNull(item))
        return buf_puts(b, cJSON_IsTrue(item) ? "true" : cJSON_IsFalse(item) ? "false" : "null");
    *work += SIM_PRINT_WORK;
    char *text = cJSON_PrintUnformatted(item);
    if (text == NULL)
        return AP_NOMEM;
    ap_status rc = buf_puts(b, text);
    free(text);
    return rc;
}

/* ---- schema-driven values ----------------------------------------------------------------- */

static bool name_has(const char *field, const char *word)
{
    return field != NULL && strstr(field, word) != NULL;
}

/* Picks among n choices: mostly the choice all experts lean to, sometimes the persona's own. */
static int biased_pick(sim *s, const char *field, int n)
{
    if (n <= 1)
        return 0;
    int common = (int)(hash_str(s->common, field) % (uint64_t)n);
    int own = (int)(s->stance * n);
    if (own >= n)
        own = n - 1;
    return (next(s) % 100) < 60 ? common : own;
}

/* The members of a schema object the generator reads, found in one pass over it instead of a
 * lookup each: for each name the first member, as cJSON_GetObjectItemCaseSensitive finds. */
typedef struct schema_keys {
    const cJSON *type, *konst, *any_of, *one_of, *en, *properties, *items, *required;
    const cJSON *minimum, *exclusive_minimum, *maximum, *exclusive_maximum;
    const cJSON *min_items, *max_items, *max_length;
} schema_keys;

/* Points *slot at member when the member is called name and *slot is still unset; true when
 * the name matched, so a chain of takes stops at the first match. */
static bool take(const cJSON **slot, const cJSON *member, const char *name)
{
    if (strcmp(member->string, name) != 0)
        return false;
    if (*slot == NULL)
        *slot = member;
    return true;
}

/* Returns the number of members looked at, for the work budget. */
static size_t schema_keys_of(const cJSON *sc, schema_keys *k)
{
    memset(k, 0, sizeof *k);
    size_t n = 0;
    /* like the lookup, stop at a member without a name (only arrays have those) */
    for (const cJSON *m = sc->child; m != NULL && m->string != NULL; m = m->next, n++) {
        switch (m->string[0]) {
        case 't':
            take(&k->type, m, "type");
            break;
        case 'c':
            take(&k->konst, m, "const");
            break;
        case 'a':
            take(&k->any_of, m, "anyOf");
            break;
        case 'o':
            take(&k->one_of, m, "oneOf");
            break;
        case 'e':
            (void)(take(&k->en, m, "enum") || take(&k->exclusive_minimum, m, "exclusiveMinimum") ||
                   take(&k->exclusive_maximum, m, "exclusiveMaximum"));
            break;
        case 'p':
            take(&k->properties, m, "properties");
            break;
        case 'i':
            take(&k->items, m, "items");
            break;
        case 'r':
            take(&k->required, m, "required");
            break;
        case 'm':
            (void)(take(&k->minimum, m, "minimum") || take(&k->maximum, m, "maximum") ||
                   take(&k->min_items, m, "minItems") || take(&k->max_items, m, "maxItems") ||
                   take(&k->max_length, m, "maxLength"));
            break;
        default:
            break;
        }
    }
    return n;
}

/* The expert's name, role and persona as jsonx_string finds them (the first member of the
 * name, NULL unless a string), in one pass over the members instead of a lookup each. */
static void expert_fields(const cJSON *expert, sim *s)
{
    const cJSON *name = NULL, *role = NULL, *persona = NULL;
    const cJSON *m = expert != NULL ? expert->child : NULL;
    for (; m != NULL && m->string != NULL; m = m->next) {
        if (m->string[0] == 'n')
            (void)take(&name, m, "name");
        else if (m->string[0] == 'r')
            (void)take(&role, m, "role");
        else if (m->string[0] == 'p')
            (void)take(&persona, m, "persona");
    }
    s->name = cJSON_IsString(name) ? name->valuestring : NULL;
    s->role = cJSON_IsString(role) ? role->valuestring : NULL;
    s->persona = cJSON_IsString(persona) ? persona->valuestring : NULL;
}

/* What gen makes of a schema's type. OTHER (an unknown type) is generated as a string but,
 * unlike STRING, takes a member of the enum as it is. */
typedef enum {
    T_STRING,
    T_OTHER,
    T_OBJECT,
    T_ARRAY,
    T_INTEGER,
    T_NUMBER,
    T_BOOLEAN,
    T_NULL
} type_kind;

static type_kind kind_of(const char *t)
{
    static const struct {
        const char *name;
        type_kind kind;
    } kinds[] = {{"string", T_STRING},   {"object", T_OBJECT}, {"array", T_ARRAY},
                 {"integer", T_INTEGER}, {"number", T_NUMBER}, {"boolean", T_BOOLEAN},
                 {"null", T_NULL}};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (t[0] == kinds[i].name[0] && strcmp(t, kinds[i].name) == 0)
            return kinds[i].kind;
    return T_OTHER;
}

/* Adds the members of a "type" array it looks at to *work. */
static type_kind schema_type(const schema_keys *k, size_t *work)
{
    const cJSON *t = k->type;
    if (cJSON_IsString(t))
        return kind_of(t->valuestring);
    if (cJSON_IsArray(t)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, t)
        {
            ++*work;
            if (cJSON_IsString(e) && strcmp(e->valuestring, "null") != 0)
                return kind_of(e->valuestring);
        }
    }
    if (k->properties != NULL)
        return T_OBJECT;
    if (k->items != NULL)
        return T_ARRAY;
    return T_STRING;
}

static ap_status gen(sim *s, const cJSON *sc, const char *field, int depth, buf *b);

/* True once the answer is over its budget, and from then on: the answer is cut there. */
static bool spent(sim *s, const buf *b)
{
    if (s->work >= SIM_WORK_MAX || b->len >= SIM_OUT_MAX)
        s->cut = true;
    return s->cut;
}

/* The bound v, else the exclusive bound x nudged inward, else dflt. */
static double num_bound(const cJSON *v, const cJSON *x, double dflt, double nudge)
{
    if (cJSON_IsNumber(v))
        return v->valuedouble;
    if (cJSON_IsNumber(x))
        return x->valuedouble + nudge;
    return dflt;
}

static ap_status gen_number(sim *s, const schema_keys *k, const char *field, bool integer, buf *b)
{
    bool unitish = name_has(field, "confidence") || name_has(field, "probability") ||
                   name_has(field, "likelihood") || name_has(field, "agreement");
    double lo = num_bound(k->minimum, k->exclusive_minimum, unitish ? 0 : 0, integer ? 1 : 1e-9);
    double hi = num_bound(k->maximum, k->exclusive_maximum, unitish ? 1 : (integer ? 100 : 1000),
                          integer ? -1 : -1e-9);
    if (hi < lo)
        hi = lo;
    double v;
    if (name_has(field, "confidence")) {
        v = 0.55 + 0.35 * s->stance + 0.05 * unit(s);
        if (s->f->has_median)
            v += 0.1;
        if (v > 0.98)
            v = 0.98;
        v = lo + v * (hi - lo);
    } else if (name_has(field, "estimate") || name_has(field, "value") ||
               name_has(field, "forecast")) {
        /* A shared "truth" per question, shifted by the persona: bold experts guess high. */
        double truth = lo + (0.3 + 0.4 * field_common(s, field)) * (hi - lo);
        /* the expert's own noise is stable across rounds, so feedback only pulls */
        double noise = (double)(hash_str(s->common ^ s->who, field) >> 11) / 9007199254740992.0;
        v = truth + (s->stance - 0.5) * 0.3 * (hi - lo) + (noise - 0.5) * 0.02 * (hi - lo);
        /* Later rounds start from the expert's previous answer, so they keep converging. */
        if (s->f->has_previous)
            v = s->f->previous;
        if (s->f->has_median)
            v = s->f->median + (1 - s->pull) * (v - s->f->median);
    } else {
        v = lo + (0.2 + 0.6 * (0.5 * s->stance + 0.5 * unit(s))) * (hi - lo);
    }
    if (v < lo)
        v = lo;
    if (v > hi)
        v = hi;
    if (integer)
        return put_number(b, floor(v + 0.5) > hi ? floor(v) : floor(v + 0.5));
    return put_thousandths(b, round(v * 1000));
}

static ap_status gen_string(sim *s, const schema_keys *k, const char *field, buf *b)
{
    const cJSON *en = k->en;
    if (cJSON_IsArray(en) && en->child != NULL) {
        int n = cJSON_GetArraySize(en);
        s->work += (size_t)n;
        int i = biased_pick(s, field != NULL ? field : "enum", n);
        return put_item(b, cJSON_GetArrayItem(en, i), &s->work);
    }
    if (field != NULL && strcmp(field, "position") == 0 && s->f->noptions > 0)
        return put_cstring(b, s->f->options[biased_pick(s, "position", s->f->noptions)]);
    /* The text goes to the scratch buffer first: maxLength cuts it before it is escaped. */
    const char *text = s->name;
    if (!name_has(field, "name") || s->name == NULL) {
        buf_reset(&s->scratch);
        if (prose(s, &s->scratch) != AP_OK)
            return AP_NOMEM;
        text = s->scratch.data;
    }
    size_t len = strlen(text);
    const cJSON *ml = k->max_length;
    /* compared as doubles: a maxLength past SIZE_MAX does not fit a size_t */
    if (cJSON_IsNumber(ml) && ml->valuedouble >= 0 && (double)len > ml->valuedouble)
        len = (size_t)ml->valuedouble;
    return put_string(b, text, len);
}

/* The enum members of a ranking, best first: a shared preference plus the persona's own. */
static ap_status gen_ranking(sim *s, const cJSON *en, int lo, int hi, buf *b)
{
    double score[64];
    const cJSON *member[64];
    int order[64];
    int n = 0; /* the first 64 members, without walking a longer enum to its end */
    for (const cJSON *o = en->child; o != NULL && n < 64; o = o->next)
        n++;
    const cJSON *o = en->child;
    for (int i = 0; i < n; i++, o = o->next) {
        const char *os = cJSON_IsString(o) ? o->valuestring : "";
        double shared = (double)(hash_str(s->common, os) >> 11) / 9007199254740992.0;
        double own = (double)(hash_str((uint64_t)(s->stance * 1e9), os) >> 11) / 9007199254740992.0;
        score[i] = 0.6 * shared + 0.4 * own;
        member[i] = o;
        order[i] = i;
    }
    s->work += (size_t)n;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0; j--) {
            s->work++; /* up to 2016 comparisons for 64 members */
            if (!(score[order[j]] > score[order[j - 1]]))
                break;
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    int count = n < hi ? n : hi;
    if (count < lo)
        count = lo < n ? lo : n;
    ap_status rc = buf_putc(b, '[');
    for (int i = 0; i < count && rc == AP_OK; i++) {
        if (i > 0)
            rc = buf_putc(b, ',');
        if (rc == AP_OK)
            rc = put_item(b, member[order[i]], &s->work);
    }
    return rc == AP_OK ? buf_putc(b, ']') : rc;
}

/* v as an int within [lo, hi]: truncated as a cast would, but never cast out of range (a
 * minItems of 1e300 is valid JSON). */
static int clamp_count(double v, int lo, int hi)
{
    if (!(v >= lo))
        return lo;
    return v > hi ? hi : (int)v;
}

static ap_status gen_array(sim *s, const schema_keys *k, const char *field, int depth, buf *b)
{
    const cJSON *items = k->items;
    double min = num_bound(k->min_items, k->min_items, 1, 0);
    int lo = clamp_count(min, 0, SIM_MIN_ITEMS_MAX);
    /* without maxItems, minItems + 3 as it is (a negative minItems, taken as 0, makes it less) */
    int hi =
        clamp_count(num_bound(k->max_items, k->max_items, trunc(min) + 3, 0), 0, SIM_MAX_ITEMS);
    if (hi < lo)
        hi = lo;
    /* the "enum" of items, as cJSON_GetObjectItemCaseSensitive finds it */
    schema_keys ik = {0};
    if (items != NULL)
        s->work += schema_keys_of(items, &ik);
    const cJSON *en = ik.en;
    if (cJSON_IsArray(en) && en->child != NULL)
        return gen_ranking(s, en, lo, hi, b);
    int count = lo + (hi > lo ? (int)(next(s) % (uint64_t)(hi - lo + 1)) : 0);
    ap_status rc = buf_putc(b, '[');
    for (int i = 0; i < count && rc == AP_OK && !spent(s, b); i++) {
        s->work++;
        if (i > 0)
            rc = buf_putc(b, ',');
        if (rc == AP_OK)
            rc = gen(s, items, field, depth + 1, b);
    }
    return rc == AP_OK ? buf_putc(b, ']') : rc;
}

/* Adds the entries it compares to *work: a long "required" is read once per property. */
static bool is_required(const cJSON *required, const char *name, size_t *work)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, required)
    {
        ++*work;
        if (cJSON_IsString(e) && name != NULL && strcmp(e->valuestring, name) == 0)
            return true;
    }
    return false;
}

static ap_status gen_object(sim *s, const schema_keys *k, int depth, buf *b)
{
    ap_status rc = buf_putc(b, '{');
    bool first = true;
    /* "properties" that is not an object (a Lua sequence arrives as an array) names no
     * property, as a "properties" of another type always did; its members are not generated,
     * which could be any number of copies of a shared subtable. */
    const cJSON *props = cJSON_IsObject(k->properties) ? k->properties : NULL;
    const cJSON *p;
    cJSON_ArrayForEach(p, props)
    {
        if (rc != AP_OK || spent(s, b))
            break;
        s->work++;
        if (!is_required(k->required, p->string, &s->work) && next(s) % 100 >= 85)
            continue;
        if (!first)
            rc = buf_putc(b, ',');
        first = false;
        if (rc == AP_OK)
            rc = put_cstring(b, p->string);
        if (rc == AP_OK)
            rc = buf_putc(b, ':');
        if (rc == AP_OK)
            rc = gen(s, p, p->string, depth + 1, b);
    }
    return rc == AP_OK ? buf_putc(b, '}') : rc;
}

/* Appends to b a value for schema sc, in the bytes cJSON_PrintUnformatted gave for the tree
 * this once built (the answers of the simulated provider are part of what tests pin).
 * Past the answer's budget (SIM_WORK_MAX, SIM_OUT_MAX) no value is generated: the arrays and
 * objects being written end there (a property whose name is written gets null). A schema is
 * the script's, and however it nests or repeats, the answer stays bounded; a cut answer, like
 * one past SIM_MAX_DEPTH, may not validate. */
static ap_status gen(sim *s, const cJSON *sc, const char *field, int depth, buf *b)
{
    if (spent(s, b) || !cJSON_IsObject(sc) || depth > SIM_MAX_DEPTH)
        return buf_puts(b, "null");
    schema_keys k;
    s->work += 1 + schema_keys_of(sc, &k);
    if (k.konst != NULL)
        return put_item(b, k.konst, &s->work);
    const cJSON *any = k.any_of;
    if (!cJSON_IsArray(any))
        any = k.one_of;
    if (cJSON_IsArray(any) && any->child != NULL)
        return gen(s, any->child, field, depth + 1, b);
    type_kind t = schema_type(&k, &s->work);
    const cJSON *en = k.en;
    if (cJSON_IsArray(en) && en->child != NULL && t != T_STRING) {
        int n = cJSON_GetArraySize(en);
        s->work += (size_t)n;
        return put_item(b, cJSON_GetArrayItem(en, biased_pick(s, field ? field : "enum", n)),
                        &s->work);
    }
    switch (t) {
    case T_OBJECT:
        return gen_object(s, &k, depth, b);
    case T_ARRAY:
        return gen_array(s, &k, field, depth, b);
    case T_INTEGER:
        return gen_number(s, &k, field, true, b);
    case T_NUMBER:
        return gen_number(s, &k, field, false, b);
    case T_BOOLEAN:
        return buf_puts(b, (0.4 + 0.4 * s->stance) > unit(s) ? "true" : "false");
    case T_NULL:
        return buf_puts(b, "null");
    case T_STRING:
    case T_OTHER:
        break;
    }
    return gen_string(s, &k, field, b);
}

/* The last prompt a provider read, with its facts and its stable hash under seeds: the calls
 * of one ask_all share their prompt, so most calls skip reading it. */
typedef struct prompt_memo {
    char *prompt; /* owned; NULL: nothing remembered */
    prompt_facts facts;
    uint64_t seeds, common;
} prompt_memo;

/* The facts of prompt and its stable hash under seeds (*common), through memo when there is
 * one (else read into *local). Both are pure functions of their inputs, so a remembered
 * answer is the answer. */
static const prompt_facts *facts_of(prompt_memo *memo, prompt_facts *local, const char *prompt,
                                    uint64_t seeds, uint64_t *common)
{
    if (memo == NULL) {
        read_prompt(prompt, local);
        *common = stable_hash(seeds, prompt);
        return local;
    }
    if (memo->prompt == NULL || strcmp(memo->prompt, prompt) != 0) {
        free(memo->prompt);
        read_prompt(prompt, &memo->facts);
        /* without the copy nothing is remembered; the facts still serve this call */
        memo->prompt = strdup(prompt);
        memo->seeds = seeds;
        memo->common = stable_hash(seeds, prompt);
    } else if (memo->seeds != seeds) {
        memo->seeds = seeds;
        memo->common = stable_hash(seeds, prompt);
    }
    *common = memo->common;
    return &memo->facts;
}

/* The answer to req; expert and schema are req->expert_json and req->schema_json parsed (NULL
 * without one, or for an unreadable expert). *text is the prose, or with a schema the JSON
 * value, which is then also the data (*is_data). */
static ap_status simulate(const llm_request *req, const cJSON *expert, const cJSON *schema,
                          uint64_t seed, prompt_memo *memo, char **text, bool *is_data, ap_err *err)
{
    ap_status rc = AP_OK;
    buf out;
    buf_init(&out, SIM_JSON_MAX);
    *text = NULL;
    *is_data = false;
    sim s = {0};
    prompt_facts local;
    buf_init(&s.scratch, SIM_PROSE_MAX);
    expert_fields(expert, &s);
    if (s.name == NULL)
        s.name = req->expert_id;
    if (s.role == NULL)
        s.role = "an advisor";
    uint64_t who = hash_str(hash_str(hash_str(0, req->expert_id), s.persona), s.role);
    s.who = who;
    s.stance = (double)(who >> 11) / 9007199254740992.0;
    s.pull = 0.5 + 0.3 * (double)(mix(who) >> 11) / 9007199254740992.0;
    uint64_t seeds = mix(seed ^ req->seed);
    s.f = facts_of(memo, &local, req->prompt, seeds, &s.common);
    s.rng = hash_str(hash_str(hash_str(seeds ^ who, req->prompt), req->schema_json), req->system);
    if (req->schema_json == NULL) {
        *text = prose_string(&s);
        if (*text == NULL)
            rc = ap_err_set(err, AP_NOMEM, "out of memory");
        goto out;
    }
    /* Any failure was a NULL tree or text before, which the caller saw as out of memory. */
    if (gen(&s, schema, NULL, 0, &out) != AP_OK || (*text = buf_steal(&out)) == NULL) {
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
        goto out;
    }
    *is_data = true;
out:
    buf_free(&out);
    buf_free(&s.scratch);
    return rc;
}

static ap_status parse_schema(const char *text, cJSON **out, ap_err *err)
{
    ap_err inner = {0};
    *out = jsonx_parse(text, strlen(text), 32, &inner);
    if (*out == NULL)
        return ap_err_set(err, AP_INVALID, "the answer schema is not valid JSON: %s", inner.msg);
    return AP_OK;
}

ap_status llm_simulate(const llm_request *req, uint64_t seed, char **text, char **data_json,
                       ap_err *err)
{
    *text = NULL;
    *data_json = NULL;
    cJSON *schema = NULL;
    bool is_data = false;
    ap_status rc = req->schema_json != NULL ? parse_schema(req->schema_json, &schema, err) : AP_OK;
    cJSON *expert = req->expert_json != NULL
                        ? jsonx_parse(req->expert_json, strlen(req->expert_json), 32, NULL)
                        : NULL;
    if (rc == AP_OK)
        rc = simulate(req, expert, schema, seed, NULL, text, &is_data, err);
    /* the provider shares one text between both; this API hands out two */
    if (rc == AP_OK && is_data && (*data_json = strdup(*text)) == NULL) {
        free(*text);
        *text = NULL;
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
    }
    cJSON_Delete(expert);
    cJSON_Delete(schema);
    return rc;
}

/* ---- the provider on the loop -------------------------------------------------------------- */

typedef struct sim_provider {
    llm_loop *loop;
    int64_t latency_ms;
    int64_t token_ms;
    uint64_t seed;
    char *call_log; /* path: one line per completed call, for tests; NULL: off */
    /* The last schemas and experts parsed (texts and trees, replaced oldest first): the calls
     * of one ask_all share their schema, and panels often share their experts. */
    char *parsed_text[SIM_PARSED];
    cJSON *parsed[SIM_PARSED];
    size_t parsed_len[SIM_PARSED];
    size_t parsed_next;
    prompt_memo memo;
    int idle;                                /* the loop's idle source, -1: none */
    struct sim_call *pending, *pending_tail; /* calls whose answer is not made yet */
} sim_provider;

typedef struct sim_call {
    sim_provider *p;
    llm_call *call;
    llm_timer *timer;
    char *text;   /* the answer, NULL until made */
    size_t len;   /* of text */
    bool is_data; /* text is also the answer's JSON data */
    size_t sent;
    int64_t started;
    struct sim_call *prev, *next; /* in p->pending while listed */
    bool listed;
    ap_status failed; /* making the answer failed (out of memory) */
} sim_call;

static int64_t env_int(const char *name, int64_t dflt)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        return dflt;
    char *end = NULL;
    long long x = strtoll(v, &end, 10);
    return (end != v && *end == '\0' && x >= 0) ? x : dflt;
}

/* The simulated provider's config keys (sim_check refuses any other). */
static const llm_cfg_int sim_ints[] = {
    {"latency_ms", 0, 0, 600000},
    {"token_ms", 0, 0, 60000},
    {"seed", 0, 0, INT64_C(9007199254740992)},
};
static const char *const sim_strings[] = {"type", "model"};

static bool sim_idle(llm_loop *loop, void *ud);

static ap_status sim_create(llm_loop *loop, const cJSON *cfg, void **self, ap_err *err)
{
    sim_provider *p = calloc(1, sizeof *p);
    if (p == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    p->loop = loop;
    p->idle = llm_loop_idle_add(loop, sim_idle, p);
    p->latency_ms = env_int("ASKPANEL_SIM_LATENCY_MS", llm_cfg_int_value(cfg, &sim_ints[0]));
    p->token_ms = env_int("ASKPANEL_SIM_TOKEN_MS", llm_cfg_int_value(cfg, &sim_ints[1]));
    p->seed = (uint64_t)llm_cfg_int_value(cfg, &sim_ints[2]);
    const char *log_path = getenv("ASKPANEL_SIM_CALL_LOG");
    if (log_path != NULL && *log_path != '\0')
        p->call_log = strdup(log_path);
    *self = p;
    return AP_OK;
}

static void sim_destroy(void *self)
{
    sim_provider *p = self;
    if (p == NULL)
        return;
    llm_loop_idle_remove(p->loop, p->idle);
    free(p->call_log);
    free(p->memo.prompt);
    for (size_t i = 0; i < SIM_PARSED; i++) {
        free(p->parsed_text[i]);
        cJSON_Delete(p->parsed[i]);
    }
    free(p);
}

static void pending_unlink(sim_call *sc)
{
    if (!sc->listed)
        return;
    sim_provider *p = sc->p;
    if (sc->prev != NULL)
        sc->prev->next = sc->next;
    else
        p->pending = sc->next;
    if (sc->next != NULL)
        sc->next->prev = sc->prev;
    else
        p->pending_tail = sc->prev;
    sc->prev = sc->next = NULL;
    sc->listed = false;
}

static void sim_call_free(sim_call *sc)
{
    pending_unlink(sc);
    free(sc->text);
    free(sc);
}

static void log_call(const sim_provider *p, const llm_request *req)
{
    char hash[IDS_SHA256_HEX_LEN + 1];
    ids_sha256_hex(req->prompt, strlen(req->prompt), hash);
    char line[256];
    int n = snprintf(line, sizeof line, "%.40s %.16s\n", req->expert_id, hash);
    int fd = open(p->call_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    ssize_t w = write(fd, line, (size_t)n);
    (void)w; /* a test aid: a failed write shows up as a wrong count */
    close(fd);
}

static void sim_finish(sim_call *sc)
{
    const llm_request *req = llm_call_request(sc->call);
    if (sc->failed != AP_OK) {
        llm_response r = {.status = sc->failed,
                          .provider = "simulated",
                          .attempts = 1,
                          .latency_ms = llm_loop_now_ms() - sc->started,
                          .error = "out of memory"};
        llm_call_finish(sc->call, &r);
        sim_call_free(sc);
        return;
    }
    if (sc->p->call_log != NULL)
        log_call(sc->p, req);
    const char *model = req->model != NULL ? req->model : "simulated-1";
    llm_response r = {
        .status = AP_OK,
        .text = sc->text,
        .data_json = sc->is_data ? sc->text : NULL,
        .prompt_tokens =
            (int64_t)((strlen(req->prompt) + (req->system ? strlen(req->system) : 0)) / 4 + 1),
        .completion_tokens = (int64_t)(sc->len / 4 + 1),
        .provider = "simulated",
        .model = model,
        .attempts = 1,
        .latency_ms = llm_loop_now_ms() - sc->started,
    };
    llm_call_finish(sc->call, &r);
    sim_call_free(sc);
}

static ap_status make_answer(sim_call *sc);

static void sim_tick(llm_loop *loop, void *ud)
{
    sim_call *sc = ud;
    sc->timer = NULL;
    if (make_answer(sc) != AP_OK) {
        sim_finish(sc);
        return;
    }
    const llm_request *req = llm_call_request(sc->call);
    size_t len = sc->len;
    if (req->stream && sc->p->token_ms == 0) {
        /* Without a token delay the whole answer is there at once, and goes out as one delta,
         * as a provider sends what it has in one chunk: pieces of the same instant would only
         * be merged again on their way to the subscribers. */
        if (len > 0)
            llm_call_delta(sc->call, sc->text, len);
        sc->sent = len;
    } else if (req->stream) {
        size_t n = len - sc->sent < SIM_CHUNK ? len - sc->sent : SIM_CHUNK;
        /* never split a UTF-8 sequence between two deltas */
        while (sc->sent + n < len && ((unsigned char)sc->text[sc->sent + n] & 0xc0) == 0x80)
            n++;
        if (n > 0)
            llm_call_delta(sc->call, sc->text + sc->sent, n);
        sc->sent += n;
        if (sc->sent < len) {
            sc->timer = llm_loop_timer_add(loop, sc->p->token_ms, sim_tick, sc);
            if (sc->timer != NULL)
                return;
        }
    }
    sim_finish(sc);
}

/* text parsed as JSON into *out (NULL when it does not parse), through the provider's cache (a
 * provider lives on one loop thread). The tree stays valid until the next call that does not
 * name it as keep. */
static void cached_parse(sim_provider *p, const char *text, const cJSON *keep, const cJSON **out,
                         ap_err *err)
{
    /* lengths first: the texts of one panel's experts mostly differ in length */
    size_t len = strlen(text);
    for (size_t i = 0; i < SIM_PARSED; i++) {
        if (p->parsed_text[i] != NULL && p->parsed_len[i] == len &&
            memcmp(p->parsed_text[i], text, len) == 0) {
            *out = p->parsed[i];
            return;
        }
    }
    size_t slot = p->parsed_next;
    if (keep != NULL && p->parsed[slot] == keep)
        slot = (slot + 1) % SIM_PARSED;
    p->parsed_next = (slot + 1) % SIM_PARSED;
    free(p->parsed_text[slot]);
    cJSON_Delete(p->parsed[slot]);
    ap_err inner = {0};
    p->parsed[slot] = jsonx_parse(text, len, 32, &inner);
    /* Without the copy (or the tree) the slot stays unmatched; the tree still serves now. */
    p->parsed_text[slot] = p->parsed[slot] != NULL ? strdup(text) : NULL;
    p->parsed_len[slot] = len;
    if (p->parsed[slot] == NULL)
        ap_err_set(err, AP_INVALID, "%s", inner.msg);
    *out = p->parsed[slot];
}

/* Makes the call's answer unless it has one: AP_OK, or AP_NOMEM (kept in sc->failed; the schema
 * parsed when the call started, so memory is all that can be short). */
static ap_status make_answer(sim_call *sc)
{
    if (sc->text != NULL || sc->failed != AP_OK)
        return sc->failed;
    pending_unlink(sc);
    sim_provider *p = sc->p;
    const llm_request *req = llm_call_request(sc->call);
    const cJSON *schema = NULL, *expert = NULL;
    if (req->schema_json != NULL)
        cached_parse(p, req->schema_json, NULL, &schema, NULL);
    /* An unreadable expert answers with defaults, as it always did. */
    if (req->expert_json != NULL)
        cached_parse(p, req->expert_json, schema, &expert, NULL);
    ap_err err = {0};
    if ((req->schema_json != NULL && schema == NULL) ||
        simulate(req, expert, schema, p->seed, &p->memo, &sc->text, &sc->is_data, &err) != AP_OK)
        return sc->failed = AP_NOMEM;
    sc->len = strlen(sc->text);
    return AP_OK;
}

/* An answer is made while its latency runs, when the loop has nothing else to do (a remote
 * model's work costs the engine nothing meanwhile), or at the latest when it is due. */
static bool sim_idle(llm_loop *loop, void *ud)
{
    (void)loop;
    sim_provider *p = ud;
    if (p->pending != NULL)
        make_answer(p->pending);
    return p->pending != NULL;
}

static ap_status sim_start(void *self, llm_call *call, ap_err *err)
{
    sim_provider *p = self;
    const llm_request *req = llm_call_request(call);
    if (req->schema_json != NULL) {
        const cJSON *schema = NULL;
        ap_err inner = {0};
        cached_parse(p, req->schema_json, NULL, &schema, &inner);
        if (schema == NULL)
            return ap_err_set(err, AP_INVALID, "the answer schema is not valid JSON: %s",
                              inner.msg);
    }
    sim_call *sc = calloc(1, sizeof *sc);
    if (sc == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    sc->p = p;
    sc->call = call;
    sc->started = llm_loop_now_ms();
    if (p->latency_ms > 0 && p->idle >= 0) {
        sc->prev = p->pending_tail;
        if (p->pending_tail != NULL)
            p->pending_tail->next = sc;
        else
            p->pending = sc;
        p->pending_tail = sc;
        sc->listed = true;
        llm_loop_idle_more(p->loop, p->idle);
    } else if (make_answer(sc) != AP_OK) {
        sim_call_free(sc);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    sc->timer = llm_loop_timer_add(p->loop, p->latency_ms, sim_tick, sc);
    if (sc->timer == NULL) {
        sim_call_free(sc);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    llm_call_set_data(call, sc);
    return AP_OK;
}

static void sim_cancel(void *self, llm_call *call)
{
    sim_provider *p = self;
    sim_call *sc = llm_call_data(call);
    if (sc == NULL)
        return;
    llm_loop_timer_cancel(p->loop, sc->timer);
    sim_call_free(sc);
}

static ap_status sim_check(const cJSON *cfg, const char *name, ap_err *err)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, cfg)
    {
        ap_status rc = llm_cfg_member(m, name, sim_ints, sizeof sim_ints / sizeof sim_ints[0],
                                      sim_strings, sizeof sim_strings / sizeof sim_strings[0], err);
        if (rc == AP_NOTFOUND)
            return llm_cfg_unknown(m, name, err);
        if (rc != AP_OK)
            return rc;
    }
    return AP_OK;
}

const llm_provider_ops llm_simulated_ops = {
    .name = "simulated",
    .create = sim_create,
    .check = sim_check,
    .destroy = sim_destroy,
    .start = sim_start,
    .cancel = sim_cancel,
};
