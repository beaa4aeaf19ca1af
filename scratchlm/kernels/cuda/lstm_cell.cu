// Fused LSTM step, forward and backward, for CuPy (loaded by scratchlm/kernels/cuda/ops.py).
//
// The same equations and buffer conventions as scratchlm/kernels/numba/lstm.py, with
// one thread per (sequence b, unit j); a step's GEMM h_{t-1} U (forward) or
// dz_t U^T (backward) is done by cuBLAS before (after) the kernel.
// Gate blocks along the last axis of z (B, 4H): [i | f | g | o].
//
//   forward:   z_. = z_. + xw_.          (xw = table[rows[b]]: x_t W + b)
//              i, f, o = sigma(z_i, z_f, z_o)   g = tanh(z_g)
//              c_t = f * c_{t-1} + i * g      h_t = o * tanh(c_t)
//              masked (keep[b] == 0): c_t = c_{t-1}, h_t = h_{t-1}
//   backward:  dh_t = dz_{t+1} U^T + (1 - m_{t+1}) dh_{t+1} + dy_t
//              dc~ = dc + dh * o * (1 - tanh^2 c_t)
//              dz_i = dc~ g i(1-i)   dz_f = dc~ c_{t-1} f(1-f)
//              dz_g = dc~ i (1-g^2)  dz_o = dh tanh(c_t) o(1-o)
//              dc_{t-1} = dc~ f      (masked: dz = 0, dc unchanged)

template <typename T>
__device__ __forceinline__ T sigmoid(T x) { return T(1) / (T(1) + exp(-x)); }

template <typename T>
__device__ void step_forward(T* z, const T* table, const long long* rows, const T* c_prev,
                             const T* h_prev, const bool* keep, T* c, T* h, int B, int H) {
    long long n = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (n >= (long long)B * H) return;
    int b = n / H, j = n % H;
    T* zb = z + (long long)b * 4 * H;
    const T* xw = table + rows[b] * 4 * H;
    T i = sigmoid(zb[j] + xw[j]);
    T f = sigmoid(zb[H + j] + xw[H + j]);
    T g = tanh(zb[2 * H + j] + xw[2 * H + j]);
    T o = sigmoid(zb[3 * H + j] + xw[3 * H + j]);
    zb[j] = i; zb[H + j] = f; zb[2 * H + j] = g; zb[3 * H + j] = o;
    T cj = f * c_prev[n] + i * g;
    T hj = o * tanh(cj);
    c[n] = keep[b] ? cj : c_prev[n];
    h[n] = keep[b] ? hj : h_prev[n];
}

template <typename T>
__device__ void step_backward(T* z, const T* c_prev, const T* c, const T* dh_rec, const bool* keep_next,
                              const T* dy, int has_dy, const bool* keep, T* dh, T* dc, int B, int H) {
    long long n = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (n >= (long long)B * H) return;
    int b = n / H, j = n % H;
    T d = keep_next[b] ? dh_rec[n] : dh_rec[n] + dh[n];
    if (has_dy) d += dy[n];
    dh[n] = d;
    T* zb = z + (long long)b * 4 * H;
    if (!keep[b]) {
        zb[j] = zb[H + j] = zb[2 * H + j] = zb[3 * H + j] = T(0);
        return;
    }
    T i = zb[j], f = zb[H + j], g = zb[2 * H + j], o = zb[3 * H + j];
    T tc = tanh(c[n]);
    T dct = dc[n] + d * o * (T(1) - tc * tc);
    zb[j] = dct * g * (i * (T(1) - i));
    zb[H + j] = dct * c_prev[n] * (f * (T(1) - f));
    zb[2 * H + j] = dct * i * (T(1) - g * g);
    zb[3 * H + j] = d * tc * (o * (T(1) - o));
    dc[n] = dct * f;
}

#define LSTM_CELL_KERNELS(T, SUFFIX)                                                                   \
    extern "C" __global__ void lstm_step_forward_##SUFFIX(                                             \
        T* z, const T* table, const long long* rows, const T* c_prev, const T* h_prev,                \
        const bool* keep, T* c, T* h, int B, int H) {                                                  \
        step_forward<T>(z, table, rows, c_prev, h_prev, keep, c, h, B, H);                            \
    }                                                                                                  \
    extern "C" __global__ void lstm_step_backward_##SUFFIX(                                            \
        T* z, const T* c_prev, const T* c, const T* dh_rec, const bool* keep_next, const T* dy,       \
        int has_dy, const bool* keep, T* dh, T* dc, int B, int H) {                                    \
        step_backward<T>(z, c_prev, c, dh_rec, keep_next, dy, has_dy, keep, dh, dc, B, H);            \
    }

LSTM_CELL_KERNELS(float, f32)
LSTM_CELL_KERNELS(double, f64)
