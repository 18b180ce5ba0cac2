/* gen.h - mockllm's deterministic answers: persona-aware prose and schema-valid JSON.
 *
 * The same (seed, model, system, messages, schema) always gives the same answer. The persona
 * comes from the system prompt and biases prose, enum choices, numbers and booleans, so
 * different experts disagree in a stable way. Feedback-aware like the simulated provider:
 * "Group median: N" pulls fields named *estimate* toward N and raises *confidence*;
 * "Options: a | b | c" supplies the choices of a "position" string without enum. */
#ifndef MOCKLLM_GEN_H
#define MOCKLLM_GEN_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* What an answer depends on; all borrowed. */
typedef struct mock_prompt {
    uint64_t seed;
    const char *model;
    const char *system;   /* "" when none */
    const char *messages; /* every message as "role: content\n", for the hash */
    const char *last_user;
    const cJSON *schema; /* NULL: prose */
} mock_prompt;

/* FNV-1a over s, continuing from h. */
uint64_t mock_hash(uint64_t h, const char *s);

/* Writes the answer: prose of about `words` words, or one JSON value valid for the schema.
 * Returns a malloc'd NUL-terminated string (caller frees), NULL when out of memory. */
char *mock_generate(const mock_prompt *p, int words);

/* Splits text into token pieces of whole UTF-8 characters: prose at word starts, JSON every
 * few bytes. Writes up to max piece end offsets into ends; returns the piece count. */
size_t mock_tokenize(const char *text, int json, size_t *ends, size_t max);

#endif
