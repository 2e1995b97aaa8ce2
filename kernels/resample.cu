// Resampling of (N, C, H, W) images: average-pool down by f (SPEC's d_k), nearest up by f (u_k),
// 2x2 max pooling (D's scale 4). Forward and backward.
//
// All kernels: float32 data, one thread per OUTPUT element, grid-stride loops; every backward is a
// gather (no atomics). n, c, h, w are always the sizes of the LARGER image (the pooling input, the
// upsampling output), so the smaller one is (h / f, w / f).
//
// Each kernel is a template on the index type I with two entry points, `name` (sizes as long long)
// and `name_i32` (sizes as int), because 32-bit division and modulo are several times cheaper on a
// GPU than 64-bit ones; cupy_ops._index_args picks `name_i32` only when every index formed stays
// below 2^31 (see conv.cu).

// Each pixel (b, ch, i, j) of the (h / f, w / f) image out is the sum of its f x f block of the
// (h, w) image src, divided by `divisor`: one thread per output element. avgpool's forward (the
// block's mean) and upsample's backward (the block's sum, divisor 1) are both this.
template <typename I>
__device__ __forceinline__ void sum_blocks_body(const float* __restrict__ src, float* __restrict__ out,
                                                I n, I c, I h, I w, I f, float divisor)
{
    const I ho = h / f, wo = w / f;
    const I total = n * c * ho * wo;
    for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (I)blockDim.x * gridDim.x) {
        const I j = e % wo, i = (e / wo) % ho, bc = e / (wo * ho);   // bc = b * c + ch
        const float* block = src + (bc * h + i * f) * w + j * f;
        float sum = 0.0f;
        for (I a = 0; a < f; ++a)
            for (I d = 0; d < f; ++d)
                sum += block[a * w + d];
        out[e] = sum / divisor;
    }
}

// avgpool forward: out (n, c, h / f, w / f), the mean of each f x f block of x.
extern "C" __global__ void avgpool_forward(const float* __restrict__ x, float* __restrict__ out,
                                           long long n, long long c, long long h, long long w, long long f)
{
    sum_blocks_body<long long>(x, out, n, c, h, w, f, (float)(f * f));
}

extern "C" __global__ void avgpool_forward_i32(const float* __restrict__ x, float* __restrict__ out,
                                               int n, int c, int h, int w, int f)
{
    sum_blocks_body<int>(x, out, n, c, h, w, f, (float)(f * f));
}

// Each pixel (b, ch, y, x) of an (h, w) image takes the value of pixel (y / f, x / f) of the
// (h / f, w / f) image src, divided by `divisor`: one thread per output element. avgpool's backward
// (its block's dout over f^2) and upsample's forward (nearest neighbour, divisor 1) are both this.
template <typename I>
__device__ __forceinline__ void replicate_blocks_body(const float* __restrict__ src, float* __restrict__ out,
                                                      I n, I c, I h, I w, I f, float divisor)
{
    const I hs = h / f, ws = w / f;
    const I total = n * c * h * w;
    for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (I)blockDim.x * gridDim.x) {
        const I x0 = e % w, y = (e / w) % h, bc = e / (w * h);
        out[e] = src[(bc * hs + y / f) * ws + x0 / f] / divisor;
    }
}

// avgpool backward: dx (n, c, h, w) from dout (n, c, h / f, w / f).
extern "C" __global__ void avgpool_backward(const float* __restrict__ dout, float* __restrict__ dx,
                                            long long n, long long c, long long h, long long w, long long f)
{
    replicate_blocks_body<long long>(dout, dx, n, c, h, w, f, (float)(f * f));
}

extern "C" __global__ void avgpool_backward_i32(const float* __restrict__ dout, float* __restrict__ dx,
                                                int n, int c, int h, int w, int f)
{
    replicate_blocks_body<int>(dout, dx, n, c, h, w, f, (float)(f * f));
}

