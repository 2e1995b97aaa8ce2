// Convolution: im2col and its adjoint col2im (the GEMMs between them are cuBLAS, via cupy.matmul).
//
// Layout, channel-major (the fast CPU backend's, = numpy_ops.im2col(...).T): cols is
// (C*k*k, N*Ho*Wo); row c*k*k + i*k + j holds tap (i, j) of channel c, column n*Ho*Wo + y*Wo + x
// the window whose top-left corner is (y, x) in the padded image: cols[c*k*k + i*k + j, n*Ho*Wo +
// y*Wo + x] = x_padded[n, c, y + i, x + j]. Ho = H + 2 pad - k + 1, Wo = W + 2 pad - k + 1 (stride 1).
// Why this way round: with the pixel index fastest, neighbouring threads of both kernels touch
// neighbouring x of the image and neighbouring columns of cols, so a warp's loads and stores are
// coalesced (the pixel-major layout put neighbouring threads C*k*k floats apart in cols).
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

// im2col: one thread per element of cols (C*k*k*N*Ho*Wo of them), in cols' order, so the column
// (the pixel x) is fastest: consecutive threads read consecutive pixels of one image row and write
// consecutive floats. Pixels of the zero padding read as 0.
template <typename I>
__device__ __forceinline__ void im2col_body(const float* __restrict__ x, float* __restrict__ cols,
                                            I n, I c, I h, I w, I k, I pad)
{
    const I ho = h + 2 * pad - k + 1, wo = w + 2 * pad - k + 1;
    const I pixels = n * ho * wo;
    const I total = c * k * k * pixels;
    for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (I)blockDim.x * gridDim.x) {
        const I row = e / pixels, col = e % pixels;
        const I ch = row / (k * k), i = (row / k) % k, j = row % k;
        const I b = col / (ho * wo), y = (col / wo) % ho, x0 = col % wo;
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

// col2im: one thread per element of dx (N*C*H*W of them, xx fastest). A gather, so no atomics and
// a fixed summation order (taps i, then j, as numpy_ops.col2im): thread (b, ch, yy, xx) adds the
// cols entry of every window (y, x0) = (yy + pad - i, xx + pad - j) that covers the pixel. For one
// tap, consecutive threads (xx) read consecutive columns x0 of one row of cols: coalesced.
// cols may hold c_from channels more, before dx's C (rows 0 .. c_from*k*k - 1): dx is then the
// adjoint for channels c_from .. c_from + C - 1 of cols alone (conv2d_backward's dx_from: the
// gradient of the input channels after its data channels, without copying the weight's slice).
template <typename I>
__device__ __forceinline__ void col2im_body(const float* __restrict__ cols, float* __restrict__ dx,
                                            I n, I c, I h, I w, I k, I pad, I c_from)
{
    const I ho = h + 2 * pad - k + 1, wo = w + 2 * pad - k + 1;
    const I pixels = n * ho * wo;
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
                sum += cols[(((c_from + ch) * k + i) * k + j) * pixels + (b * ho + y) * wo + x0];
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
