// mome — the floor the fused kernel is measured against (benches/cuda_fused.rs): an empty
// launch, and one plain read of N 16-byte words (what reading the selected experts'
// bytes once costs). The XOR of the words goes to `sink` only for one magic value, so the
// loads stay and nothing else is written. No #include (compiled by NVRTC like
// fused_apply.cu).

extern "C" __global__ void mome_floor_empty() {}

extern "C" __global__ void __launch_bounds__(256) mome_floor_read(const uint4* p, long long n,
                                                                  unsigned int* sink) {
    unsigned int acc = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const uint4 v = __ldg(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) sink[0] = acc;
}
