// Convolution: im2col and its adjoint col2im (the GEMM between them is cuBLAS, via cupy.matmul).
//
// Layout, identical to numpy_ops.im2col: cols is (N*Ho*Wo, C*k*k), row n*Ho*Wo + y*Wo + x holds
// the window whose top-left corner is (y, x) in the padded image, column c*k*k + i*k + j holds
// x_padded[n, c, y + i, x + j]. Ho = H + 2 pad - k + 1, Wo = W + 2 pad - k + 1 (stride 1).
//
// All kernels: float32 data, one thread per OUTPUT element, grid-stride loops (thread t of a grid
// of T threads handles elements t, t + T, t + 2T, ...), so any grid covers any size. No shared
// memory, no __syncthreads, no atomics.
//
// Index type: each kernel is written once, as a template on the index type I, with two entry
// points: `name` (sizes as long long) and `name_i32` (sizes as int). A 64-bit division or modulo
// is a long instruction sequence on a GPU, a 32-bit one a few instructions, and the index
// arithmetic here is mostly divisions. cupy_ops._index_args launches `name_i32` only when every
// index the kernel forms, and the grid-stride loop's last step past its total, stays below 2^31.

// im2col: one thread per element of cols (N*Ho*Wo*C*k*k of them). Pixels of the zero padding
// read as 0.
template <typename I>
__device__ __forceinline__ void im2col_body(const float* __restrict__ x, float* __restrict__ cols,
                                            I n, I c, I h, I w, I k, I pad)
{
    const I ho = h + 2 * pad - k + 1, wo = w + 2 * pad - k + 1;
    const I ckk = c * k * k;
    const I total = n * ho * wo * ckk;
    for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (I)blockDim.x * gridDim.x) {
        const I row = e / ckk, col = e % ckk;
        const I b = row / (ho * wo), y = (row / wo) % ho, x0 = row % wo;
        const I ch = col / (k * k), i = (col / k) % k, j = col % k;
        const I yy = y + i - pad, xx = x0 + j - pad;   // position in the unpadded image
        cols[e] = (yy >= 0 && yy < h && xx >= 0 && xx < w) ? x[((b * c + ch) * h + yy) * w + xx] : 0.0f;
    }
}

extern "C" __global__ void im2col(const float* __restrict__ x, float* __restrict__ cols,
                                  long long n, long long c, long long h, long long w,
                                  long long k, long long pad)
{
    im2col_body<long long>(x, cols, n, c, h, w, k, pad);
}

extern "C" __global__ void im2col_i32(const float* __restrict__ x, float* __restrict__ cols,
                                      int n, int c, int h, int w, int k, int pad)
{
    im2col_body<int>(x, cols, n, c, h, w, k, pad);
}

// col2im: one thread per element of dx (N*C*H*W of them). A gather, so no atomics and a fixed
// summation order (taps i, then j, as numpy_ops.col2im): thread (b, ch, yy, xx) adds the cols entry
// of every window (y, x0) = (yy + pad - i, xx + pad - j) that covers the pixel.
// cols may hold c_from channels more, before dx's C: dx is then the adjoint for channels
// c_from .. c_from + C - 1 of cols alone (conv2d_backward's dx_from: the gradient of the input
// channels after its data channels, without copying the weight's slice for them).
template <typename I>
__device__ __forceinline__ void col2im_body(const float* __restrict__ cols, float* __restrict__ dx,
                                            I n, I c, I h, I w, I k, I pad, I c_from)
{
    const I ho = h + 2 * pad - k + 1, wo = w + 2 * pad - k + 1;
    const I ckk = (c_from + c) * k * k;
    const I total = n * c * h * w;
    for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (I)blockDim.x * gridDim.x) {
        const I xx = e % w, yy = (e / w) % h, ch = (e / (w * h)) % c, b = e / (w * h * c);
        float sum = 0.0f;
        for (I i = 0; i < k; ++i) {
            const I y = yy + pad - i;
            if (y < 0 || y >= ho) continue;
            for (I j = 0; j < k; ++j) {
                const I x0 = xx + pad - j;
                if (x0 < 0 || x0 >= wo) continue;
                sum += cols[((b * ho + y) * wo + x0) * ckk + ((c_from + ch) * k + i) * k + j];
            }
        }
        dx[e] = sum;
    }
}

extern "C" __global__ void col2im(const float* __restrict__ cols, float* __restrict__ dx,
                                  long long n, long long c, long long h, long long w,
                                  long long k, long long pad, long long c_from)
{
    col2im_body<long long>(cols, dx, n, c, h, w, k, pad, c_from);
}

extern "C" __global__ void col2im_i32(const float* __restrict__ cols, float* __restrict__ dx,
                                      int n, int c, int h, int w, int k, int pad, int c_from)
{
    col2im_body<int>(cols, dx, n, c, h, w, k, pad, c_from);
}
