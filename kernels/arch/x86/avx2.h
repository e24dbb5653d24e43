/* AVX2 helpers shared by arch/x86/quants.c and gemv.c: the ggml block layouts as vectors. */
#pragma once

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static inline __m256i loadu(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* 16 packed bytes -> 32 quants in [0, 15]: low nibbles (elements 0..15), then high (16..31) */
static inline __m256i nibbles(const uint8_t *qs) {
    const __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    return _mm256_and_si256(_mm256_srlv_epi64(t, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F));
}

/* byte j = 0xFF if bit j of the little-endian u32 at p is set, else 0 */
static inline __m256i bytes_from_bits_32(const uint8_t *p) {
    uint32_t x32;
    memcpy(&x32, p, 4);
    const __m256i shuf = _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101,
                                            0x0202020202020202, 0x0303030303030303);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x32), shuf);
    /* byte k of each 8 has every bit but bit k set: all ones afterwards iff bit k was set */
    const __m256i others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    return _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1));
}
