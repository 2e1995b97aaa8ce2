// Losses: each kernel writes the per-element terms of the mean and the gradient; the mean itself is
// a CuPy reduction (term.mean(), or term.sum() of terms already divided) in cupy_ops.py. One thread per element, grid-stride loops,
// float32 data, sizes and the integer exponents (p, alpha) as long long. gdl_loss_terms, whose
// index arithmetic divides, also has a 32-bit twin gdl_loss_terms_i32 (sizes as int; see conv.cu).
//
// |.| has its kink at 0, where the gradient is taken as 0 (sign(0) = 0), as in numpy_ops.

__device__ __forceinline__ float sign_of(float v)
{
    return (float)(v > 0.0f) - (float)(v < 0.0f);
}

// Numerically stable logistic function (the same as elementwise.cu's).
__device__ __forceinline__ float stable_sigmoid(float x)
{
    const float e = expf(-fabsf(x));
    return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

// L_p, p in {1, 2}: one thread per element e of pred (n in all).
// term = |d|^p and grad = d|d|^p / d pred / n, d = pred - target.
extern "C" __global__ void lp_loss_terms(const float* __restrict__ pred, const float* __restrict__ target,
                                         float* __restrict__ term, float* __restrict__ grad,
                                         long long n, long long p)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)blockDim.x * gridDim.x) {
        const float d = pred[e] - target[e];
        if (p == 1) {
            term[e] = fabsf(d);
            grad[e] = sign_of(d) / (float)n;
        } else {
            term[e] = d * d;
            grad[e] = 2.0f * d / (float)n;
        }
    }
}

// GDL over one neighbour pair (earlier pixel 0, later pixel 1 along an axis) whose mean runs over
// `count` pairs: r = |t1 - t0| - |p1 - p0| and the derivative of |r|^alpha / count with respect to
// gp = p1 - p0, i.e. dr * (-sign(gp)), dr = sign(r) / count (alpha 1) or 2 r / count (alpha 2).
template <typename I>
__device__ __forceinline__ float gdl_pair_term(float p0, float p1, float t0, float t1, I alpha)
{
    const float r = fabsf(t1 - t0) - fabsf(p1 - p0);
    return alpha == 1 ? fabsf(r) : r * r;
}

template <typename I>
__device__ __forceinline__ float gdl_pair_dgp(float p0, float p1, float t0, float t1, I alpha, I count)
{
    const float gp = p1 - p0;
    const float r = fabsf(t1 - t0) - fabsf(gp);
    const float dr = alpha == 1 ? sign_of(r) / (float)count : 2.0f * r / (float)count;
    return -dr * sign_of(gp);
}

// GDL, its terms and its gradient in one launch: one thread per pixel (b, ch, i, j) of the
// (n, c, h, w) images. Terms: the vertical pair ending at the pixel (rows i-1, i), when i > 0, goes
// to term[(bc (h-1) + i-1) w + j] divided by count_v, the number of vertical pairs; the horizontal
// pair ending at it (columns j-1, j), when j > 0, to term[count_v + (bc h + i)(w-1) + j-1] divided
// by count_h; so the loss, the two means' sum, is the sum of term (one reduction). Gradient: a
// gather over the (up to) four pairs the pixel belongs to: + dgp of the pair where it is the later
// pixel, - dgp where it is the earlier one; vertical pairs first, then horizontal (numpy_ops' order
// of accumulation).
template <typename I>
__device__ __forceinline__ void gdl_loss_terms_body(const float* __restrict__ pred, const float* __restrict__ target,
                                                    float* __restrict__ term, float* __restrict__ dpred,
                                                    I n, I c, I h, I w, I alpha)
{
    const I count_v = n * c * (h - 1) * w, count_h = n * c * h * (w - 1);
    const I total = n * c * h * w;
    for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (I)blockDim.x * gridDim.x) {
        const I j = e % w, i = (e / w) % h, bc = e / (w * h);
        if (i > 0)
            term[(bc * (h - 1) + i - 1) * w + j] =
                gdl_pair_term<I>(pred[e - w], pred[e], target[e - w], target[e], alpha) / (float)count_v;
        if (j > 0)
            term[count_v + (bc * h + i) * (w - 1) + j - 1] =
                gdl_pair_term<I>(pred[e - 1], pred[e], target[e - 1], target[e], alpha) / (float)count_h;
        float g = 0.0f;
        if (i > 0)     g += gdl_pair_dgp<I>(pred[e - w], pred[e], target[e - w], target[e], alpha, count_v);
        if (i < h - 1) g -= gdl_pair_dgp<I>(pred[e], pred[e + w], target[e], target[e + w], alpha, count_v);
        if (j > 0)     g += gdl_pair_dgp<I>(pred[e - 1], pred[e], target[e - 1], target[e], alpha, count_h);
        if (j < w - 1) g -= gdl_pair_dgp<I>(pred[e], pred[e + 1], target[e], target[e + 1], alpha, count_h);
        dpred[e] = g;
    }
}

extern "C" __global__ void gdl_loss_terms(const float* __restrict__ pred, const float* __restrict__ target,
                                          float* __restrict__ term, float* __restrict__ dpred,
                                          long long n, long long c, long long h, long long w,
                                          long long alpha)
{
    gdl_loss_terms_body<long long>(pred, target, term, dpred, n, c, h, w, alpha);
}

extern "C" __global__ void gdl_loss_terms_i32(const float* __restrict__ pred, const float* __restrict__ target,
                                              float* __restrict__ term, float* __restrict__ dpred,
                                              int n, int c, int h, int w, int alpha)
{
    gdl_loss_terms_body<int>(pred, target, term, dpred, n, c, h, w, alpha);
}

// Binary cross-entropy on logits: one thread per logit e (n in all).
// term = max(z, 0) - z t + log(1 + exp(-|z|)) (finite for any z), grad = (sigmoid(z) - t) / n.
// The target is read at t[e * t_step]: t_step = 0 for one target shared by all logits, 1 for
// one target per logit.
extern "C" __global__ void bce_logits_terms(const float* __restrict__ z, const float* __restrict__ t,
                                            long long t_step, float* __restrict__ term,
                                            float* __restrict__ grad, long long n)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)blockDim.x * gridDim.x) {
        const float ze = z[e], te = t[e * t_step];
        term[e] = fmaxf(ze, 0.0f) - ze * te + log1pf(expf(-fabsf(ze)));
        grad[e] = (stable_sigmoid(ze) - te) / (float)n;
    }
}
