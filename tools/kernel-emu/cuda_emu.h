// A minimal CPU emulation of the CUDA features kernels/fused_apply.cu uses, so that the
// kernel's logic (indexing, shared-memory layout, barriers, warp reductions, selection)
// can be run and checked on machines without a GPU.
//
// Each CTA runs as 256 std::threads; __syncthreads is a std::barrier over them; warp
// intrinsics (__shfl_xor_sync, __any_sync, __syncwarp) exchange values through a
// per-warp slot array between two per-warp barriers, which is exact for code that calls
// them with all 32 lanes in uniform control flow (as the kernel does). Atomics take a
// global mutex. fp16 conversion uses the compiler's _Float16. Timing means nothing here.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(a, b)

struct uint2 {
    unsigned int x, y;
};
struct float4 {
    float x, y, z, w;
};
inline uint2 make_uint2(unsigned int a, unsigned int b) { return uint2{a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }

struct EmuDim {
    unsigned int x = 0, y = 0, z = 0;
};

namespace emu {
constexpr int kBlock = 256;

struct Warp {
    std::barrier<> bar{32};
    uint64_t slot[32];
};

struct Block {
    std::barrier<> bar{kBlock};
    Warp warps[kBlock / 32];
    std::vector<float4> smem;
};

inline thread_local Block* blk = nullptr;
inline thread_local int tid = 0;
inline std::mutex atomic_mu;
}  // namespace emu

inline thread_local EmuDim threadIdx, blockIdx;
inline EmuDim gridDim, blockDim;

inline float4* mome_emu_smem() { return emu::blk->smem.data(); }

inline float mome_emu_h2f(unsigned short bits) {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return static_cast<float>(h);
}

inline unsigned short mome_emu_f2h(float f) {
    _Float16 h = static_cast<_Float16>(f);
    unsigned short bits;
    std::memcpy(&bits, &h, 2);
    return bits;
}

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}

inline int min(int a, int b) { return a < b ? a : b; }

inline void __syncthreads() { emu::blk->bar.arrive_and_wait(); }

inline void __syncwarp() { emu::blk->warps[emu::tid / 32].bar.arrive_and_wait(); }

template <typename T>
inline T __shfl_xor_sync(unsigned int, T v, int offset) {
    static_assert(sizeof(T) <= 8, "slot size");
    emu::Warp& w = emu::blk->warps[emu::tid / 32];
    const int lane = emu::tid % 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w.slot[lane] = bits;
    w.bar.arrive_and_wait();
    const uint64_t other = w.slot[lane ^ offset];
    w.bar.arrive_and_wait();
    T out;
    std::memcpy(&out, &other, sizeof(T));
    return out;
}

inline bool __any_sync(unsigned int, bool pred) {
    emu::Warp& w = emu::blk->warps[emu::tid / 32];
    const int lane = emu::tid % 32;
    w.slot[lane] = pred ? 1 : 0;
    w.bar.arrive_and_wait();
    bool any = false;
    for (int i = 0; i < 32; ++i) any |= w.slot[i] != 0;
    w.bar.arrive_and_wait();
    return any;
}

template <typename T>
inline T __ldg(const T* p) {
    return *p;
}

inline int atomicMin(int* p, int v) {
    std::lock_guard<std::mutex> g(emu::atomic_mu);
    const int old = *p;
    *p = std::min(old, v);
    return old;
}

inline float atomicAdd(float* p, float v) {
    std::lock_guard<std::mutex> g(emu::atomic_mu);
    const float old = *p;
    *p = old + v;
    return old;
}

namespace emu {
// Runs `kernel` (a callable taking no arguments) over the grid, one CTA at a time,
// each CTA as kBlock threads with `smem_bytes` of shared memory filled with NaN bits
// (so reads of memory the kernel never wrote show up).
template <typename F>
void launch(EmuDim grid, size_t smem_bytes, F kernel) {
    gridDim = grid;
    blockDim = EmuDim{kBlock, 1, 1};
    for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            auto b = std::make_unique<Block>();
            b->smem.assign((smem_bytes + 15) / 16, float4{NAN, NAN, NAN, NAN});
            std::vector<std::thread> threads;
            threads.reserve(kBlock);
            for (int t = 0; t < kBlock; ++t) {
                threads.emplace_back([&, t] {
                    emu::blk = b.get();
                    emu::tid = t;
                    threadIdx = EmuDim{static_cast<unsigned>(t), 0, 0};
                    blockIdx = EmuDim{bx, by, 0};
                    kernel();
                });
            }
            for (auto& th : threads) th.join();
        }
    }
}
}  // namespace emu
