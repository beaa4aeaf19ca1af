// Fused causal (and padded) attention, FlashAttention's scheme, for CuPy (loaded by scratchlm/kernels/cuda/ops.py).
//
// The same function as scratchlm/kernels/numba/attention.py (read its docstring): per head,
// Sc = Q K^T * scale with masked scores replaced, never stored in global memory.
//
//   forward    one block per query row (b, n, i); keys in tiles of blockDim.x, online softmax:
//                m' = max(m, max_j Sc_j)   p_j = exp(Sc_j - m')   l = l e^{m-m'} + sum_j p_j
//                acc = acc e^{m-m'} + sum_j p_j V_j
//              o_i = acc / l, lse_i = m + log l. A row that may see no key (Keras: uniform over
//              all S keys): o_i = mean_j V_j, lse_i = +inf.
//   row_dot    D_i = sum_d dO_id O_id, one thread per row.
//   dq         one block per query row: P_ij = exp(Sc_ij - lse_i) (0 where masked or lse_i = inf),
//              dS_ij = P_ij (dO_i . V_j - D_i) scale,  dQ_i = sum_j dS_ij K_j.
//   dkdv       one block per key row (b, n, j): dV_j = sum_i P_ij dO_i (+ dO_i / S for every row i
//              with no key), dK_j = sum_i dS_ij Q_i.
// The two backward kernels each recompute P: no atomics, the same bits every run.
//
// Layout: element (b, n, l, d) of q, k, v, o, do, dq, dk, dv is at b*sb + n*sn + l*sl + d (strides in
// elements, unit stride along d); lse and D are (B, N, T) contiguous; mask is (B, T, S) contiguous bool,
// read when has_mask != 0. Launch with blockDim.x a power of two (32..1024), K <= 4 blockDim.x (the
// backward kernels keep 4 entries of a row per thread in registers), and dynamic shared memory of
// (2 K + 2 blockDim.x) * sizeof(T) bytes; row_dot with one thread per (b, n, i).

template <typename T> __device__ __forceinline__ T infinity();
template <> __device__ __forceinline__ float infinity<float>() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double infinity<double>() { return __longlong_as_double(0x7ff0000000000000LL); }

struct Strides { long long b, n, l; };

// The block's max (want_max) or sum of x over all threads; every thread gets it. scratch: blockDim.x
// entries of shared memory. Every thread of the block must call it.
template <typename T>
__device__ T block_reduce(T x, T* scratch, bool want_max) {
    int tid = threadIdx.x;
    scratch[tid] = x;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (tid < half) scratch[tid] = want_max ? max(scratch[tid], scratch[tid + half]) : scratch[tid] + scratch[tid + half];
        __syncthreads();
    }
    T result = scratch[0];
    __syncthreads();
    return result;
}

template <typename T>
__device__ T dot(const T* a, const T* b, int K) {
    T s = T(0);
    for (int d = 0; d < K; ++d) s += a[d] * b[d];
    return s;
}

template <typename T>
__device__ void flash_forward(const T* q, Strides sq, const T* k, Strides sk, const T* v, Strides sv,
                              const bool* mask, int has_mask, T scale, T* o, Strides so, T* lse,
                              int N, int T_, int S, int K) {
    extern __shared__ unsigned char shared_bytes[];
    T* shared = reinterpret_cast<T*>(shared_bytes);
    T* qi = shared;                       // (K)
    T* acc = shared + K;                  // (K)
    T* p = shared + 2 * K;                // (blockDim.x) this tile's probabilities
    T* scratch = p + blockDim.x;          // (blockDim.x)
    int i = blockIdx.x, n = blockIdx.y, b = blockIdx.z, tid = threadIdx.x, width = blockDim.x;
    const T ninf = -infinity<T>();
    const T* q_row = q + b * sq.b + n * sq.n + i * sq.l;
    for (int d = tid; d < K; d += width) { qi[d] = q_row[d]; acc[d] = T(0); }
    __syncthreads();
    const bool* mask_row = mask + ((long long)b * T_ + i) * S;
    T m = ninf, l = T(0);
    for (int j0 = 0; j0 < S; j0 += width) {
        int j = j0 + tid;
        T s = ninf;
        if (j < S && (!has_mask || mask_row[j])) s = dot(qi, k + b * sk.b + n * sk.n + j * sk.l, K) * scale;
        T m_new = max(m, block_reduce(s, scratch, true));
        if (m_new == ninf) continue;                                  // nothing visible yet (uniform: all threads)
        T alpha = m == ninf ? T(0) : exp(m - m_new);
        T pj = s == ninf ? T(0) : exp(s - m_new);
        p[tid] = pj;
        l = l * alpha + block_reduce(pj, scratch, false);             // (also syncs p)
        int tile = min(width, S - j0);
        for (int d = tid; d < K; d += width) {
            T a = acc[d] * alpha;
            for (int t = 0; t < tile; ++t) a += p[t] * v[b * sv.b + n * sv.n + (long long)(j0 + t) * sv.l + d];
            acc[d] = a;
        }
        m = m_new;
        __syncthreads();
    }
    T* o_row = o + b * so.b + n * so.n + i * so.l;
    long long r = ((long long)b * N + n) * T_ + i;
    if (l == T(0)) {                                                  // no key: Keras' uniform row
        for (int d = tid; d < K; d += width) {
            T s = T(0);
            for (int j = 0; j < S; ++j) s += v[b * sv.b + n * sv.n + (long long)j * sv.l + d];
            o_row[d] = s / T(S);
        }
        if (tid == 0) lse[r] = infinity<T>();
    } else {
        for (int d = tid; d < K; d += width) o_row[d] = acc[d] / l;
        if (tid == 0) lse[r] = m + log(l);
    }
}

