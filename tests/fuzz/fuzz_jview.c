/* Fuzz target: jview never accepts what cJSON rejects, never reads past the text, and every
 * lookup on an accepted document stays inside it. */
#include "core/jsonx.h"
#include "core/jview.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Visits every value: strings decode, numbers parse, indexes and keys resolve. */
static void walk(const jview *v, int i, int depth)
{
    char out[64];
    switch (jview_type_of(v, i)) {
    case JVIEW_STRING:
        if (jview_string(v, i, out, sizeof out) < strlen(out))
            abort();
        break;
    case JVIEW_NUMBER:
        (void)jview_number(v, i, 0);
        break;
    case JVIEW_ARRAY:
        for (uint32_t k = 0; k < jview_count(v, i) && depth < 80; k++)
            walk(v, jview_index(v, i, k), depth + 1);
        break;
    case JVIEW_OBJECT: {
        uint32_t key = (uint32_t)i + 1;
        for (uint32_t k = 0; k < jview_count(v, i) && depth < 80; k++) {
            jview_string(v, (int)key, out, sizeof out);
            if (strlen(out) < sizeof out - 1 && jview_get(v, i, out) < 0)
                abort();
            walk(v, (int)key + 1, depth + 1);
            key = v->tok[key + 1].next;
        }
        break;
    }
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a private copy of exactly size bytes, so reading past it is caught */
    char *text = malloc(size > 0 ? size : 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    jview v;
    if (jview_parse(&v, text, size, 64, NULL) == AP_OK) {
        cJSON *ref = jsonx_parse(text, size, 64, NULL);
        if (ref == NULL)
            abort();
        cJSON_Delete(ref);
        walk(&v, 0, 0);
    }
    jview_free(&v);
    free(text);
    return 0;
}
