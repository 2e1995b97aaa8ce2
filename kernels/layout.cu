// Layout changes around the GEMMs, the bias, and channel concatenation.
//
// "rows" is the GEMM layout, channel-major: (C, N*HW), row ch, column b*HW + p (the convolution's
// W @ cols, see conv.cu; a fully connected layer's W @ x^T, HW = 1). "nchw" is the image layout
// (N, C, HW), HW = H*W. Between the two, a channel's N*HW values move as N runs of HW contiguous
// floats, so with one thread per element and p fastest, consecutive threads read and write
// consecutive addresses on both sides (coalesced), except across a run's end (and at HW = 1,
// where the kernels are a plain (C, N) <-> (N, C) transpose).
//
// All kernels: float32 data, one thread per OUTPUT element, grid-stride loops. Each is a template
// on the index type I with two entry points, `name` (sizes as long long) and `name_i32` (sizes as
// int), because 32-bit division and modulo are several times cheaper on a GPU than 64-bit ones;
// cupy_ops._index_args picks `name_i32` only when every index formed stays below 2^31 (conv.cu).

// rows -> nchw, adding the bias of each channel, then, if relu != 0, the ReLU that follows the layer
// (relu_forward's x * (x > 0)): one thread per element of out (N*C*HW), in out's order.
// Conv forward: W @ cols lands in rows layout. FC forward (hw = 1): out = (W @ x^T)^T + b.
template <typename I>
__device__ __forceinline__ void rows_to_nchw_bias_body(const float* __restrict__ rows, const float* __restrict__ bias,
                                                       float* __restrict__ out, I n, I c, I hw, I relu)
{
    const I total = n * c * hw;
    for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (I)blockDim.x * gridDim.x) {
        const I p = e % hw, ch = (e / hw) % c, b = e / (hw * c);
        const float v = rows[(ch * n + b) * hw + p] + bias[ch];
        out[e] = relu ? v * (float)(v > 0.0f) : v;
    }
}

extern "C" __global__ void rows_to_nchw_bias(const float* __restrict__ rows, const float* __restrict__ bias,
                                             float* __restrict__ out, long long n, long long c, long long hw,
                                             long long relu)
{
    rows_to_nchw_bias_body<long long>(rows, bias, out, n, c, hw, relu);
}

extern "C" __global__ void rows_to_nchw_bias_i32(const float* __restrict__ rows, const float* __restrict__ bias,
                                                 float* __restrict__ out, int n, int c, int hw, int relu)
{
    rows_to_nchw_bias_body<int>(rows, bias, out, n, c, hw, relu);
}

// dout taken back through the ReLU of the forward whose output was `out` (relu_backward's
// dout * (out > 0)), or dout itself when relu == 0 (out is then not read).
template <typename I>
__device__ __forceinline__ float through_relu(const float* x, const float* out, I i, I relu)
{
    return relu ? x[i] * (float)(out[i] > 0.0f) : x[i];
}

// nchw -> rows: one thread per element of rows (C*N*HW), in rows' order. Conv backward turns dout
// into the GEMM layout with it, first taking it back through the layer's ReLU if relu != 0 (see
// through_relu; out: the forward's output, in x's layout). fc backward: hw = 1.
template <typename I>
__device__ __forceinline__ float nchw_at_row(const float* __restrict__ x, const float* __restrict__ out,
                                             I r, I n, I c, I hw, I relu)
{
    const I p = r % hw, b = (r / hw) % n, ch = r / (hw * n);
    return through_relu<I>(x, out, (b * c + ch) * hw + p, relu);
}

template <typename I>
__device__ __forceinline__ void nchw_to_rows_body(const float* __restrict__ x, const float* __restrict__ out,
                                                  float* __restrict__ rows, I n, I c, I hw, I relu)
{
    const I total = c * n * hw;
    for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (I)blockDim.x * gridDim.x)
        rows[e] = nchw_at_row<I>(x, out, e, n, c, hw, relu);
}

extern "C" __global__ void nchw_to_rows(const float* __restrict__ x, const float* __restrict__ out,
                                        float* __restrict__ rows, long long n, long long c, long long hw,
                                        long long relu)
{
    nchw_to_rows_body<long long>(x, out, rows, n, c, hw, relu);
}

extern "C" __global__ void nchw_to_rows_i32(const float* __restrict__ x, const float* __restrict__ out,
                                            float* __restrict__ rows, int n, int c, int hw, int relu)
{
    nchw_to_rows_body<int>(x, out, rows, n, c, hw, relu);
}

