// mome — fused gate + adapter apply, CUDA.
//
// One launch per adapted layer call. Grid: (token tiles, expert splits). Each CTA
//
//   1. loads its tile's rows of the score matrix (`T × K` f32, computed by the selection
//      rule; −inf = not a candidate at this token) into shared memory, reports the first
//      NaN/+inf (lowest row-major index, through the error word) and subtracts the penalty;
//   2. gates per token (one warp per token): strict threshold τ, top-k with ties to the
//      lower candidate index, softmax with temperature — exactly the CPU `finish_token`;
//   3. inverts "token → experts" into "expert → (token, weight)" in shared memory,
//      experts in candidate order, so each expert of the tile is read once per tile;
//   4. for every used expert of its split (experts e ≡ blockIdx.y mod gridDim.y):
//      shrink z_u = w_u · A h̃_u (warps over A's rows, f32 warp reductions), then
//      expand delta_u += B z_u (threads over B's rows), delta in shared memory;
//   5. adds delta to the f32 output rows (plain read-add-write when the tile has one CTA,
//      atomicAdd when its experts are split over several CTAs).
//
// fp16 weights (raw IEEE half bits, converted with cvt.f32.f16), f32 arithmetic. Nothing
// but the output, the error word (and the optional selection record) is written to
// global memory.
//
// No #include: NVRTC compiles this file without any header search path, so the run-time
// compile needs nothing but libnvrtc. The shared-memory layout and every size come from
// the host (`src/kernels/cuda_plan.rs`) in `Params`; keep the struct in step with
// `KernelParams` there (all fields 4 bytes, same order).

#define MOME_BLOCK 256
#define MOME_WARPS (MOME_BLOCK / 32)
// Most tokens per tile (register arrays below are this long). Keep equal to
// `cuda_plan::MAX_TILE`.
#define MOME_MAX_TILE 16
#define MOME_FULL 0xffffffffu
#define MOME_INT_MAX 0x7fffffff
// No math.h under NVRTC without headers: +inf by its bits.
#define MOME_INF __int_as_float(0x7f800000)

typedef unsigned short f16raw;
typedef unsigned long long u64;

struct Params {
    int tokens;
    int d_model;
    int candidates;
    int rank;
    int slots;
    int tile;
    int nsplit;
    int chunk;
    float tau;
    float temperature;
    // Shared-memory offsets, in 4-byte words, each a multiple of 4.
    int off_scores;
    int off_hn;
    int off_delta;
    int off_zpart;
    int off_z;
    int off_cnt;
    int off_touched;
    int off_sel_idx;
    int off_sel_w;
    int off_sel_sc;
    int off_ecount;
    int off_eoff;
    int off_used;
    int off_users_tok;
    int off_users_w;
    int off_misc;
};

