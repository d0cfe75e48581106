// Runs kernels/fused_apply.cu on the CPU under cuda_emu.h and checks it against a
// double-precision reference of the operator (gate + apply), on shapes that cover every
// code path: tile sizes, expert splits (atomic adds), scalar and vector loads
// (d_model % 4, rank % 4), shrink parts (rank 1), both h̃ dtypes, penalty, −inf scores
// (absent candidates), nothing above τ (bit-identical rows), NaN/+inf scores (error
// word), K > 32, ties (lower candidate first).
//
// Build and run: tools/emulate-kernel.sh. The shared-memory layout and the shrink split
// are ports of src/kernels/cuda_plan.rs (`smem_layout`, `shrink_split`).
#include <climits>
#include <cstdio>
#include <random>
#include <string>

#include "cuda_emu.h"
#define MOME_EMULATE 1
#include "../../kernels/fused_apply.cu"

namespace {

int r4(int x) { return (x + 3) / 4 * 4; }

struct Case {
    std::string name;
    int T, d, K, rank, topk;
    float tau, temp;
    bool hf16, penalty;
    float absent;  // share of −inf scores
    int tile, splits;
    uint64_t seed;
    int bad_index = -1;     // row-major index of a NaN score
    int bad_index2 = -1;    // … of a +inf score
    bool ties = false;      // scores from a few levels, so equal scores are frequent
};

struct Layout {
    Params p;
    size_t bytes;
};

Layout layout(const Case& c) {
    const int slots = std::min(c.topk, c.K);
    // shrink_split
    const int warps = 8, granule = 128;
    const int max_parts = std::max(1, (c.d + granule - 1) / granule);
    const int nsplit = std::clamp((warps + c.rank - 1) / c.rank, 1, max_parts);
    const int chunk = std::max(1, ((c.d + nsplit - 1) / nsplit + granule - 1) / granule) * granule;
    const int tile = c.tile;
    Params p{};
    p.tokens = c.T;
    p.d_model = c.d;
    p.candidates = c.K;
    p.rank = c.rank;
    p.slots = slots;
    p.tile = tile;
    p.nsplit = nsplit;
    p.chunk = chunk;
    p.tau = c.tau;
    p.temperature = c.temp;
    // smem_layout
    p.off_scores = 0;
    const int sel_end = p.off_scores + r4(tile * c.K);
    p.off_hn = 0;
    p.off_delta = r4(tile * c.d);
    const int apply_end = p.off_delta + r4(tile * c.d);
    p.off_zpart = std::max(sel_end, apply_end);
    p.off_z = p.off_zpart + r4(nsplit * tile * c.rank);
    p.off_cnt = p.off_z + r4(tile * c.rank);
    p.off_touched = p.off_cnt + r4(tile);
    p.off_sel_idx = p.off_touched + r4(tile);
    const int ts = r4(tile * slots);
    p.off_sel_w = p.off_sel_idx + ts;
    p.off_sel_sc = p.off_sel_w + ts;
    p.off_ecount = p.off_sel_sc + ts;
    p.off_eoff = p.off_ecount + r4(c.K);
    p.off_used = p.off_eoff + r4(c.K);
    p.off_users_tok = p.off_used + r4(c.K);
    p.off_users_w = p.off_users_tok + ts;
    p.off_misc = p.off_users_w + ts;
    return Layout{p, static_cast<size_t>(p.off_misc + 4) * 4};
}

// Values as the kernel sees them: f16 inputs are rounded to f16.
struct Buf {
    std::vector<float> f;           // f32 view (rounded when f16)
    std::vector<unsigned short> h;  // f16 bits (when f16)
    bool is_f16;
    const void* ptr() const { return is_f16 ? static_cast<const void*>(h.data()) : f.data(); }
};

Buf make(std::mt19937_64& rng, size_t n, float scale, bool f16) {
    std::uniform_real_distribution<float> u(-scale, scale);
    Buf b{{}, {}, f16};
    b.f.resize(n);
    for (auto& v : b.f) v = u(rng);
    if (f16) {
        b.h.resize(n);
        for (size_t i = 0; i < n; ++i) {
            b.h[i] = mome_emu_f2h(b.f[i]);
            b.f[i] = mome_emu_h2f(b.h[i]);
        }
    }
    return b;
}

struct Sel {
    int j;
    double s;
    double w;
};

int failures = 0;
#define CHECK(cond, ...)                             \
    do {                                             \
        if (!(cond)) {                               \
            std::printf("  FAIL %s: ", c.name.c_str()); \
            std::printf(__VA_ARGS__);                \
            std::printf("\n");                       \
            ++failures;                              \
            return;                                  \
        }                                            \
    } while (0)

void run(const Case& c) {
    std::mt19937_64 rng(c.seed);
    Buf h = make(rng, size_t(c.T) * c.d, 50.0f, c.hf16);
    Buf hn = make(rng, size_t(c.T) * c.d, 1.0f, c.hf16);
    std::vector<float> scores(size_t(c.T) * c.K);
    {
        std::uniform_real_distribution<float> u(-1.0f, 1.0f), a(0.0f, 1.0f);
        std::uniform_int_distribution<int> lv(-4, 4);
        for (auto& v : scores) {
            v = c.ties ? 0.2f * float(lv(rng)) : u(rng);
            if (a(rng) < c.absent) v = -INFINITY;
        }
    }
    if (c.bad_index >= 0) scores[size_t(c.bad_index)] = NAN;
    if (c.bad_index2 >= 0) scores[size_t(c.bad_index2)] = INFINITY;
    std::vector<float> pen;
    if (c.penalty) {
        std::uniform_real_distribution<float> u(-0.1f, 0.1f);
        for (int j = 0; j < c.K; ++j) pen.push_back(u(rng));
    }
    // Weights: per candidate A (rank × d) then B (d × rank), f16.
    std::vector<std::vector<unsigned short>> w(c.K);
    std::uniform_real_distribution<float> uw(-0.5f, 0.5f);
    for (auto& e : w) {
        e.resize(size_t(2) * c.rank * c.d);
        for (auto& v : e) v = mome_emu_f2h(uw(rng));
    }
    std::vector<u64> a_ptr(c.K), b_ptr(c.K);
    for (int j = 0; j < c.K; ++j) {
        a_ptr[j] = reinterpret_cast<u64>(w[j].data());
        b_ptr[j] = reinterpret_cast<u64>(w[j].data() + size_t(c.rank) * c.d);
    }
    const int slots = std::min(c.topk, c.K);
    std::vector<float> out(h.f);
    int err[1] = {INT_MAX};
    std::vector<int> rc(c.T, -1), ri(size_t(c.T) * slots, -1);
    std::vector<float> rs(size_t(c.T) * slots), rw(size_t(c.T) * slots);

    Layout L = layout(c);
    const int tiles = (c.T + c.tile - 1) / c.tile;
    const float* penp = c.penalty ? pen.data() : nullptr;
    emu::launch(EmuDim{unsigned(tiles), unsigned(c.splits), 1}, L.bytes, [&] {
#define ARGS(HT)                                                                              \
    L.p, out.data(), static_cast<const HT*>(hn.ptr()), scores.data(), penp, a_ptr.data(),     \
        b_ptr.data(), err, rc.data(), ri.data(), rs.data(), rw.data()
        if (c.hf16)
            mome_fused_apply_h(ARGS(f16raw));
        else
            mome_fused_apply_f(ARGS(float));
#undef ARGS
    });

    if (c.bad_index >= 0 || c.bad_index2 >= 0) {
        int want = INT_MAX;
        if (c.bad_index >= 0) want = std::min(want, c.bad_index);
        if (c.bad_index2 >= 0) want = std::min(want, c.bad_index2);
        CHECK(err[0] == want, "error word %d, want %d", err[0], want);
        std::printf("  ok   %s (error word %d)\n", c.name.c_str(), err[0]);
        return;
    }
    CHECK(err[0] == INT_MAX, "unexpected error word %d", err[0]);

    int active = 0;
    for (int t = 0; t < c.T; ++t) {
        // Reference gate: the kernel's f32 `score − penalty` (so ties stay ties), then
        // strict τ, stable top-k (ties to the lower candidate), softmax in double.
        std::vector<Sel> s;
        for (int j = 0; j < c.K; ++j) {
            float v = scores[size_t(t) * c.K + j];
            if (c.penalty) v -= pen[j];
            if (v > c.tau) s.push_back(Sel{j, double(v), 0});
        }
        std::stable_sort(s.begin(), s.end(), [](const Sel& a, const Sel& b) { return a.s > b.s; });
        if (int(s.size()) > c.topk) s.resize(c.topk);
        double sum = 0;
        for (auto& e : s) sum += (e.w = std::exp((e.s - s[0].s) / c.temp));
        for (auto& e : s) e.w /= sum;
        // Selection record: the same experts in the same order (scores are exact inputs
        // here, so the order is defined, ties included), scores bit for bit, weights to
        // 1e-5, count.
        CHECK(rc[t] == int(s.size()), "token %d: %d experts, reference %zu", t, rc[t], s.size());
        for (int k = 0; k < rc[t]; ++k) {
            const Sel& e = s[size_t(k)];
            CHECK(ri[size_t(t) * slots + k] == e.j, "token %d slot %d: expert %d, reference %d", t, k,
                  ri[size_t(t) * slots + k], e.j);
            CHECK(double(rs[size_t(t) * slots + k]) == e.s, "token %d slot %d: score %.9g vs %.9g", t, k,
                  rs[size_t(t) * slots + k], e.s);
            CHECK(std::fabs(rw[size_t(t) * slots + k] - e.w) < 1e-5, "token %d expert %d weight %f vs %f", t, e.j,
                  rw[size_t(t) * slots + k], e.w);
        }
        if (s.empty()) {
            CHECK(std::memcmp(&out[size_t(t) * c.d], &h.f[size_t(t) * c.d], sizeof(float) * c.d) == 0,
                  "token %d: no expert but the row changed", t);
            continue;
        }
        ++active;
        std::vector<double> delta(c.d, 0.0);
        for (auto& e : s) {
            const unsigned short* A = w[e.j].data();
            const unsigned short* B = A + size_t(c.rank) * c.d;
            for (int r = 0; r < c.rank; ++r) {
                double z = 0;
                for (int i = 0; i < c.d; ++i) z += double(mome_emu_h2f(A[size_t(r) * c.d + i])) * hn.f[size_t(t) * c.d + i];
                for (int i = 0; i < c.d; ++i) delta[i] += e.w * z * mome_emu_h2f(B[size_t(i) * c.rank + r]);
            }
        }
        double scale = 0;
        for (double v : delta) scale = std::max(scale, std::fabs(v));
        for (int i = 0; i < c.d; ++i) {
            const double want = double(h.f[size_t(t) * c.d + i]) + delta[i];
            const double got = out[size_t(t) * c.d + i];
            const double tol = 1e-3 * scale + 1e-6 + 1e-6 * std::fabs(want);
            CHECK(std::fabs(got - want) <= tol, "token %d elem %d: %.7g vs %.7g (tol %.3g)", t, i, got, want, tol);
        }
    }
    std::printf("  ok   %s (%d active tokens of %d)\n", c.name.c_str(), active, c.T);
}

}  // namespace

