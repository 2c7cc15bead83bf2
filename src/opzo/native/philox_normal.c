/* Standard normal float32 numbers from the Philox4x32-10 counter-based generator.
 *
 * Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3",
 * SC 2011) maps a 128-bit counter and a 64-bit key to 128 random bits in ten rounds of
 * 32x32->64-bit multiplications. Counter i gives four 32-bit words, turned into four
 * normals by the Box-Muller transform: r = sqrt(-2 ln u1), (r cos 2 pi u2, r sin 2 pi u2).
 *
 * Everything is written as straight-line loops over blocks of lanes, without calls or
 * branches, so that the compiler vectorises it: the logarithm, sine and cosine are
 * polynomials (errors below 1e-6, under float32 rounding of the result's scale).
 * Output element 4*i + j depends only on (key, i, j): the numbers do not depend
 * on the block size, the vector width or how a draw is split.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "parallel.h"

#define LANES 64

static inline float bits_to_float(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static inline uint32_t float_to_bits(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* One Philox4x32 round on the words (x0, x1, x2, x3) with round key (a, b). */
static inline void philox_round(uint32_t *x0, uint32_t *x1, uint32_t *x2, uint32_t *x3,
                                uint32_t a, uint32_t b) {
    const uint64_t p0 = (uint64_t)0xD2511F53u * *x0;
    const uint64_t p1 = (uint64_t)0xCD9E8D57u * *x2;
    const uint32_t n0 = (uint32_t)(p1 >> 32) ^ *x1 ^ a;
    const uint32_t n2 = (uint32_t)(p0 >> 32) ^ *x3 ^ b;
    *x1 = (uint32_t)p1;
    *x3 = (uint32_t)p0;
    *x0 = n0;
    *x2 = n2;
}

/* Philox4x32-10 of one counter (c0, c1, c2, c3) under key (k0, k1), into out[0..4):
 * the reference the block version below is tested against (known-answer vectors). */
void opzo_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t x0 = ctr[0], x1 = ctr[1], x2 = ctr[2], x3 = ctr[3];
    for (uint32_t r = 0; r < 10; r++)
        philox_round(&x0, &x1, &x2, &x3, key[0] + r * 0x9E3779B9u, key[1] + r * 0xBB67AE85u);
    out[0] = x0;
    out[1] = x1;
    out[2] = x2;
    out[3] = x3;
}

#if defined(__AVX512F__)
#include <immintrin.h>

/* hi and lo 32 bits of the 32x32-bit products x * m in each of 16 lanes: vpmuludq on the
 * even lanes and on the odd lanes shifted down (compilers vectorise the portable form below
 * with a slow 64x64-bit multiply instead). */
