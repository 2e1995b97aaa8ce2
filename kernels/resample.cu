// Resampling of (N, C, H, W) images: average-pool down by f (SPEC's d_k), nearest up by f (u_k),
// 2x2 max pooling (D's scale 4). Forward and backward.
//
// All kernels: float32 data, sizes as long long, one thread per OUTPUT element, grid-stride loops;
// every backward is a gather (no atomics). n, c, h, w are always the sizes of the LARGER image
// (the pooling input, the upsampling output), so the smaller one is (h / f, w / f).

// avgpool forward: one thread per output element (b, ch, i, j), the mean of its f x f block.
extern "C" __global__ void avgpool_forward(const float* __restrict__ x, float* __restrict__ out,
                                           long long n, long long c, long long h, long long w, long long f)
{
    const long long ho = h / f, wo = w / f;
    const long long total = n * c * ho * wo;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const long long j = e % wo, i = (e / wo) % ho, bc = e / (wo * ho);   // bc = b * c + ch
        const float* block = x + (bc * h + i * f) * w + j * f;
        float sum = 0.0f;
        for (long long a = 0; a < f; ++a)
            for (long long d = 0; d < f; ++d)
                sum += block[a * w + d];
        out[e] = sum / (float)(f * f);
    }
}

// avgpool backward: one thread per dx element (b, ch, y, x): its block's dout over f^2.
extern "C" __global__ void avgpool_backward(const float* __restrict__ dout, float* __restrict__ dx,
                                            long long n, long long c, long long h, long long w, long long f)
{
    const long long ho = h / f, wo = w / f;
    const long long total = n * c * h * w;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const long long x0 = e % w, y = (e / w) % h, bc = e / (w * h);
        dx[e] = dout[(bc * ho + y / f) * wo + x0 / f] / (float)(f * f);
    }
}

// upsample forward: one thread per output element (b, ch, y, x) of the (h, w) output, copying
// input pixel (y / f, x / f).
extern "C" __global__ void upsample_forward(const float* __restrict__ x, float* __restrict__ out,
                                            long long n, long long c, long long h, long long w, long long f)
{
    const long long hi = h / f, wi = w / f;
    const long long total = n * c * h * w;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const long long x0 = e % w, y = (e / w) % h, bc = e / (w * h);
        out[e] = x[(bc * hi + y / f) * wi + x0 / f];
    }
}

// upsample backward: one thread per dx element (b, ch, i, j), the sum of dout over its f x f block.
extern "C" __global__ void upsample_backward(const float* __restrict__ dout, float* __restrict__ dx,
                                             long long n, long long c, long long h, long long w, long long f)
{
    const long long hi = h / f, wi = w / f;
    const long long total = n * c * hi * wi;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const long long j = e % wi, i = (e / wi) % hi, bc = e / (wi * hi);
        const float* block = dout + (bc * h + i * f) * w + j * f;
        float sum = 0.0f;
        for (long long a = 0; a < f; ++a)
            for (long long d = 0; d < f; ++d)
                sum += block[a * w + d];
        dx[e] = sum;
    }
}

// maxpool2 forward: one thread per output element (b, ch, i, j) of (h / 2, w / 2); an odd last row
// or column is never read. Writes the max of the 2x2 window and, in arg, its position q = 2 a + d
// (row-major in the window). The first maximum wins a tie, and a NaN wins over numbers, as
// numpy's argmax.
extern "C" __global__ void maxpool2_forward(const float* __restrict__ x, float* __restrict__ out,
                                            int* __restrict__ arg,
                                            long long n, long long c, long long h, long long w)
{
    const long long ho = h / 2, wo = w / 2;
    const long long total = n * c * ho * wo;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const long long j = e % wo, i = (e / wo) % ho, bc = e / (wo * ho);
        const float* win = x + (bc * h + 2 * i) * w + 2 * j;
        float best = win[0];
        int best_q = 0;
        for (int q = 1; q < 4; ++q) {
            const float v = win[(q / 2) * w + (q % 2)];
            if (best == best && (v > best || v != v)) {   // best is not NaN, and v beats it
                best = v;
                best_q = q;
            }
        }
        out[e] = best;
        arg[e] = best_q;
    }
}

// maxpool2 backward: one thread per dx element (b, ch, y, x): dout of its window if it is the
// window's argmax, else 0 (also 0 in a dropped odd last row or column).
extern "C" __global__ void maxpool2_backward(const float* __restrict__ dout, const int* __restrict__ arg,
                                             float* __restrict__ dx,
                                             long long n, long long c, long long h, long long w)
{
    const long long ho = h / 2, wo = w / 2;
    const long long total = n * c * h * w;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const long long x0 = e % w, y = (e / w) % h, bc = e / (w * h);
        float g = 0.0f;
        if (y < 2 * ho && x0 < 2 * wo) {
            const long long win = (bc * ho + y / 2) * wo + x0 / 2;
            if (arg[win] == (int)(2 * (y % 2) + x0 % 2)) g = dout[win];
        }
        dx[e] = g;
    }
}
