/* asan.h - what code that keeps freed memory for reuse tells AddressSanitizer.
 *
 * A free list hides a use after free from ASan: the block is still allocated as far as ASan
 * knows. Code that keeps blocks poisons them while they wait (asan_poison) and unpoisons them
 * when handed out again (asan_unpoison), so such a use is reported where it happens; without
 * ASan both do nothing. AP_ASAN is 1 in an ASan build. */
#ifndef AP_ASAN_H
#define AP_ASAN_H

#include <stddef.h>

#if defined(__SANITIZE_ADDRESS__)
#define AP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AP_ASAN 1
#endif
#endif
#ifndef AP_ASAN
#define AP_ASAN 0
#endif

#if AP_ASAN
#include <sanitizer/asan_interface.h>
#define asan_poison(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define asan_unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define asan_poison(p, n) ((void)(p), (void)(n))
#define asan_unpoison(p, n) ((void)(p), (void)(n))
#endif

#endif