template <typename T>
__device__ void row_dot(const T* a, Strides sa, const T* c, Strides sc, T* out, int B, int N, int T_, int K) {
    long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (r >= (long long)B * N * T_) return;
    int i = r % T_, n = (r / T_) % N;
    long long b = r / ((long long)T_ * N);
    out[r] = dot(a + b * sa.b + n * sa.n + i * sa.l, c + b * sc.b + n * sc.n + i * sc.l, K);
}

template <typename T>
__device__ void flash_backward_dq(const T* q, Strides sq, const T* k, Strides sk, const T* v, Strides sv,
                                  const T* lse, const T* D, const T* dout, Strides sdo, const bool* mask,
                                  int has_mask, T scale, T* dq, Strides sdq, int N, int T_, int S, int K) {
    extern __shared__ unsigned char shared_bytes[];
    T* shared = reinterpret_cast<T*>(shared_bytes);
    T* qi = shared;                       // (K) Q_i (dQ_i accumulates in registers, acc)
    T* doi = shared + K;                  // (K)
    T* ds = shared + 2 * K;               // (blockDim.x) this tile's dS
    int i = blockIdx.x, n = blockIdx.y, b = blockIdx.z, tid = threadIdx.x, width = blockDim.x;
    long long r = ((long long)b * N + n) * T_ + i;
    T c = lse[r], Di = D[r];
    T* dq_row = dq + b * sdq.b + n * sdq.n + i * sdq.l;
    if (c == infinity<T>()) {                                         // no key: no score gradient
        for (int d = tid; d < K; d += width) dq_row[d] = T(0);
        return;
    }
    const T* q_row = q + b * sq.b + n * sq.n + i * sq.l;
    const T* do_row = dout + b * sdo.b + n * sdo.n + i * sdo.l;
    for (int d = tid; d < K; d += width) { qi[d] = q_row[d]; doi[d] = do_row[d]; }
    __syncthreads();
    const bool* mask_row = mask + ((long long)b * T_ + i) * S;
    T acc[4] = {T(0), T(0), T(0), T(0)};                              // dQ_i[d] for d = tid + w*width, K <= 4 width
    for (int j0 = 0; j0 < S; j0 += width) {
        int j = j0 + tid;
        T g = T(0);
        if (j < S && (!has_mask || mask_row[j])) {
            T pj = exp(dot(qi, k + b * sk.b + n * sk.n + j * sk.l, K) * scale - c);
            T dp = dot(doi, v + b * sv.b + n * sv.n + j * sv.l, K);
            g = pj * (dp - Di) * scale;
        }
        ds[tid] = g;
        __syncthreads();
        int tile = min(width, S - j0);
        for (int w = 0; w < 4; ++w) {
            int d = tid + w * width;
            if (d < K)
                for (int t = 0; t < tile; ++t) acc[w] += ds[t] * k[b * sk.b + n * sk.n + (long long)(j0 + t) * sk.l + d];
        }
        __syncthreads();
    }
    for (int w = 0; w < 4; ++w) {
        int d = tid + w * width;
        if (d < K) dq_row[d] = acc[w];
    }
}