// nchw_to_rows and the bias gradient of a layer in one launch: db[ch] = the sum of x's channel
// ch over the batch and the pixels (numpy_ops.conv2d_backward's sums of D over its pixels). Threads
// 0 .. C-1 (first, so that their longer loops start early) each sum one channel, in order (samples,
// then pixels; a double accumulator); the next C*N*HW threads transpose as nchw_to_rows does.
// A db thread reads x (through the ReLU), not the rows it equals: other threads of this launch
// write those, and nothing orders them before it (no grid-wide sync in one launch). Its walk is
// still sequential memory, N runs of HW contiguous floats (its rows' row, taken from x), so each
// cache line it loads serves its next loads; only fc layers (HW = 1) step C floats at a time.
template <typename I>
__device__ __forceinline__ void nchw_to_rows_bias_grad_body(const float* __restrict__ x,
                                                            const float* __restrict__ out,
                                                            float* __restrict__ rows, float* __restrict__ db,
                                                            I n, I c, I hw, I relu)
{
    const I total = c + c * n * hw;
    for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (I)blockDim.x * gridDim.x) {
        if (e < c) {
            double sum = 0.0;
            for (I b = 0; b < n; ++b)
                for (I p = 0; p < hw; ++p)
                    sum += through_relu<I>(x, out, (b * c + e) * hw + p, relu);
            db[e] = (float)sum;
        } else {
            rows[e - c] = nchw_at_row<I>(x, out, e - c, n, c, hw, relu);
        }
    }
}

extern "C" __global__ void nchw_to_rows_bias_grad(const float* __restrict__ x, const float* __restrict__ out,
                                                  float* __restrict__ rows, float* __restrict__ db,
                                                  long long n, long long c, long long hw, long long relu)
{
    nchw_to_rows_bias_grad_body<long long>(x, out, rows, db, n, c, hw, relu);
}

extern "C" __global__ void nchw_to_rows_bias_grad_i32(const float* __restrict__ x, const float* __restrict__ out,
                                                      float* __restrict__ rows, float* __restrict__ db,
                                                      int n, int c, int hw, int relu)
{
    nchw_to_rows_bias_grad_body<int>(x, out, rows, db, n, c, hw, relu);
}

// Copy `count` channels between two nchw images that share N and HW: channels src_off.. of src
// (which has c_src channels) go to channels dst_off.. of dst (c_dst channels). One thread per copied
// element (N*count*HW). Concat forward copies each input into its slice of the output; concat
// backward copies each slice of dout out into its own gradient.
template <typename I>
__device__ __forceinline__ void copy_channels_body(const float* __restrict__ src, float* __restrict__ dst,
                                                   I n, I count, I hw, I c_src, I src_off, I c_dst, I dst_off)
{
    const I total = n * count * hw;
    for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (I)blockDim.x * gridDim.x) {
        const I p = e % hw, ch = (e / hw) % count, b = e / (hw * count);
        dst[(b * c_dst + dst_off + ch) * hw + p] = src[(b * c_src + src_off + ch) * hw + p];
    }
}

extern "C" __global__ void copy_channels(const float* __restrict__ src, float* __restrict__ dst,
                                         long long n, long long count, long long hw,
                                         long long c_src, long long src_off,
                                         long long c_dst, long long dst_off)
{
    copy_channels_body<long long>(src, dst, n, count, hw, c_src, src_off, c_dst, dst_off);
}

extern "C" __global__ void copy_channels_i32(const float* __restrict__ src, float* __restrict__ dst,
                                             int n, int count, int hw, int c_src, int src_off,
                                             int c_dst, int dst_off)
{
    copy_channels_body<int>(src, dst, n, count, hw, c_src, src_off, c_dst, dst_off);
}

// Concatenation of two nchw images along the channels, in one launch (concat_forward of two inputs:
// G's [X_k, u_k(Y_hat_(k-1))], D's [X_k, Y_k]): out (N, ca + cb, HW) takes channels 0..ca-1 from a
// (N, ca, HW) and the next cb from b (N, cb, HW). One thread per element of out.
template <typename I>
__device__ __forceinline__ void concat_channels2_body(const float* __restrict__ a, const float* __restrict__ b,
                                                      float* __restrict__ out, I n, I ca, I cb, I hw)
{
    const I c = ca + cb, total = n * c * hw;
    for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (I)blockDim.x * gridDim.x) {
        const I p = e % hw, ch = (e / hw) % c, s = e / (hw * c);
        out[e] = ch < ca ? a[(s * ca + ch) * hw + p] : b[(s * cb + ch - ca) * hw + p];
    }
}

extern "C" __global__ void concat_channels2(const float* __restrict__ a, const float* __restrict__ b,
                                            float* __restrict__ out, long long n, long long ca, long long cb,
                                            long long hw)
{
    concat_channels2_body<long long>(a, b, out, n, ca, cb, hw);
}

extern "C" __global__ void concat_channels2_i32(const float* __restrict__ a, const float* __restrict__ b,
                                                float* __restrict__ out, int n, int ca, int cb, int hw)
{
    concat_channels2_body<int>(a, b, out, n, ca, cb, hw);
}
