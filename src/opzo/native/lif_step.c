/* One time step of a layer of discrete LIF neurons, fused: the potential, the spikes, the
 * node perturbation, the dropout mask and the local derivative in one pass over memory
 * (OPZO paper section 3.1 eq. 1, section 4.4 and eq. 7). Per neuron i (flattened (B, n)):
 *
 *   I    = current[i] (+ alpha z[i]                if the noise is added before the neuron)
 *   u'   = lam u[i] + I - lam V_th s[i]             (subtractive reset)
 *        = lam u[i] + I - lam u[i] s[i]             (reset to zero)
 *   s'   = 1 if u' > V_th else 0
 *   x    = (s' (+ alpha z[i] if after the neuron)) * mask[i]
 *   dpsi = mask[i] * gain * psi~(u')               (only if asked)
 *
 * psi~ is the surrogate derivative without its constant factor `gain`:
 *   sigmoid (a):       psi~ = sigma(v)(1 - sigma(v)), v = (u' - V_th)/a, gain = 1/a
 *   fast sigmoid (k):  psi~ = 1 / (k |u' - V_th| + 1)^2,                 gain = 1
 *
 * The forward values (u', s', x) are computed with the same operations and roundings as
 * torch's CPU kernels for the unfused ops (a + alpha*b as one fused multiply-add, as ATen's
 * vectorised add does), so they equal the unfused path bit for bit; dpsi differs from
 * torch's sigmoid by float rounding only. Work is done in blocks of BLOCK neurons through
 * local buffers so that the compiler vectorises the arithmetic without alias checks. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "parallel.h"

#define BLOCK 256

enum { SURR_NONE = 0, SURR_SIGMOID = 1, SURR_FAST_SIGMOID = 2 };

/* e^y for y <= 0: y = n ln 2 + r with |r| <= ln(2)/2, e^r by its Taylor series to r^7
 * (relative error below 3e-8), times 2^n built in the exponent bits; 0 below y = -80
 * (e^-80 < 2e-35), so that no product with it is a subnormal number (slow on x86). */
static inline float exp_nonpositive(float y) {
    const int tiny = y < -80.0f;
    y = tiny ? -80.0f : y;
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    const float nf = (y * 1.44269504f + shifter) - shifter;
    const float r = (y - nf * 0.693145752f) - nf * 1.42860677e-6f;
    const float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6.0f + r * (1.0f / 24.0f +
                    r * (1.0f / 120.0f + r * (1.0f / 720.0f + r * (1.0f / 5040.0f)))))));
    const int32_t n = (int32_t)nf;
    uint32_t bits = (uint32_t)(n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return tiny ? 0.0f : p * scale;
}

struct lif_args {
    int64_t rows, cols;
    const float *current, *u, *s, *z, *mask;
    int64_t z_ld; /* row stride of z (it may be a column block of a wider draw) */
    float *u_out, *s_out, *out, *dpsi;
    float alpha, lam, v_th, gain, surr_param;
    int noise_before, reset_zero, surrogate;
};

static void lif_block(const struct lif_args *a, int64_t start, int len) {
    float cur[BLOCK], uo[BLOCK], so[BLOCK], zz[BLOCK], mk[BLOCK], un[BLOCK], sn[BLOCK],
        xo[BLOCK], dp[BLOCK];
    memcpy(cur, a->current + start, (size_t)len * sizeof(float));
    memcpy(uo, a->u + start, (size_t)len * sizeof(float));
    memcpy(so, a->s + start, (size_t)len * sizeof(float));
    if (a->z) { /* gather z row by row: the block may cross a row boundary */
        int done = 0;
        while (done < len) {
            const int64_t i = start + done;
            const int64_t row = i / a->cols, col = i % a->cols;
            int take = (int)(a->cols - col);
            if (take > len - done) take = len - done;
            memcpy(zz + done, a->z + row * a->z_ld + col, (size_t)take * sizeof(float));
            done += take;
        }
    }
    if (a->mask) memcpy(mk, a->mask + start, (size_t)len * sizeof(float));
    const float lam = a->lam, v_th = a->v_th, alpha = a->alpha;
    const float reset = -(lam * v_th);
    if (a->z && a->noise_before)
        for (int j = 0; j < len; j++) cur[j] = fmaf(zz[j], alpha, cur[j]);
    for (int j = 0; j < len; j++) un[j] = fmaf(uo[j], lam, cur[j]);
    if (a->reset_zero)
        for (int j = 0; j < len; j++) un[j] = un[j] + ((-lam) * uo[j]) * so[j];
    else
        for (int j = 0; j < len; j++) un[j] = fmaf(so[j], reset, un[j]);
    for (int j = 0; j < len; j++) sn[j] = un[j] > v_th ? 1.0f : 0.0f;
    if (a->z && !a->noise_before)
        for (int j = 0; j < len; j++) xo[j] = fmaf(zz[j], alpha, sn[j]);
    else
        for (int j = 0; j < len; j++) xo[j] = sn[j];
    if (a->mask)
        for (int j = 0; j < len; j++) xo[j] = xo[j] * mk[j];
    if (a->out) memcpy(a->out + start, xo, (size_t)len * sizeof(float));
    if (a->dpsi) {
        const float gain = a->gain, p = a->surr_param;
        if (a->surrogate == SURR_SIGMOID) {
            /* sigma(v)(1 - sigma(v)) = e / (1 + e)^2 with e = exp(-|v|): no overflow */
            for (int j = 0; j < len; j++) {
                const float v = (un[j] - v_th) * p;
                const float e = exp_nonpositive(-fabsf(v));
                const float d = 1.0f + e;
                dp[j] = gain * (e / (d * d));
            }
        } else {
            for (int j = 0; j < len; j++) {
                const float d = p * fabsf(un[j] - v_th) + 1.0f;
                dp[j] = gain / (d * d);
            }
        }
        if (a->mask)
            for (int j = 0; j < len; j++) dp[j] = dp[j] * mk[j];
        memcpy(a->dpsi + start, dp, (size_t)len * sizeof(float));
    }
    memcpy(a->u_out + start, un, (size_t)len * sizeof(float));
    memcpy(a->s_out + start, sn, (size_t)len * sizeof(float));
}

static void lif_range(void *ctx, int64_t begin, int64_t end) {
    const struct lif_args *a = (const struct lif_args *)ctx;
    for (int64_t i = begin; i < end; i += BLOCK)
        lif_block(a, i, (int)(end - i < BLOCK ? end - i : BLOCK));
}

/* The fused step on rows x cols neurons (all arrays contiguous (rows, cols) except z, whose
 * rows are z_ld apart). z, mask and dpsi may be NULL (no noise, no dropout, no derivative);
 * out may be NULL when z and mask are (x is then s'). u_out may be the same array as current
 * (it is read before it is written). */
void opzo_lif_step(int64_t rows, int64_t cols, const float *current, const float *u,
                   const float *s, const float *z, int64_t z_ld, float alpha,
                   int noise_before, const float *mask, float lam, float v_th, int reset_zero,
                   int surrogate, float surr_param, float gain, float *u_out, float *s_out,
                   float *out, float *dpsi, int threads) {
    struct lif_args a = {rows, cols, current, u, s, z, mask, z_ld, u_out, s_out, out, dpsi,
                         alpha, lam, v_th, gain, surr_param, noise_before, reset_zero,
                         dpsi ? surrogate : SURR_NONE};
    opzo_parallel_for(rows * cols, BLOCK, 16384, threads, lif_range, &a);
}

