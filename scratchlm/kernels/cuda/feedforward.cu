// The feed-forward's elementwise passes around its GEMMs, for CuPy (loaded by scratchlm/kernels/cuda/ops.py).
// The same as scratchlm/kernels/numba/layernorm.py's bias_relu / relu_backward, one thread per element of (M, F):
//
//   bias_relu       z <- max(z + b, 0)            (after the GEMM z = x W1)
//   relu_backward   dh <- h > 0 ? dh : 0          (db1 = sum over rows of dh is a CuPy sum)

template <typename T>
__device__ void bias_relu(T* z, const T* b, long long n, int F) {
    long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (e >= n) return;
    T x = z[e] + b[e % F];
    z[e] = x > T(0) ? x : T(0);
}

template <typename T>
__device__ void relu_backward(T* dh, const T* h, long long n) {
    long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (e >= n) return;
    if (!(h[e] > T(0))) dh[e] = T(0);
}

extern "C" __global__ void bias_relu_f32(float* z, const float* b, long long n, int F) { bias_relu<float>(z, b, n, F); }
extern "C" __global__ void bias_relu_f64(double* z, const double* b, long long n, int F) { bias_relu<double>(z, b, n, F); }
extern "C" __global__ void relu_backward_f32(float* dh, const float* h, long long n) { relu_backward<float>(dh, h, n); }
extern "C" __global__ void relu_backward_f64(double* dh, const double* h, long long n) { relu_backward<double>(dh, h, n); }
