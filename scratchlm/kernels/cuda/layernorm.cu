// LayerNorm forward and backward (one pass over each row), and the decoding step's residual + bias +
// LayerNorm, for CuPy (loaded by scratchlm/kernels/cuda/ops.py). The same equations as scratchlm/kernels/numba/layernorm.py:
//
//   forward    mu = mean(x)   rstd = 1 / sqrt(mean((x - mu)^2) + eps)   y = (x - mu) rstd gamma + beta
//              (mean and rstd kept per row, nothing else)
//   backward   xhat = (x - mu) rstd   g = dy gamma
//              dx = (g - mean(g) - xhat mean(g xhat)) rstd                  (one block per row)
//              dgamma = sum_rows dy xhat   dbeta = sum_rows dy               (one thread per column)
//   residual   out = LN(x + (y + b)), nothing kept                          (one block per row)
//
// Row kernels: one block per row of x (M, D), blockDim.x a power of two (32..1024), dynamic shared
// memory 2 * blockDim.x * sizeof(T) bytes.

template <typename T>
__device__ T row_sum(T x, T* scratch) {
    int tid = threadIdx.x;
    scratch[tid] = x;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (tid < half) scratch[tid] += scratch[tid + half];
        __syncthreads();
    }
    T s = scratch[0];
    __syncthreads();
    return s;
}

// mu and rstd of row r (of length D, at x), every thread gets both.
template <typename T>
__device__ void row_moments(const T* x, int D, T eps, T* scratch, T& mu, T& rstd) {
    int tid = threadIdx.x, width = blockDim.x;
    T s = T(0);
    for (int j = tid; j < D; j += width) s += x[j];
    mu = row_sum(s, scratch) / T(D);
    T q = T(0);
    for (int j = tid; j < D; j += width) { T d = x[j] - mu; q += d * d; }
    rstd = T(1) / sqrt(row_sum(q, scratch) / T(D) + eps);
}

template <typename T>
__device__ void layernorm_forward(const T* x, const T* gamma, const T* beta, T eps, T* y, T* mean, T* rstd, int D) {
    extern __shared__ unsigned char shared_bytes[];
    T* scratch = reinterpret_cast<T*>(shared_bytes);
    long long r = blockIdx.x;
    const T* xr = x + r * D;
    T mu, rs;
    row_moments(xr, D, eps, scratch, mu, rs);
    for (int j = threadIdx.x; j < D; j += blockDim.x) y[r * D + j] = (xr[j] - mu) * rs * gamma[j] + beta[j];
    if (threadIdx.x == 0) { mean[r] = mu; rstd[r] = rs; }
}

template <typename T>
__device__ void layernorm_backward_dx(const T* x, const T* mean, const T* rstd, const T* gamma, const T* dy,
                                      T* dx, int D) {
    extern __shared__ unsigned char shared_bytes[];
    T* scratch = reinterpret_cast<T*>(shared_bytes);
    long long r = blockIdx.x;
    int tid = threadIdx.x, width = blockDim.x;
    const T* xr = x + r * D;
    const T* dyr = dy + r * D;
    T mu = mean[r], rs = rstd[r];
    T a = T(0), b = T(0);
    for (int j = tid; j < D; j += width) {
        T g = dyr[j] * gamma[j];
        a += g;
        b += g * ((xr[j] - mu) * rs);
    }
    T mg = row_sum(a, scratch) / T(D);
    T mgx = row_sum(b, scratch) / T(D);
    for (int j = tid; j < D; j += width) {
        T xhat = (xr[j] - mu) * rs;
        dx[r * D + j] = (dyr[j] * gamma[j] - mg - xhat * mgx) * rs;
    }
}

template <typename T>
__device__ void layernorm_backward_params(const T* x, const T* mean, const T* rstd, const T* dy, T* dgamma,
                                          T* dbeta, int M, int D) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= D) return;
    T g = T(0), b = T(0);
    for (long long r = 0; r < M; ++r) {
        T d = dy[r * D + j];
        g += d * ((x[r * D + j] - mean[r]) * rstd[r]);
        b += d;
    }
    dgamma[j] = g;
    dbeta[j] = b;
}

template <typename T>
__device__ void residual_layernorm(const T* x, const T* y, const T* bias, const T* gamma, const T* beta, T eps,
                                   T* out, int D) {
    extern __shared__ unsigned char shared_bytes[];
    T* scratch = reinterpret_cast<T*>(shared_bytes);
    long long r = blockIdx.x;
    T* s = out + r * D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) s[j] = x[r * D + j] + (y[r * D + j] + bias[j]);
    __syncthreads();
    T mu, rs;
    row_moments(s, D, eps, scratch, mu, rs);
    for (int j = threadIdx.x; j < D; j += blockDim.x) s[j] = (s[j] - mu) * rs * gamma[j] + beta[j];
}

#define LAYERNORM_KERNELS(T, suffix)                                                                             \
extern "C" __global__ void layernorm_forward_##suffix(const T* x, const T* gamma, const T* beta, T eps, T* y,  \
                                                      T* mean, T* rstd, int D) {                                 \
    layernorm_forward<T>(x, gamma, beta, eps, y, mean, rstd, D);                                                \
}                                                                                                                \
extern "C" __global__ void layernorm_backward_dx_##suffix(const T* x, const T* mean, const T* rstd,             \
                                                          const T* gamma, const T* dy, T* dx, int D) {           \
    layernorm_backward_dx<T>(x, mean, rstd, gamma, dy, dx, D);                                                  \
}                                                                                                                \
extern "C" __global__ void layernorm_backward_params_##suffix(const T* x, const T* mean, const T* rstd,         \
                                                              const T* dy, T* dgamma, T* dbeta, int M, int D) {  \
    layernorm_backward_params<T>(x, mean, rstd, dy, dgamma, dbeta, M, D);                                       \
}                                                                                                                \
extern "C" __global__ void residual_layernorm_##suffix(const T* x, const T* y, const T* bias, const T* gamma,  \
                                                       const T* beta, T eps, T* out, int D) {                    \
    residual_layernorm<T>(x, y, bias, gamma, beta, eps, out, D);                                                \
}

LAYERNORM_KERNELS(float, f32)
LAYERNORM_KERNELS(double, f64)
