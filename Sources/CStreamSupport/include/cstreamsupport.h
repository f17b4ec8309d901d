#ifndef CSTREAMSUPPORT_H
#define CSTREAMSUPPORT_H
#include <stddef.h>
#include <stdint.h>

/// XXH3-64 over data arriving in pieces, with AVX2 chosen at run time where the CPU has it:
/// the same values as libxxhash (whose Debian build is SSE2 only: 7 GB/s against 21 GB/s measured).
typedef struct css_xxh3_state css_xxh3_state;
css_xxh3_state *css_xxh3_create(void);
void css_xxh3_free(css_xxh3_state *state);
void css_xxh3_reset(css_xxh3_state *state, uint64_t seed);
void css_xxh3_update(css_xxh3_state *state, const void *data, size_t length);
uint64_t css_xxh3_digest(const css_xxh3_state *state);
#endif
