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
 * torch's sigmoid by float rounding only. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "parallel.h"

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

/* The arguments of opzo_lif_step, grouped (mirrored field by field by the ctypes.Structure
 * LifArgs in __init__.py: change both together). Every array is float32. */
struct lif_args {
    /* geometry: the layer's rows x cols neurons (batch x neurons of one sample) */
    int64_t rows, cols;
    /* inputs, contiguous (rows, cols): the current I[t+1], the previous potential and spikes */
    const float *current, *u, *s;
    /* outputs, contiguous (rows, cols): u' (may be the same array as current), s', x (NULL
     * when z and mask are: x is then s'), dpsi (NULL: no local derivative) */
    float *u_out, *s_out, *out, *dpsi;
    /* noise z (NULL: none), its row stride (it may be a column block of a wider draw), its
     * scale alpha, and whether it is added before the neuron (1) or after it (0) */
    const float *z;
    int64_t z_ld;
    float alpha;
    int noise_before;
    /* dropout mask, contiguous (rows, cols) (NULL: none) */
    const float *mask;
    /* the neuron: leak lam, threshold v_th, reset to zero (1) or subtractive (0) */
    float lam, v_th;
    int reset_zero;
    /* the surrogate of dpsi: SURR_* code, its parameter (1/a or k) and gain (see above) */
    int surrogate;
    float surr_param, gain;
    /* threads to split the rows over (>= 1; the result does not depend on it) */
    int threads;
};

/* Rows [r0, r1) in one pass per row. NOISE (0 none, 1 after, 2 before the neuron), MASK,
 * SURR and ZERO are constants at each call site below, so every combination compiles to its
 * own branch-free loop. u_out may alias current: each element is read before it is written
 * at the same index, so the iterations are independent (omp simd). */
static inline __attribute__((always_inline)) void lif_rows(const struct lif_args *a, int64_t r0,
                                                           int64_t r1, const int NOISE,
                                                           const int MASK, const int SURR,
                                                           const int ZERO) {
    const int64_t cols = a->cols;
    const float lam = a->lam, v_th = a->v_th, alpha = a->alpha, gain = a->gain;
    const float p = a->surr_param, reset = -(lam * v_th), neg_lam = -lam;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t o = r * cols;
        const float *cur = a->current + o, *u = a->u + o, *s = a->s + o;
        const float *z = NOISE ? a->z + r * a->z_ld : 0;
        const float *mk = MASK ? a->mask + o : 0;
        float *uo = a->u_out + o, *so = a->s_out + o;
        float *xo = (NOISE || MASK) ? a->out + o : 0;
        float *dp = SURR ? a->dpsi + o : 0;
#pragma omp simd
        for (int64_t j = 0; j < cols; j++) {
            float c = cur[j];
            if (NOISE == 2) c = fmaf(z[j], alpha, c);
            float un = fmaf(u[j], lam, c);
            if (ZERO)
                un = un + (neg_lam * u[j]) * s[j];
            else
                un = fmaf(s[j], reset, un);
            const float sn = un > v_th ? 1.0f : 0.0f;
            if (NOISE || MASK) {
                float x = NOISE == 1 ? fmaf(z[j], alpha, sn) : sn;
                if (MASK) x = x * mk[j];
                xo[j] = x;
            }
            if (SURR) {
                float d;
                if (SURR == SURR_SIGMOID) {
                    /* sigma(v)(1 - sigma(v)) = e / (1 + e)^2 with e = exp(-|v|) */
                    const float e = exp_nonpositive(-fabsf((un - v_th) * p));
                    const float q = 1.0f + e;
                    d = gain * (e / (q * q));
                } else {
                    const float q = p * fabsf(un - v_th) + 1.0f;
                    d = gain / (q * q);
                }
                dp[j] = MASK ? d * mk[j] : d;
            }
            uo[j] = un;
            so[j] = sn;
        }
    }
}

#define LIF_CASE(N, M, S, Z) lif_rows(a, r0, r1, N, M, S, Z)
#define LIF_SURR(N, M, Z)                                   \
    do {                                                    \
        if (a->surrogate == SURR_SIGMOID) LIF_CASE(N, M, SURR_SIGMOID, Z);           \
        else if (a->surrogate == SURR_FAST_SIGMOID) LIF_CASE(N, M, SURR_FAST_SIGMOID, Z); \
        else LIF_CASE(N, M, SURR_NONE, Z);                  \
    } while (0)
#define LIF_MASK(N, Z)                                      \
    do {                                                    \
        if (a->mask) LIF_SURR(N, 1, Z);                     \
        else LIF_SURR(N, 0, Z);                             \
    } while (0)

static void lif_range(void *ctx, int64_t r0, int64_t r1) {
    const struct lif_args *a = (const struct lif_args *)ctx;
    const int noise = a->z ? (a->noise_before ? 2 : 1) : 0;
    if (a->reset_zero) {
        if (noise == 0) LIF_MASK(0, 1);
        else if (noise == 1) LIF_MASK(1, 1);
        else LIF_MASK(2, 1);
    } else {
        if (noise == 0) LIF_MASK(0, 0);
        else if (noise == 1) LIF_MASK(1, 0);
        else LIF_MASK(2, 0);
    }
}

/* The fused step described by *args (see struct lif_args; u_out may be the same array as
 * current: it is read before it is written). A surrogate without dpsi computes nothing. */
void opzo_lif_step(const struct lif_args *args) {
    struct lif_args a = *args;
    if (!a.dpsi) a.surrogate = SURR_NONE;
    /* split over rows; a thread needs about 16k neurons to be worth waking */
    const int64_t min_rows = a.cols > 0 ? (16384 + a.cols - 1) / a.cols : a.rows;
    opzo_parallel_for(a.rows, 1, min_rows, a.threads, lif_range, &a);
}

/* The layout of struct lif_args, for the Python side to check its mirror LifArgs against: the
 * offset of each field, in declaration order (_LIF_ARGS_ORDER in __init__.py), into
 * offsets[0..20]; returns sizeof(struct lif_args). */
int64_t opzo_lif_args_layout(int64_t *offsets) {
    const int64_t o[] = {
        offsetof(struct lif_args, rows),         offsetof(struct lif_args, cols),
        offsetof(struct lif_args, current),      offsetof(struct lif_args, u),
        offsetof(struct lif_args, s),            offsetof(struct lif_args, u_out),
        offsetof(struct lif_args, s_out),        offsetof(struct lif_args, out),
        offsetof(struct lif_args, dpsi),         offsetof(struct lif_args, z),
        offsetof(struct lif_args, z_ld),         offsetof(struct lif_args, alpha),
        offsetof(struct lif_args, noise_before), offsetof(struct lif_args, mask),
        offsetof(struct lif_args, lam),          offsetof(struct lif_args, v_th),
        offsetof(struct lif_args, reset_zero),   offsetof(struct lif_args, surrogate),
        offsetof(struct lif_args, surr_param),   offsetof(struct lif_args, gain),
        offsetof(struct lif_args, threads)};
    for (int i = 0; i < (int)(sizeof o / sizeof o[0]); i++) offsets[i] = o[i];
    return (int64_t)sizeof(struct lif_args);
}
