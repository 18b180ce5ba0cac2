/* Fuzz target: the OpenAI stream decoder, for the property in stream_fuzz.h. */
#include "stream_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return stream_fuzz_one(&stream_api_openai, data, size);
}