// The layout port must give the offsets src/kernels/cuda_plan.rs gives (the Rust test
// `layout_matches_the_emulator_fixture` asserts the same numbers).
bool layout_fixture_ok() {
    auto offsets = [](const Layout& L) {
        const Params& p = L.p;
        return std::vector<int>{p.off_scores,  p.off_hn,      p.off_delta,  p.off_zpart,     p.off_z,
                                p.off_cnt,     p.off_touched, p.off_sel_idx, p.off_sel_w,    p.off_sel_sc,
                                p.off_ecount,  p.off_eoff,    p.off_used,    p.off_users_tok, p.off_users_w,
                                p.off_misc,    int(L.bytes / 4)};
    };
    Case a{"fixture a", 100, 200, 24, 8, 4, 0, 1, false, false, 0, 5, 1, 0};
    Case b{"fixture b", 100, 301, 37, 1, 9, 0, 1, false, false, 0, 3, 1, 0};
    const std::vector<int> wa{0,    0,    1000, 2000, 2040, 2080, 2088, 2096, 2116,
                              2136, 2156, 2180, 2204, 2228, 2248, 2268, 2272};
    const std::vector<int> wb{0,    0,    904,  1808, 1820, 1824, 1828, 1832, 1860,
                              1888, 1916, 1956, 1996, 2036, 2064, 2092, 2096};
    const Layout la = layout(a), lb = layout(b);
    return offsets(la) == wa && offsets(lb) == wb && la.p.nsplit == 1 && lb.p.nsplit == 3 &&
           lb.p.chunk == 128;
}

