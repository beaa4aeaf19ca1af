// Softmax cross-entropy, forward and backward in place, for CuPy (loaded by scratchlm/kernels/cuda/ops.py).
//
// One block per row n of the logits z (N, V); the threads of the block stride
// over the V columns and meet in shared memory for the row max and sum:
//
//   m = max_v z_v    s = sum_v exp(z_v - m)    log_p[n] = z_{y_n} - m - log s
//   z_v <- (w_n / s) exp(z_v - m) - w_n [v == y_n]
//
// Launch with blockDim.x a power of two <= 1024 and 2 * blockDim.x * sizeof(T)
// bytes of shared memory.

template <typename T>
__device__ void softmax_xent(T* z, const long long* y, const T* w, T* log_p, int V) {
    extern __shared__ unsigned char shared_bytes[];
    T* shared = reinterpret_cast<T*>(shared_bytes);
    T* row = z + (long long)blockIdx.x * V;
    int tid = threadIdx.x, width = blockDim.x;
    long long target = y[blockIdx.x];
    T z_target = row[target];                                        // read before the row is overwritten

    T m = row[0];
    for (int v = tid; v < V; v += width) m = max(m, row[v]);
    shared[tid] = m;
    __syncthreads();
    for (int half = width / 2; half > 0; half /= 2) {
        if (tid < half) shared[tid] = max(shared[tid], shared[tid + half]);
        __syncthreads();
    }
    m = shared[0];
    __syncthreads();

    T s = T(0);
    for (int v = tid; v < V; v += width) {
        T e = exp(row[v] - m);
        row[v] = e;
        s += e;
    }
    shared[width + tid] = s;
    __syncthreads();
    for (int half = width / 2; half > 0; half /= 2) {
        if (tid < half) shared[width + tid] += shared[width + tid + half];
        __syncthreads();
    }
    s = shared[width];

    if (tid == 0) log_p[blockIdx.x] = z_target - m - log(s);
    T scale = w[blockIdx.x] / s;
    for (int v = tid; v < V; v += width) row[v] = row[v] * scale - (v == target ? w[blockIdx.x] : T(0));
}

extern "C" __global__ void softmax_xent_f32(float* z, const long long* y, const float* w, float* log_p, int V) {
    softmax_xent<float>(z, y, w, log_p, V);
}

extern "C" __global__ void softmax_xent_f64(double* z, const long long* y, const double* w, double* log_p, int V) {
    softmax_xent<double>(z, y, w, log_p, V);
}
