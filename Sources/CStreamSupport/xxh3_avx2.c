/* XXH3's streaming update compiled for AVX2; called only where the CPU has it (streamsupport.c). */
#pragma clang attribute push (__attribute__((target("avx2"))), apply_to = function)
#include <immintrin.h>
#define XXH_VECTOR 2 /* XXH_AVX2 */
#define XXH_INLINE_ALL
#include <xxhash.h>

void css_xxh3_update_avx2(XXH3_state_t *state, const void *data, size_t length) {
    XXH3_64bits_update(state, data, length);
}
#pragma clang attribute pop