int main() {
    if (!layout_fixture_ok()) {
        std::printf("kernel emulation: FAIL: the layout port disagrees with cuda_plan.rs\n");
        return 1;
    }
    std::vector<Case> cases;
    auto add = [&](std::string name, int T, int d, int K, int rank, int topk, float tau, int tile, int splits) {
        Case c{name, T, d, K, rank, topk, tau, 0.5f, false, false, 0.2f, tile, splits, 7};
        cases.push_back(c);
        return &cases.back();
    };
    add("decode, experts split over 4 CTAs (atomics)", 1, 576, 32, 8, 4, 0.0f, 1, 4);
    add("decode, one CTA", 1, 576, 32, 8, 4, 0.0f, 1, 1);
    add("3 tiles, d % 4 != 0 (scalar A), mixed rows", 40, 50, 6, 8, 2, 0.45f, 16, 1);
    add("rank 1: 3 shrink parts", 7, 300, 10, 1, 3, -0.2f, 4, 2);
    add("rank 64", 7, 96, 10, 64, 3, 0.0f, 7, 1);
    add("rank 3: scalar B, many users per expert", 64, 40, 3, 3, 3, -1.0f, 16, 2);
    add("k above the passing count, K > 32", 3, 64, 100, 8, 10, 0.1f, 3, 3);
    add("K = 300 (several score columns per lane)", 5, 32, 300, 4, 6, 0.5f, 5, 2);
    add("d_model 1", 5, 1, 6, 8, 3, 0.0f, 2, 1);
    add("nothing above tau: rows unchanged", 9, 77, 8, 8, 4, 1.0f, 5, 2);
    add("rank 16, d 128, tile 16, 2 splits", 33, 128, 16, 16, 4, -0.1f, 16, 2);
    add("every score absent: rows unchanged", 6, 40, 8, 4, 3, -1.0f, 3, 2)->absent = 1.0f;
    add("no score absent, tau -1: all k used", 6, 40, 8, 4, 3, -1.0f, 3, 2)->absent = 0.0f;
    {
        Case* c = add("ties: equal scores go to the lower candidate", 12, 64, 20, 4, 5, -0.5f, 6, 2);
        c->ties = true;
        Case* d = add("f16 h, penalty", 20, 200, 24, 8, 4, -0.1f, 5, 3);
        d->hf16 = d->penalty = true;
    }
    for (int v = 0; v < 2; ++v) {
        Case* c = add("variant " + std::string(v ? "h" : "f"), 6, 36, 12, 4, 3, -0.2f, 3, 1 + v);
        c->hf16 = v;
        c->seed = 100 + v;
    }
    {
        Case* c = add("NaN score at token 1, candidate 3", 3, 8, 4, 2, 2, 0.0f, 3, 1);
        c->bad_index = 1 * 4 + 3;
        Case* d = add("+inf score at token 2 and NaN at token 4 (2 tiles, 2 splits)", 6, 8, 4, 2, 2, 0.0f, 3, 2);
        d->bad_index = 4 * 4 + 1;
        d->bad_index2 = 2 * 4 + 0;
    }
    std::mt19937_64 rng(2024);
    const int ranks[] = {1, 2, 3, 4, 8, 16};
    for (int i = 0; i < 24; ++i) {
        auto R = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
        Case c{"random " + std::to_string(i), R(1, 40), R(1, 160), R(1, 40), ranks[R(0, 5)], R(1, 9),
               std::uniform_real_distribution<float>(-0.3f, 0.4f)(rng),
               std::uniform_real_distribution<float>(0.05f, 2.0f)(rng), bool(R(0, 1)), bool(R(0, 1)),
               std::uniform_real_distribution<float>(0.0f, 0.6f)(rng), 0, R(1, 4), uint64_t(i)};
        c.tile = R(1, std::min(16, c.T));
        c.ties = R(0, 3) == 0;
        cases.push_back(c);
    }
    std::printf("kernel emulation: %zu cases\n", cases.size());
    for (const auto& c : cases) run(c);
    std::printf("kernel emulation: %zu cases, %d failed\n", cases.size(), failures);
    return failures == 0 ? 0 : 1;
}
