#include "llm/cfg.h"

#include "core/jsonx.h"

#include <math.h>
#include <string.h>

ap_status llm_cfg_member(const cJSON *m, const char *name, const llm_cfg_int *ints, size_t n_ints,
                         const char *const *strings, size_t n_strings, ap_err *err)
{
    for (size_t i = 0; i < n_ints; i++) {
        if (strcmp(ints[i].key, m->string) != 0)
            continue;
        double v = m->valuedouble;
        if (!cJSON_IsNumber(m) || !isfinite(v) || v != floor(v) || v < (double)ints[i].lo ||
            v > (double)ints[i].hi)
            return ap_err_set(err, AP_INVALID,
                              "llm.providers.%.40s.%s must be a whole number from %lld to %lld",
                              name, m->string, (long long)ints[i].lo, (long long)ints[i].hi);
        return AP_OK;
    }
    for (size_t i = 0; i < n_strings; i++) {
        if (strcmp(strings[i], m->string) != 0)
            continue;
        if (!cJSON_IsString(m))
            return ap_err_set(err, AP_INVALID, "llm.providers.%.40s.%s must be a string", name,
                              m->string);
        return AP_OK;
    }
    return AP_NOTFOUND;
}

ap_status llm_cfg_unknown(const cJSON *m, const char *name, ap_err *err)
{
    return ap_err_set(err, AP_INVALID, "llm.providers.%.40s: unknown key '%.60s'", name, m->string);
}

int64_t llm_cfg_int_value(const cJSON *cfg, const llm_cfg_int *rule)
{
    double v = jsonx_number(cfg, rule->key, (double)rule->dflt);
    if (!isfinite(v) || v < (double)rule->lo || v > (double)rule->hi)
        return rule->dflt;
    return (int64_t)v;
}
