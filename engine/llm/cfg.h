/* cfg.h - checking and reading a provider's object of the llm config (for the provider files).
 *
 * Each provider declares its keys in tables; the same tables refuse a config that has them
 * wrong (a typo, a wrong type, a value out of range) and give the values to read. */
#ifndef AP_LLM_CFG_H
#define AP_LLM_CFG_H

#include "core/status.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* A whole-number key of a provider's config: its default and bounds. */
typedef struct llm_cfg_int {
    const char *key;
    int64_t dflt, lo, hi;
} llm_cfg_int;

/* Checks member m of provider name's config against the whole-number keys ints[0..n_ints) and
 * the string keys strings[0..n_strings): AP_OK when it is one of them with the right type and
 * bounds, AP_INVALID (err says which) when it is one of them and wrong, AP_NOTFOUND (err
 * untouched) when it is none of them. Borrowed. */
ap_status llm_cfg_member(const cJSON *m, const char *name, const llm_cfg_int *ints, size_t n_ints,
                         const char *const *strings, size_t n_strings, ap_err *err);

/* The unknown-key error for member m of provider name's config. */
ap_status llm_cfg_unknown(const cJSON *m, const char *name, ap_err *err);

/* The value of rule's key in cfg (may be NULL): its default when absent or out of bounds. */
int64_t llm_cfg_int_value(const cJSON *cfg, const llm_cfg_int *rule);

#endif
