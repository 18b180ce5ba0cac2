/* simulated.h - the content of the built-in `simulated` provider, as a pure function.
 *
 * Deterministic per (seed, expert id, prompt, schema): prose in the expert's voice, or JSON
 * that validates against the schema with persona-biased choices, numbers that move toward a
 * "Group median: N" line of the prompt, and positions picked from an "Options: a | b" line.
 * See docs/scripting.md for what strategies can rely on. */
#ifndef AP_LLM_SIMULATED_H
#define AP_LLM_SIMULATED_H

#include "core/status.h"
#include "llm/llm.h"

#include <stdint.h>

/* Writes the answer to req: *text (caller frees) and, with a schema, *data_json (caller
 * frees; NULL without a schema). AP_INVALID for an unreadable schema. */
ap_status llm_simulate(const llm_request *req, uint64_t seed, char **text, char **data_json,
                       ap_err *err);

#endif