// upsample forward: out (n, c, h, w) from x (n, c, h / f, w / f).
extern "C" __global__ void upsample_forward(const float* __restrict__ x, float* __restrict__ out,
                                            long long n, long long c, long long h, long long w, long long f)
{
    replicate_blocks_body<long long>(x, out, n, c, h, w, f, 1.0f);
}

extern "C" __global__ void upsample_forward_i32(const float* __restrict__ x, float* __restrict__ out,
                                                int n, int c, int h, int w, int f)
{
    replicate_blocks_body<int>(x, out, n, c, h, w, f, 1.0f);
}

// upsample backward: dx (n, c, h / f, w / f), the sum of dout over each f x f block.
extern "C" __global__ void upsample_backward(const float* __restrict__ dout, float* __restrict__ dx,
                                             long long n, long long c, long long h, long long w, long long f)
{
    sum_blocks_body<long long>(dout, dx, n, c, h, w, f, 1.0f);
}

extern "C" __global__ void upsample_backward_i32(const float* __restrict__ dout, float* __restrict__ dx,
                                                 int n, int c, int h, int w, int f)
{
    sum_blocks_body<int>(dout, dx, n, c, h, w, f, 1.0f);
}

// maxpool2 forward: one thread per output element (b, ch, i, j) of (h / 2, w / 2); an odd last row
// or column is never read. Writes the max of the 2x2 window and, in arg, its position q = 2 a + d
// (row-major in the window). The first maximum wins a tie, and a NaN wins over numbers, as
// numpy's argmax.
template <typename I>
__device__ __forceinline__ void maxpool2_forward_body(const float* __restrict__ x, float* __restrict__ out,
                                                      int* __restrict__ arg, I n, I c, I h, I w)
{
    const I ho = h / 2, wo = w / 2;
    const I total = n * c * ho * wo;
    for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (I)blockDim.x * gridDim.x) {
        const I j = e % wo, i = (e / wo) % ho, bc = e / (wo * ho);
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

extern "C" __global__ void maxpool2_forward(const float* __restrict__ x, float* __restrict__ out,
                                            int* __restrict__ arg,
                                            long long n, long long c, long long h, long long w)
{
    maxpool2_forward_body<long long>(x, out, arg, n, c, h, w);
}

extern "C" __global__ void maxpool2_forward_i32(const float* __restrict__ x, float* __restrict__ out,
                                                int* __restrict__ arg, int n, int c, int h, int w)
{
    maxpool2_forward_body<int>(x, out, arg, n, c, h, w);
}

// maxpool2 backward: one thread per dx element (b, ch, y, x): dout of its window if it is the
// window's argmax, else 0 (also 0 in a dropped odd last row or column).
template <typename I>
__device__ __forceinline__ void maxpool2_backward_body(const float* __restrict__ dout, const int* __restrict__ arg,
                                                       float* __restrict__ dx, I n, I c, I h, I w)
{
    const I ho = h / 2, wo = w / 2;
    const I total = n * c * h * w;
    for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (I)blockDim.x * gridDim.x) {
        const I x0 = e % w, y = (e / w) % h, bc = e / (w * h);
        float g = 0.0f;
        if (y < 2 * ho && x0 < 2 * wo) {
            const I win = (bc * ho + y / 2) * wo + x0 / 2;
            if (arg[win] == (int)(2 * (y % 2) + x0 % 2)) g = dout[win];
        }
        dx[e] = g;
    }
}

extern "C" __global__ void maxpool2_backward(const float* __restrict__ dout, const int* __restrict__ arg,
                                             float* __restrict__ dx,
                                             long long n, long long c, long long h, long long w)
{
    maxpool2_backward_body<long long>(dout, arg, dx, n, c, h, w);
}

extern "C" __global__ void maxpool2_backward_i32(const float* __restrict__ dout, const int* __restrict__ arg,
                                                 float* __restrict__ dx, int n, int c, int h, int w)
{
    maxpool2_backward_body<int>(dout, arg, dx, n, c, h, w);
}
