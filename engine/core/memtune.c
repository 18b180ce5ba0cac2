#include "core/memtune.h"

#include <stdlib.h> /* defines __GLIBC__ under glibc */

#if defined(__GLIBC__)
#include <malloc.h>
#endif

void memtune_server(void)
{
#if defined(__GLIBC__)
    mallopt(M_TRIM_THRESHOLD, MEMTUNE_TRIM_BYTES);
    mallopt(M_TOP_PAD, MEMTUNE_TOP_PAD_BYTES);
#endif
}
