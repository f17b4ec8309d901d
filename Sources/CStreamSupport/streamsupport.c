#define XXH_INLINE_ALL
#include <xxhash.h>
#include "cstreamsupport.h"

/* Defined in xxh3_avx2.c, compiled for AVX2. */
void css_xxh3_update_avx2(XXH3_state_t *state, const void *data, size_t length);

struct css_xxh3_state { XXH3_state_t state; };

css_xxh3_state *css_xxh3_create(void) { return (css_xxh3_state *)XXH3_createState(); }
void css_xxh3_free(css_xxh3_state *state) { XXH3_freeState(&state->state); }
void css_xxh3_reset(css_xxh3_state *state, uint64_t seed) { XXH3_64bits_reset_withSeed(&state->state, seed); }
uint64_t css_xxh3_digest(const css_xxh3_state *state) { return XXH3_64bits_digest(&state->state); }

void css_xxh3_update(css_xxh3_state *state, const void *data, size_t length) {
    static int hasAVX2 = -1;
    if (hasAVX2 < 0) hasAVX2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    if (hasAVX2) css_xxh3_update_avx2(&state->state, data, length);
    else XXH3_64bits_update(&state->state, data, length);
}
