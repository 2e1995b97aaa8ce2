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
