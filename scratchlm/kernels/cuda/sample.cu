// Drawing one token id per row from logits, for CuPy (loaded by scratchlm/kernels/cuda/ops.py).
//
// One thread per row b (a generation batch is small, V moderate), the same
// algorithm as scratchlm/kernels/numba/generate.py and scratchlm/sampling.py:
//   banned ids get probability 0; temperature 0 takes the argmax of the rest;
//   otherwise e_v = exp((z_v - m) / T) and the id is the first v with
//   e_v > 0 whose running sum passes u_b * sum(e).
// The logits row is overwritten with e. ok[0] is set to 0 if a row has no
// finite maximum.

template <typename T>
__device__ void sample_row(T* logits, const bool* banned, T temperature, const double* u,
                           long long* ids, int* ok, int B, int V) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    T* row = logits + (long long)b * V;
    int best = -1;
    for (int v = 0; v < V; ++v)
        if (!banned[v] && (best < 0 || row[v] > row[best])) best = v;
    if (!isfinite(row[best])) { ok[0] = 0; ids[b] = best; return; }
    if (temperature == T(0)) { ids[b] = best; return; }
    T m = row[best], total = T(0);
    for (int v = 0; v < V; ++v) {
        row[v] = banned[v] ? T(0) : exp((row[v] - m) / temperature);
        total += row[v];
    }
    double target = u[b] * (double)total;
    T cdf = T(0);
    int last_positive = best;
    for (int v = 0; v < V; ++v) {
        if (row[v] > T(0)) {
            cdf += row[v];
            last_positive = v;
            if ((double)cdf > target) { ids[b] = v; return; }
        }
    }
    ids[b] = last_positive;
}

extern "C" __global__ void sample_f32(float* logits, const bool* banned, float temperature, const double* u,
                                      long long* ids, int* ok, int B, int V) {
    sample_row<float>(logits, banned, temperature, u, ids, ok, B, V);
}

extern "C" __global__ void sample_f64(double* logits, const bool* banned, double temperature, const double* u,
                                      long long* ids, int* ok, int B, int V) {
    sample_row<double>(logits, banned, temperature, u, ids, ok, B, V);
}
