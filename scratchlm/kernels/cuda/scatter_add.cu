// Scatter-add target[index[k], :] += rows[k, :] for CuPy (loaded by scratchlm/kernels/cuda/ops.py).
//
// One thread per element of rows (N, C); repeated indices meet in atomicAdd
// (float and double atomics: compute capability 6.0 or newer), so the order of
// the additions, and the last bits of the result, may vary from run to run.

template <typename T>
__device__ void scatter_add(T* target, const long long* index, const T* rows, long long N, int C) {
    long long n = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (n >= N * C) return;
    long long k = n / C;
    int j = n % C;
    atomicAdd(target + index[k] * C + j, rows[n]);
}

extern "C" __global__ void scatter_add_f32(float* target, const long long* index, const float* rows, long long N, int C) {
    scatter_add<float>(target, index, rows, N, C);
}

extern "C" __global__ void scatter_add_f64(double* target, const long long* index, const double* rows, long long N, int C) {
    scatter_add<double>(target, index, rows, N, C);
}