static inline void mul_hilo_16(__m512i x, __m512i m, __m512i *hi, __m512i *lo) {
    const __m512i even = _mm512_mul_epu32(x, m);
    const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(x, 32), m);
    *hi = _mm512_mask_blend_epi32((__mmask16)0xAAAA, _mm512_srli_epi64(even, 32), odd);
    *lo = _mm512_mask_blend_epi32((__mmask16)0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

/* Philox4x32-10 on LANES counters (first + lane, 0, 0, 0) with key (k0, k1): 16 counters
 * per AVX-512 register, the same words as philox_round. */
static void philox_block(uint64_t first, uint32_t k0, uint32_t k1,
                         uint32_t w0[LANES], uint32_t w1[LANES],
                         uint32_t w2[LANES], uint32_t w3[LANES]) {
    const __m512i m0 = _mm512_set1_epi32((int)0xD2511F53u);
    const __m512i m1 = _mm512_set1_epi32((int)0xCD9E8D57u);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                           15);
    for (int j = 0; j < LANES; j += 16) {
        const uint64_t c = first + (uint64_t)j;
        /* the counter's low word per lane, and its high word (carry past 2^32 per lane) */
        const __m512i low = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)c), lane);
        const __mmask16 carry = _mm512_cmplt_epu32_mask(low, _mm512_set1_epi32((int)(uint32_t)c));
        __m512i x0 = low;
        __m512i x1 = _mm512_mask_add_epi32(_mm512_set1_epi32((int)(uint32_t)(c >> 32)), carry,
                                           _mm512_set1_epi32((int)(uint32_t)(c >> 32)),
                                           _mm512_set1_epi32(1));
        __m512i x2 = _mm512_setzero_si512();
        __m512i x3 = _mm512_setzero_si512();
        for (uint32_t r = 0; r < 10; r++) {
            const __m512i a = _mm512_set1_epi32((int)(k0 + r * 0x9E3779B9u));
            const __m512i b = _mm512_set1_epi32((int)(k1 + r * 0xBB67AE85u));
            __m512i hi0, lo0, hi1, lo1;
            mul_hilo_16(x0, m0, &hi0, &lo0);
            mul_hilo_16(x2, m1, &hi1, &lo1);
            x0 = _mm512_xor_si512(_mm512_xor_si512(hi1, x1), a);
            x2 = _mm512_xor_si512(_mm512_xor_si512(hi0, x3), b);
            x1 = lo1;
            x3 = lo0;
        }
        _mm512_storeu_si512((void *)(w0 + j), x0);
        _mm512_storeu_si512((void *)(w1 + j), x1);
        _mm512_storeu_si512((void *)(w2 + j), x2);
        _mm512_storeu_si512((void *)(w3 + j), x3);
    }
}
#else
/* Philox4x32-10 on LANES counters (first + lane, 0, 0, 0) with key (k0, k1). */
static void philox_block(uint64_t first, uint32_t k0, uint32_t k1,
                         uint32_t w0[LANES], uint32_t w1[LANES],
                         uint32_t w2[LANES], uint32_t w3[LANES]) {
    for (int j = 0; j < LANES; j++) {
        const uint64_t c = first + (uint64_t)j;
        w0[j] = (uint32_t)c;
        w1[j] = (uint32_t)(c >> 32);
        w2[j] = 0u;
        w3[j] = 0u;
    }
    for (uint32_t r = 0; r < 10; r++) {
        const uint32_t a = k0 + r * 0x9E3779B9u, b = k1 + r * 0xBB67AE85u;
        for (int j = 0; j < LANES; j++)
            philox_round(&w0[j], &w1[j], &w2[j], &w3[j], a, b);
    }
}
#endif

