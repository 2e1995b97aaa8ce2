// Activations, forward and backward: one thread per element (n of them, any shape flattened),
// grid-stride loops, float32 data, the size as long long. The cache of each forward is its
// output, which is all the backward needs.

// Numerically stable logistic function: exp of a non-positive number only (as numpy_ops).
__device__ __forceinline__ float stable_sigmoid(float x)
{
    const float e = expf(-fabsf(x));
    return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

// out = max(x, 0), written x * (x > 0) as numpy_ops does, so a NaN stays a NaN.
extern "C" __global__ void relu_forward(const float* __restrict__ x, float* __restrict__ out, long long n)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)blockDim.x * gridDim.x) {
        out[e] = x[e] * (float)(x[e] > 0.0f);
    }
}

// dx = dout where the forward output is positive (x > 0), else 0: the gradient at 0 is 0.
extern "C" __global__ void relu_backward(const float* __restrict__ dout, const float* __restrict__ out,
                                         float* __restrict__ dx, long long n)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)blockDim.x * gridDim.x) {
        dx[e] = dout[e] * (float)(out[e] > 0.0f);
    }
}

extern "C" __global__ void tanh_forward(const float* __restrict__ x, float* __restrict__ out, long long n)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)blockDim.x * gridDim.x) {
        out[e] = tanhf(x[e]);
    }
}

// dx = dout (1 - y^2), y = tanh(x) the forward output.
extern "C" __global__ void tanh_backward(const float* __restrict__ dout, const float* __restrict__ out,
                                         float* __restrict__ dx, long long n)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)blockDim.x * gridDim.x) {
        dx[e] = dout[e] * (1.0f - out[e] * out[e]);
    }
}

extern "C" __global__ void sigmoid_forward(const float* __restrict__ x, float* __restrict__ out, long long n)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)blockDim.x * gridDim.x) {
        out[e] = stable_sigmoid(x[e]);
    }
}

// dx = dout y (1 - y), y = sigmoid(x) the forward output.
extern "C" __global__ void sigmoid_backward(const float* __restrict__ dout, const float* __restrict__ out,
                                            float* __restrict__ dx, long long n)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)blockDim.x * gridDim.x) {
        dx[e] = dout[e] * out[e] * (1.0f - out[e]);
    }
}

// One Adam step on element e of w, m, v (numpy_ops.adam_update), shared by the two kernels below.
// c1 = 1 / (1 - beta1^t), c2 = 1 / (1 - beta2^t): the bias corrections, computed on the host.
// The arithmetic is in float like the NumPy reference on float32 arrays.
__device__ __forceinline__ void adam_element(float* w, const float* g, float* m, float* v, long long e, double lr,
                                             double beta1, double beta2, double eps, double c1, double c2)
{
    const float ge = g[e];
    const float me = (float)beta1 * m[e] + (float)(1.0 - beta1) * ge;
    const float ve = (float)beta2 * v[e] + (float)(1.0 - beta2) * ge * ge;
    m[e] = me;
    v[e] = ve;
    w[e] -= (float)lr * (me * (float)c1) / (sqrtf(ve * (float)c2) + (float)eps);
}

// One Adam step, in place on w, m, v; one thread per element.
extern "C" __global__ void adam_update(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ m,
                                       float* __restrict__ v, double lr, double beta1, double beta2, double eps,
                                       double c1, double c2, long long n)
{
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)blockDim.x * gridDim.x)
        adam_element(w, g, m, v, e, lr, beta1, beta2, eps, c1, c2);
}

// One plain SGD step (Algorithm 1: W <- W - lr dL/dW), in place on w; one thread per element.
// In float like framepred.sgd_update on float32 arrays (lr rounded to float, then the product).
extern "C" __global__ void sgd_update(float* __restrict__ w, const float* __restrict__ g, double lr, long long n)
{
    const float lr_f = (float)lr;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)blockDim.x * gridDim.x)
        w[e] -= lr_f * g[e];
}

// ---- the optimiser on many tensors in one launch (framepred.sgd_update / adam_update: a network's
// parameters). `table` (int64) holds, for `count` tensors laid end to end in the index space:
//   offsets[0..count]   element offsets, offsets[0] = 0, offsets[count] = the total;
//   then one column of `count` device addresses per array (w, g, and for Adam m, v).
// One thread per element of all the tensors together: element e is element e - offsets[i] of
// tensor i, offsets[i] <= e < offsets[i + 1], found by bisection. Each element is updated by the
// formula of the one-tensor kernel above, so the results are those of one launch per tensor.

__device__ __forceinline__ long long tensor_of(const long long* offsets, long long count, long long e)
{
    long long lo = 0, hi = count;                 // offsets[lo] <= e < offsets[hi]
    while (hi - lo > 1) {
        const long long mid = lo + (hi - lo) / 2;
        if (e < offsets[mid]) hi = mid; else lo = mid;
    }
    return lo;
}

extern "C" __global__ void sgd_update_many(const long long* __restrict__ table, long long count, double lr)
{
    const long long* offsets = table;
    const long long* w_at = table + count + 1;
    const long long* g_at = w_at + count;
    const float lr_f = (float)lr;
    const long long total = offsets[count];
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const long long i = tensor_of(offsets, count, e), j = e - offsets[i];
        float* w = (float*)w_at[i];
        const float* g = (const float*)g_at[i];
        w[j] -= lr_f * g[j];
    }
}

extern "C" __global__ void adam_update_many(const long long* __restrict__ table, long long count, double lr,
                                            double beta1, double beta2, double eps, double c1, double c2)
{
    const long long* offsets = table;
    const long long* w_at = table + count + 1;
    const long long* g_at = w_at + count;
    const long long* m_at = g_at + count;
    const long long* v_at = m_at + count;
    const long long total = offsets[count];
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const long long i = tensor_of(offsets, count, e);
        adam_element((float*)w_at[i], (const float*)g_at[i], (float*)m_at[i], (float*)v_at[i], e - offsets[i],
                     lr, beta1, beta2, eps, c1, c2);
    }
}

// Temporal averaging of a network's weights (numpy_ops.ema_update_many): avg <- beta avg + (1 - beta) w
// on every element of the `count` tensors of `table` (columns: avg, w), one launch for them all.
extern "C" __global__ void ema_update_many(const long long* __restrict__ table, long long count, double beta)
{
    const long long* offsets = table;
    const long long* avg_at = table + count + 1;
    const long long* w_at = avg_at + count;
    const float keep = (float)beta, take = (float)(1.0 - beta);
    const long long total = offsets[count];
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)blockDim.x * gridDim.x) {
        const long long i = tensor_of(offsets, count, e), j = e - offsets[i];
        float* avg = (float*)avg_at[i];
        avg[j] = keep * avg[j] + take * ((const float*)w_at[i])[j];
    }
}