#ifdef MOME_EMULATE
// tools/kernel-emu: the kernel compiled as C++ on the CPU (see cuda_emu.h there).
__device__ __forceinline__ float h2f(f16raw h) { return mome_emu_h2f(h); }
#else
__device__ __forceinline__ float h2f(f16raw h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
#endif

__device__ __forceinline__ float lo_f(unsigned int w) { return h2f((f16raw)(w & 0xffffu)); }
__device__ __forceinline__ float hi_f(unsigned int w) { return h2f((f16raw)(w >> 16)); }

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(f16raw x) { return h2f(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(MOME_FULL, v, o);
    return v;
}

template <typename HT>
__device__ __forceinline__ void fused_apply(
    const Params& p, float* __restrict__ out, const HT* __restrict__ hn,
    const float* __restrict__ scores_in, const float* __restrict__ penalty,
    const u64* __restrict__ a_ptr, const u64* __restrict__ b_ptr, int* __restrict__ err,
    int* __restrict__ rec_count, int* __restrict__ rec_idx, float* __restrict__ rec_score,
    float* __restrict__ rec_weight) {
#ifdef MOME_EMULATE
    float4* smem4 = mome_emu_smem();
#else
    extern __shared__ float4 smem4[];
#endif
    float* sm = reinterpret_cast<float*>(smem4);
    int* smi = reinterpret_cast<int*>(smem4);

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int d = p.d_model, K = p.candidates, rank = p.rank;
    const int slots = p.slots, tile = p.tile;
    const int t0 = blockIdx.x * tile;
    const int nt = min(tile, p.tokens - t0);
    if (nt <= 0) return;

    float* scores = sm + p.off_scores;
    float* hn_s = sm + p.off_hn;
    float* delta = sm + p.off_delta;
    float* zpart = sm + p.off_zpart;
    float* z = sm + p.off_z;
    int* cnt = smi + p.off_cnt;
    int* touched = smi + p.off_touched;
    int* sel_idx = smi + p.off_sel_idx;
    float* sel_w = sm + p.off_sel_w;
    float* sel_sc = sm + p.off_sel_sc;
    int* ecount = smi + p.off_ecount;
    int* eoff = smi + p.off_eoff;
    int* used = smi + p.off_used;
    int* users_tok = smi + p.off_users_tok;
    float* users_w = sm + p.off_users_w;
    int* misc = smi + p.off_misc;

    // ---- 1. the tile's score rows: finiteness (NaN and +inf are errors, −inf abstains),
    // minus the penalty. T × K fits an int (checked by the plan).
    // (Not unrolled: unrolling it costs the apply phase below a register on sm_80, and
    // a spill; ptxas's budget is 128 under __launch_bounds__(256, 2).)
    const float* srow = scores_in + (long long)t0 * K;
#pragma unroll 1
    for (int x = tid; x < nt * K; x += MOME_BLOCK) {
        float v = srow[x];
        if (!(v < MOME_INF)) {  // NaN or +inf
            if (blockIdx.y == 0) atomicMin(&err[0], t0 * K + x);
            v = -MOME_INF;
        } else if (penalty) {
            v -= penalty[x % K];
        }
        scores[x] = v;
    }
    __syncthreads();

    // ---- 2. per-token gate (one warp per token)
    for (int u = warp; u < tile; u += MOME_WARPS) {
        if (u >= nt) {
            if (lane == 0) cnt[u] = 0;
            continue;
        }
        float* row = scores + u * K;
        int n = 0;
        for (int s = 0; s < slots; ++s) {
            float best = -MOME_INF;
            int bj = MOME_INT_MAX;
            for (int j = lane; j < K; j += 32) {
                float v = row[j];
                // Strictly above τ; NaN fails the comparison and is skipped.
                if (v > p.tau && v > best) {
                    best = v;
                    bj = j;
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                float ob = __shfl_xor_sync(MOME_FULL, best, o);
                int oj = __shfl_xor_sync(MOME_FULL, bj, o);
                if (oj != MOME_INT_MAX && (ob > best || (ob == best && oj < bj))) {
                    best = ob;
                    bj = oj;
                }
            }
            if (bj == MOME_INT_MAX) break;
            if (lane == 0) {
                sel_idx[u * slots + s] = bj;
                sel_sc[u * slots + s] = best;
            }
            // Its owner lane takes it out of the running (−inf never passes τ ≥ −1).
            if ((bj & 31) == lane) row[bj] = -MOME_INF;
            __syncwarp();
            ++n;
        }
        if (lane == 0) {
            // Softmax over the kept scores, best first, shifted by the best score before
            // dividing by the temperature (the CPU's `softmax_selected`).
            float mx = n > 0 ? sel_sc[u * slots] : 0.0f;
            float sum = 0.0f;
            for (int s = 0; s < n; ++s) {
                float w = expf((sel_sc[u * slots + s] - mx) / p.temperature);
                sel_w[u * slots + s] = w;
                sum += w;
            }
            for (int s = 0; s < n; ++s) sel_w[u * slots + s] /= sum;
            cnt[u] = n;
            if (rec_count != 0 && blockIdx.y == 0) {
                const int t = t0 + u;
                rec_count[t] = n;
                for (int s = 0; s < n; ++s) {
                    rec_idx[(long long)t * slots + s] = sel_idx[u * slots + s];
                    rec_score[(long long)t * slots + s] = sel_sc[u * slots + s];
                    rec_weight[(long long)t * slots + s] = sel_w[u * slots + s];
                }
            }
        }
    }
    __syncthreads();

    // ---- 3. expert → users, experts in candidate order
    for (int j = tid; j < K; j += MOME_BLOCK) {
        int c = 0;
        for (int u = 0; u < nt; ++u)
            for (int s = 0; s < cnt[u]; ++s) c += sel_idx[u * slots + s] == j;
        ecount[j] = c;
    }
    if (tid < tile) touched[tid] = 0;
    __syncthreads();
    if (tid == 0) {
        int off = 0, nu = 0;
        for (int j = 0; j < K; ++j) {
            eoff[j] = off;
            if (ecount[j] > 0) used[nu++] = j;
            off += ecount[j];
        }
        misc[0] = nu;
    }
    __syncthreads();
    const int n_used = misc[0];
    if ((int)blockIdx.y >= n_used) return;  // nothing for this split; `out` already holds h
    for (int j = tid; j < K; j += MOME_BLOCK) {
        if (ecount[j] == 0) continue;
        int pos = eoff[j];
        for (int u = 0; u < nt; ++u)
            for (int s = 0; s < cnt[u]; ++s)
                if (sel_idx[u * slots + s] == j) {
                    users_tok[pos] = u;
                    users_w[pos] = sel_w[u * slots + s];
                    ++pos;
                }
    }
    // h̃ rows of the tile as f32 (the region of the scores, dead now); delta = 0.
    for (int x = tid; x < nt * d; x += MOME_BLOCK) {
        hn_s[x] = to_f32(hn[(long long)t0 * d + x]);
        delta[x] = 0.0f;
    }
    __syncthreads();

    const bool vec_a = (d & 3) == 0;     // A rows 8-byte aligned: 4 halves per load
    const bool vec_b = (rank & 3) == 0;  // B rows 8-byte aligned
    const int items = rank * p.nsplit;
    for (int e = blockIdx.y; e < n_used; e += gridDim.y) {
        const int j = used[e];
        const int p0 = eoff[j];
        const int U = ecount[j];  // ≤ tile: a token uses an expert at most once
        const f16raw* A = reinterpret_cast<const f16raw*>(a_ptr[j]);
        const f16raw* B = reinterpret_cast<const f16raw*>(b_ptr[j]);
        if (tid < U) touched[users_tok[p0 + tid]] = 1;
        int toff[MOME_MAX_TILE];
#pragma unroll
        for (int u = 0; u < MOME_MAX_TILE; ++u) toff[u] = u < U ? users_tok[p0 + u] * d : 0;

        // ---- 4a. shrink: partial dots of (row r, part of d) per warp
        for (int it = warp; it < items; it += MOME_WARPS) {
            const int r = it / p.nsplit;
            const int part = it - r * p.nsplit;
            const int i0 = part * p.chunk;
            const int i1 = min(d, i0 + p.chunk);
            const f16raw* arow = A + (long long)r * d;
            float acc[MOME_MAX_TILE];
#pragma unroll
            for (int u = 0; u < MOME_MAX_TILE; ++u) acc[u] = 0.0f;
            if (vec_a) {
                // The next 4 halves are loaded before the current ones are used, so each
                // lane keeps a load in flight while it works (few registers, no unroll).
                int i = i0 + lane * 4;
                uint2 w = make_uint2(0u, 0u);
                if (i < i1) w = __ldg(reinterpret_cast<const uint2*>(arow + i));
#pragma unroll 1
                for (; i < i1; i += 128) {
                    const uint2 cur = w;
                    if (i + 128 < i1) w = __ldg(reinterpret_cast<const uint2*>(arow + i + 128));
                    const float a0 = lo_f(cur.x), a1 = hi_f(cur.x), a2 = lo_f(cur.y), a3 = hi_f(cur.y);
#pragma unroll
                    for (int u = 0; u < MOME_MAX_TILE; ++u) {
                        if (u < U) {
                            const float4 x = *reinterpret_cast<const float4*>(hn_s + toff[u] + i);
                            acc[u] = fmaf(a0, x.x, acc[u]);
                            acc[u] = fmaf(a1, x.y, acc[u]);
                            acc[u] = fmaf(a2, x.z, acc[u]);
                            acc[u] = fmaf(a3, x.w, acc[u]);
                        }
                    }
                }
            } else {
                for (int i = i0 + lane; i < i1; i += 32) {
                    const float a = h2f(arow[i]);
#pragma unroll
                    for (int u = 0; u < MOME_MAX_TILE; ++u)
                        if (u < U) acc[u] = fmaf(a, hn_s[toff[u] + i], acc[u]);
                }
            }
#pragma unroll
            for (int u = 0; u < MOME_MAX_TILE; ++u) {
                if (u < U) {
                    const float s = warp_sum(acc[u]);
                    if (lane == 0) zpart[(part * tile + u) * rank + r] = s;
                }
            }
        }
        __syncthreads();
        // z_u = w_u · Σ_parts, parts in a fixed order (deterministic).
        for (int x = tid; x < U * rank; x += MOME_BLOCK) {
            const int u = x / rank, r = x - (x / rank) * rank;
            float s = 0.0f;
            for (int part = 0; part < p.nsplit; ++part) s += zpart[(part * tile + u) * rank + r];
            z[u * rank + r] = users_w[p0 + u] * s;
        }
        __syncthreads();

        // ---- 4b. expand: delta_u[i] += B[i, :] · z_u (one thread per row of B)
        for (int i = tid; i < d; i += MOME_BLOCK) {
            const f16raw* brow = B + (long long)i * rank;
            float acc[MOME_MAX_TILE];
#pragma unroll
            for (int u = 0; u < MOME_MAX_TILE; ++u) acc[u] = 0.0f;
            if (vec_b) {
                for (int r = 0; r < rank; r += 4) {
                    const uint2 w = __ldg(reinterpret_cast<const uint2*>(brow + r));
                    const float b0 = lo_f(w.x), b1 = hi_f(w.x), b2 = lo_f(w.y), b3 = hi_f(w.y);
#pragma unroll
                    for (int u = 0; u < MOME_MAX_TILE; ++u) {
                        if (u < U) {
                            const float* zu = z + u * rank + r;
                            acc[u] = fmaf(b0, zu[0], acc[u]);
                            acc[u] = fmaf(b1, zu[1], acc[u]);
                            acc[u] = fmaf(b2, zu[2], acc[u]);
                            acc[u] = fmaf(b3, zu[3], acc[u]);
                        }
                    }
                }
            } else {
                for (int r = 0; r < rank; ++r) {
                    const float b = h2f(brow[r]);
#pragma unroll
                    for (int u = 0; u < MOME_MAX_TILE; ++u)
                        if (u < U) acc[u] = fmaf(b, z[u * rank + r], acc[u]);
                }
            }
#pragma unroll
            for (int u = 0; u < MOME_MAX_TILE; ++u)
                if (u < U) delta[toff[u] + i] += acc[u];
        }
        __syncthreads();
    }

    // ---- 5. out += delta for the rows this CTA touched
    const bool split = gridDim.y > 1;
    for (int u = 0; u < nt; ++u) {
        if (!touched[u]) continue;
        float* orow = out + (long long)(t0 + u) * d;
        for (int i = tid; i < d; i += MOME_BLOCK) {
            if (split)
                atomicAdd(orow + i, delta[u * d + i]);
            else
                orow[i] = orow[i] + delta[u * d + i];
        }
    }
}

// One entry point per h̃ dtype: f = f32, h = f16 (scores are always f32). `out` is f32
// and holds h on entry (the launcher widens h to f32 and narrows the result for f16 h).
// The run-time compile builds only the variant a call needs (`-DMOME_ONE_VARIANT
// -DMOME_VARIANT_x`); without those defines (tools/check-kernels.sh) both are built.
#define MOME_ENTRY(NAME, HT)                                                                 \
    extern "C" __global__ void __launch_bounds__(MOME_BLOCK, 2) NAME(                        \
        const Params p, float* out, const HT* hn, const float* scores, const float* penalty, \
        const u64* a_ptr, const u64* b_ptr, int* err, int* rec_count, int* rec_idx,          \
        float* rec_score, float* rec_weight) {                                               \
        fused_apply<HT>(p, out, hn, scores, penalty, a_ptr, b_ptr, err, rec_count, rec_idx,  \
                        rec_score, rec_weight);                                              \
    }

#if !defined(MOME_ONE_VARIANT) || defined(MOME_VARIANT_f)
MOME_ENTRY(mome_fused_apply_f, float)
#endif
#if !defined(MOME_ONE_VARIANT) || defined(MOME_VARIANT_h)
MOME_ENTRY(mome_fused_apply_h, f16raw)
#endif
