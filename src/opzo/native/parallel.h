/* The parallel loop of opzo's native kernels: [0, n) cut into one contiguous range per
 * thread (range starts are multiples of `align`), run with OpenMP. Built with -fopenmp, the
 * library shares the OpenMP runtime torch has already loaded (same soname, libgomp.so.1), so
 * its threads are torch's own pool: already running, never competing with it. Built without
 * OpenMP it runs serially. The split never changes a result: every kernel computes element i
 * from (inputs at i, i) alone. */
#ifndef OPZO_PARALLEL_H
#define OPZO_PARALLEL_H

#include <stdint.h>

typedef void (*opzo_range_fn)(void *ctx, int64_t begin, int64_t end);

/* Run fn over [0, n) on up to `threads` threads, never giving a thread fewer than
 * `min_per_thread` elements. */
static void opzo_parallel_for(int64_t n, int64_t align, int64_t min_per_thread, int threads,
                              opzo_range_fn fn, void *ctx) {
    if (min_per_thread < 1) min_per_thread = 1;
    if ((int64_t)threads > n / min_per_thread) threads = (int)(n / min_per_thread);
    if (threads <= 1) {
        fn(ctx, 0, n);
        return;
    }
    int64_t per = (n + threads - 1) / threads;
    per = (per + align - 1) / align * align;
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) {
        const int64_t b = (int64_t)t * per;
        if (b < n) fn(ctx, b, b + per < n ? b + per : n);
    }
}

#endif