template <typename T>
__device__ void flash_backward_dkdv(const T* q, Strides sq, const T* k, Strides sk, const T* v, Strides sv,
                                    const T* lse, const T* D, const T* dout, Strides sdo, const bool* mask,
                                    int has_mask, T scale, T* dk, Strides sdk, T* dv, Strides sdv,
                                    int N, int T_, int S, int K) {
    extern __shared__ unsigned char shared_bytes[];
    T* shared = reinterpret_cast<T*>(shared_bytes);
    T* kj = shared;                       // (K)
    T* vj = shared + K;                   // (K)
    T* p = shared + 2 * K;                // (blockDim.x) this tile's P_ij (1/S on rows with no key)
    T* ds = p + blockDim.x;               // (blockDim.x) this tile's dS_ij
    int j = blockIdx.x, n = blockIdx.y, b = blockIdx.z, tid = threadIdx.x, width = blockDim.x;
    const T* k_row = k + b * sk.b + n * sk.n + j * sk.l;
    const T* v_row = v + b * sv.b + n * sv.n + j * sv.l;
    for (int d = tid; d < K; d += width) { kj[d] = k_row[d]; vj[d] = v_row[d]; }
    __syncthreads();
    T dk_acc[4] = {T(0), T(0), T(0), T(0)}, dv_acc[4] = {T(0), T(0), T(0), T(0)};
    for (int i0 = 0; i0 < T_; i0 += width) {
        int i = i0 + tid;
        T pi = T(0), g = T(0);
        if (i < T_) {
            long long r = ((long long)b * N + n) * T_ + i;
            T c = lse[r];
            if (c == infinity<T>()) {
                pi = T(1) / T(S);                                     // uniform row: its share, no dS
            } else if (!has_mask || mask[((long long)b * T_ + i) * S + j]) {
                pi = exp(dot(q + b * sq.b + n * sq.n + i * sq.l, kj, K) * scale - c);
                T dp = dot(dout + b * sdo.b + n * sdo.n + i * sdo.l, vj, K);
                g = pi * (dp - D[r]) * scale;
            }
        }
        p[tid] = pi;
        ds[tid] = g;
        __syncthreads();
        int tile = min(width, T_ - i0);
        for (int w = 0; w < 4; ++w) {
            int d = tid + w * width;
            if (d < K)
                for (int t = 0; t < tile; ++t) {
                    long long row = i0 + t;
                    dv_acc[w] += p[t] * dout[b * sdo.b + n * sdo.n + row * sdo.l + d];
                    dk_acc[w] += ds[t] * q[b * sq.b + n * sq.n + row * sq.l + d];
                }
        }
        __syncthreads();
    }
    for (int w = 0; w < 4; ++w) {
        int d = tid + w * width;
        if (d < K) {
            dk[b * sdk.b + n * sdk.n + j * sdk.l + d] = dk_acc[w];
            dv[b * sdv.b + n * sdv.n + j * sdv.l + d] = dv_acc[w];
        }
    }
}

#define STRIDES(x) long long x##_b, long long x##_n, long long x##_l
#define S_(x) Strides{x##_b, x##_n, x##_l}

#define FLASH_KERNELS(T, suffix)                                                                                  \
extern "C" __global__ void flash_forward_##suffix(const T* q, STRIDES(q), const T* k, STRIDES(k), const T* v,     \
        STRIDES(v), const bool* mask, int has_mask, T scale, T* o, STRIDES(o), T* lse, int N, int T_, int S,     \
        int K) {                                                                                                  \
    flash_forward<T>(q, S_(q), k, S_(k), v, S_(v), mask, has_mask, scale, o, S_(o), lse, N, T_, S, K);          \
}                                                                                                                 \
extern "C" __global__ void attention_row_dot_##suffix(const T* a, STRIDES(a), const T* c, STRIDES(c), T* out,   \
        int B, int N, int T_, int K) {                                                                            \
    row_dot<T>(a, S_(a), c, S_(c), out, B, N, T_, K);                                                            \
}                                                                                                                 \
extern "C" __global__ void flash_backward_dq_##suffix(const T* q, STRIDES(q), const T* k, STRIDES(k),            \
        const T* v, STRIDES(v), const T* lse, const T* D, const T* dout, STRIDES(dout), const bool* mask,           \
        int has_mask, T scale, T* dq, STRIDES(dq), int N, int T_, int S, int K) {                                 \
    flash_backward_dq<T>(q, S_(q), k, S_(k), v, S_(v), lse, D, dout, S_(dout), mask, has_mask, scale, dq, S_(dq),  \
                         N, T_, S, K);                                                                            \
}                                                                                                                 \
extern "C" __global__ void flash_backward_dkdv_##suffix(const T* q, STRIDES(q), const T* k, STRIDES(k),          \
        const T* v, STRIDES(v), const T* lse, const T* D, const T* dout, STRIDES(dout), const bool* mask,           \
        int has_mask, T scale, T* dk, STRIDES(dk), T* dv, STRIDES(dv), int N, int T_, int S, int K) {             \
    flash_backward_dkdv<T>(q, S_(q), k, S_(k), v, S_(v), lse, D, dout, S_(dout), mask, has_mask, scale, dk,       \
                           S_(dk), dv, S_(dv), N, T_, S, K);                                                      \
}

FLASH_KERNELS(float, f32)
FLASH_KERNELS(double, f64)
