// Fused GRU step (Keras 3 reset_after=True), forward and backward, for CuPy (loaded by scratchlm/kernels/cuda/ops.py).
//
// The same equations and buffer conventions as scratchlm/kernels/numba/gru.py, with one
// thread per (sequence b, unit j); a step's GEMM u = h_{t-1} U (forward) or
// du_t U^T (backward) is done by cuBLAS before (after) the kernel.
// Gate blocks along the last axis of a (B, 3H): [z | r | h].
//
//   forward:   xh = table[rows[b]]  (x_t W + b_in; for dense input table = a, rows = 0..B-1)
//              uh = u_h + b_rec_h
//              z = sigma(xh_z + (u_z + b_rec_z))   r = sigma(xh_r + (u_r + b_rec_r))
//              ht = tanh(xh_h + r * uh)            h_t = z * (h_{t-1} - ht) + ht
//              masked (keep[b] == 0): h_t = h_{t-1}
//   backward:  d = (dh_rec + carry) + dy_t      (dh_rec = du_{t+1} U^T, carry from step t+1)
//              da_h = d (1 - z)(1 - ht^2)        da_z = d (h_{t-1} - ht) z(1 - z)
//              da_r = da_h uh r(1 - r)
//              a <- [da_z | da_r | da_h]         du <- [da_z | da_r | da_h r]    uh <- da_h r
//              carry <- d z                      (masked: a = du = uh = 0, carry <- d)
//   after the loop dh_0 = du_1 U^T + carry.

template <typename T>
__device__ __forceinline__ T sigmoid(T x) { return T(1) / (T(1) + exp(-x)); }

template <typename T>
__device__ void gru_forward(T* a, const T* table, const long long* rows, const T* u, const T* b_rec,
                            const T* h_prev, const bool* keep, T* h, T* uh, int B, int H) {
    long long n = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (n >= (long long)B * H) return;
    int b = n / H, j = n % H;
    T* ab = a + (long long)b * 3 * H;
    const T* xw = table + rows[b] * 3 * H;           // may be ab itself: each thread reads its entries first
    const T* ub = u + (long long)b * 3 * H;
    T xz = xw[j], xr = xw[H + j], xh = xw[2 * H + j];
    T z = sigmoid(xz + (ub[j] + b_rec[j]));
    T r = sigmoid(xr + (ub[H + j] + b_rec[H + j]));
    T v = ub[2 * H + j] + b_rec[2 * H + j];
    T ht = tanh(xh + r * v);
    ab[j] = z; ab[H + j] = r; ab[2 * H + j] = ht;
    uh[n] = v;
    h[n] = keep[b] ? z * (h_prev[n] - ht) + ht : h_prev[n];
}

template <typename T>
__device__ void gru_backward(T* a, const T* h_prev, T* uh, const T* dh_rec, const T* dy, int has_dy,
                             const bool* keep, T* carry, T* du, int B, int H) {
    long long n = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (n >= (long long)B * H) return;
    int b = n / H, j = n % H;
    T d = dh_rec[n] + carry[n];
    if (has_dy) d += dy[n];
    T* ab = a + (long long)b * 3 * H;
    T* dub = du + (long long)b * 3 * H;
    if (!keep[b]) {
        ab[j] = ab[H + j] = ab[2 * H + j] = T(0);
        dub[j] = dub[H + j] = dub[2 * H + j] = T(0);
        uh[n] = T(0);
        carry[n] = d;
        return;
    }
    T z = ab[j], r = ab[H + j], ht = ab[2 * H + j];
    T dah = d * (T(1) - z) * (T(1) - ht * ht);
    T daz = d * (h_prev[n] - ht) * z * (T(1) - z);
    T dar = dah * uh[n] * r * (T(1) - r);
    T duh = dah * r;
    ab[j] = daz; ab[H + j] = dar; ab[2 * H + j] = dah;
    dub[j] = daz; dub[H + j] = dar; dub[2 * H + j] = duh;
    uh[n] = duh;
    carry[n] = d * z;
}

#define GRU_CELL_KERNELS(T, SUFFIX)                                                                    \
    extern "C" __global__ void gru_step_forward_##SUFFIX(                                              \
        T* a, const T* table, const long long* rows, const T* u, const T* b_rec, const T* h_prev,     \
        const bool* keep, T* h, T* uh, int B, int H) {                                                 \
        gru_forward<T>(a, table, rows, u, b_rec, h_prev, keep, h, uh, B, H);                          \
    }                                                                                                  \
    extern "C" __global__ void gru_step_backward_##SUFFIX(                                             \
        T* a, const T* h_prev, T* uh, const T* dh_rec, const T* dy, int has_dy, const bool* keep,      \
        T* carry, T* du, int B, int H) {                                                               \
        gru_backward<T>(a, h_prev, uh, dh_rec, dy, has_dy, keep, carry, du, B, H);                    \
    }

GRU_CELL_KERNELS(float, f32)
GRU_CELL_KERNELS(double, f64)