/* A uniform number in (0, 1) from the top 24 bits: (k + 0.5) / 2^24. */
static inline float open_uniform(uint32_t w) {
    return ((float)(w >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

/* ln(x) for x in (0, 1]: x = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s),
 * s = (m - 1) / (m + 1), |s| <= 0.172, by its odd series to s^11. */
static inline float fast_log(float x) {
    uint32_t bits = float_to_bits(x);
    int32_t e = (int32_t)((bits >> 23) & 0xFFu) - 127;
    float m = bits_to_float((bits & 0x007FFFFFu) | 0x3F800000u); /* in [1, 2) */
    const int big = m > 1.41421356f;
    m = big ? 0.5f * m : m;
    e = big ? e + 1 : e;
    const float s = (m - 1.0f) / (m + 1.0f);
    const float s2 = s * s;
    const float series =
        1.0f + s2 * (1.0f / 3.0f + s2 * (1.0f / 5.0f + s2 * (1.0f / 7.0f +
        s2 * (1.0f / 9.0f + s2 * (1.0f / 11.0f)))));
    return (float)e * 0.69314718f + 2.0f * s * series;
}

/* (sin, cos) of 2 pi u for u in [0, 1): the nearest quarter turn k and a remainder angle
 * |a| <= pi/4, Taylor polynomials of sin a (to a^9) and cos a (to a^10). */
static inline void sincos_turn(float u, float *sn, float *cs) {
    const float q = 4.0f * u;
    const int k = (int)(q + 0.5f); /* 0..4, nearest quarter */
    const float a = (q - (float)k) * 1.57079633f;
    const float a2 = a * a;
    const float sa = a * (1.0f + a2 * (-1.0f / 6.0f + a2 * (1.0f / 120.0f +
                     a2 * (-1.0f / 5040.0f + a2 * (1.0f / 362880.0f)))));
    const float ca = 1.0f + a2 * (-0.5f + a2 * (1.0f / 24.0f + a2 * (-1.0f / 720.0f +
                     a2 * (1.0f / 40320.0f + a2 * (-1.0f / 3628800.0f)))));
    const int odd = k & 1;
    const float s = odd ? ca : sa;
    const float c = odd ? sa : ca;
    /* quarter k: sin(k pi/2 + a) is -s for k = 2, 3; cos is -c for k = 1, 2 */
    *sn = (k & 2) ? -s : s;
    *cs = ((k + 1) & 2) ? -c : c;
}

/* What a fill kernel needs: the output, the key, and (dropout masks) keep and scale. */
struct philox_job {
    float *out;
    uint32_t k0, k1;
    float keep, scale;
};

/* Copy the first `count` numbers of buf to out[done, ...), never past end; the new done. */
static inline int64_t emit(float *out, int64_t done, int64_t end, const float *buf,
                           int64_t count) {
    const int64_t take = end - done < count ? end - done : count;
    memcpy(out + done, buf, (size_t)take * sizeof(float));
    return done + take;
}

/* out[begin, end) of the normals (begin a multiple of 4 * LANES): element 4i + j from
 * counter i, one block of LANES counters at a time. */
static void normal_range(void *ctx, int64_t begin, int64_t end) {
    const struct philox_job *job = (const struct philox_job *)ctx;
    uint32_t w0[LANES], w1[LANES], w2[LANES], w3[LANES];
    float z[4 * LANES];
    for (int64_t done = begin; done < end;) {
        philox_block((uint64_t)(done / 4), job->k0, job->k1, w0, w1, w2, w3);
        for (int j = 0; j < LANES; j++) {
            const float r0 = sqrtf(-2.0f * fast_log(open_uniform(w0[j])));
            const float r1 = sqrtf(-2.0f * fast_log(open_uniform(w2[j])));
            float s0, c0, s1, c1;
            sincos_turn(open_uniform(w1[j]), &s0, &c0);
            sincos_turn(open_uniform(w3[j]), &s1, &c1);
            z[4 * j] = r0 * c0;
            z[4 * j + 1] = r0 * s0;
            z[4 * j + 2] = r1 * c1;
            z[4 * j + 3] = r1 * s1;
        }
        done = emit(job->out, done, end, z, 4 * LANES);
    }
}

/* Fill out[0..n) with N(0, 1) numbers from counters 0, 1, ... under key, on up to
 * `threads` threads (the numbers do not depend on the thread count). */
void opzo_philox_normal(float *out, int64_t n, uint64_t key, int threads) {
    struct philox_job job = {out, (uint32_t)key, (uint32_t)(key >> 32), 0.0f, 0.0f};
    opzo_parallel_for(n, 4 * LANES, 32768, threads, normal_range, &job);
}

/* Dropout keep-masks: out[4i + j] = scale if u < keep else 0, with u the open uniform of
 * word j of counter i under key (P(kept) = keep up to 2^-24). */
static void mask_range(void *ctx, int64_t begin, int64_t end) {
    const struct philox_job *job = (const struct philox_job *)ctx;
    const float keep = job->keep, scale = job->scale;
    uint32_t w[4][LANES];
    float m[4 * LANES];
    for (int64_t done = begin; done < end;) {
        philox_block((uint64_t)(done / 4), job->k0, job->k1, w[0], w[1], w[2], w[3]);
        for (int j = 0; j < LANES; j++)
            for (int q = 0; q < 4; q++)
                m[4 * j + q] = (float)(open_uniform(w[q][j]) < keep) * scale;
        done = emit(job->out, done, end, m, 4 * LANES);
    }
}

void opzo_philox_keep_mask(float *out, int64_t n, uint64_t key, float keep, float scale,
                           int threads) {
    struct philox_job job = {out, (uint32_t)key, (uint32_t)(key >> 32), keep, scale};
    opzo_parallel_for(n, 4 * LANES, 65536, threads, mask_range, &job);
}

/* Random signs: out[i] = +1 if bit (i mod 32) of word (i / 32) mod 4 of counter i / 128 is
 * set, else -1 (32 fair signs from each 32-bit word; Rademacher noise). */
static void sign_range(void *ctx, int64_t begin, int64_t end) {
    const struct philox_job *job = (const struct philox_job *)ctx;
    uint32_t w[4][LANES];
    float v[128 * LANES];
    for (int64_t done = begin; done < end;) { /* begin: a multiple of 128 * LANES */
        philox_block((uint64_t)(done / 128), job->k0, job->k1, w[0], w[1], w[2], w[3]);
        for (int j = 0; j < LANES; j++)
            for (int q = 0; q < 4; q++)
                for (int b = 0; b < 32; b++)
                    v[(4 * j + q) * 32 + b] = (float)((w[q][j] >> b) & 1u) * 2.0f - 1.0f;
        done = emit(job->out, done, end, v, 128 * LANES);
    }
}

void opzo_philox_signs(float *out, int64_t n, uint64_t key, int threads) {
    struct philox_job job = {out, (uint32_t)key, (uint32_t)(key >> 32), 0.0f, 0.0f};
    opzo_parallel_for(n, 128 * LANES, 65536, threads, sign_range, &job);
}
