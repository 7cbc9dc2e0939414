// carousel's native LSTM-family kernel: one pass per step, threads split the gate columns.
//
// The derivation (docs/bptt.md, "The LSTM family"; the tags are the comments below).  Per
// step t, with a = (a_i, a_f, a_g, a_o) the gate blocks a variant has (stacked i, f, g, o):
//
//   (F1)  a   = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh      gx = W_ih x_t + b for all t: torch
//   (F2)  i   = σ(a_i + p_i ⊙ s_{t-1})                     1 without input gate
//   (F3)  f   = σ(a_f + p_f ⊙ s_{t-1})                     1 without forget gate; 1 − i coupled
//   (F4)  g   = φ_in(a_g)                                   tanh, sigmoid or identity
//   (F5)  s_t = f ⊙ s_{t-1} + i ⊙ g                        the constant error carousel
//   (F6)  o   = σ(a_o + p_o ⊙ s_t)                         1 without output gate
//   (F7)  h_t = o ⊙ φ_out(s_t)                              tanh or identity
//
// Backward, walking t = T−1 … 0 with δh^rec and δs^carry from step t + 1:
//
//   (B1)  δh_t  = ∂L/∂y_t + δh_t^rec
//   (B2)  δa_o  = δh_t ⊙ φ_out(s_t) ⊙ o(1 − o)
//   (B3)  δs_t  = δs_t^carry + δh_t ⊙ o ⊙ φ_out'(s_t) + δa_o ⊙ p_o
//   (B4)  δa_g  = δs_t ⊙ i ⊙ φ_in'(a_g)                   from g: 1 − g², g(1 − g) or 1
//   (B5)  δa_i  = δs_t ⊙ g ⊙ i(1 − i)      coupled: δs_t ⊙ (g − s_{t-1}) ⊙ i(1 − i)
//   (B6)  δa_f  = δs_t ⊙ s_{t-1} ⊙ f(1 − f)
//   (B7)  δs_{t-1}^carry = δs_t ⊙ f + δa_i ⊙ p_i + δa_f ⊙ p_f
//   (B8)  δp_i += Σ_b δa_i ⊙ s_{t-1},  δp_f += Σ_b δa_f ⊙ s_{t-1},  δp_o += Σ_b δa_o ⊙ s_t
//   (B9)  δh_{t-1}^rec = δA_t W_hh
//   (B10) δX = δA W_ih, δW_ih = δAᵀ X, δW_hh = δAᵀ H_prev, δb = Σ δA   (torch, over all steps)
//
// How it runs.  Hidden units are cut into blocks of W (one SIMD vector: 8 floats with AVX2,
// 16 with AVX-512); a block carries all G of its gate columns.  W_hh is packed once per call
// (cached by the caller while the weight is unchanged) into panels Wf[block][k][gate][W], so
// the forward micro-kernel computes W_hh h_{t-1} for R rows × all G gates of one or two
// blocks in registers and applies (F2)–(F7) to the tile before anything leaves L1.  The
// blocks are split between the threads of torch's OpenMP team (Pool::run); each thread's
// panels stay in its own L2 for all T steps, and one spin barrier per step publishes h_t.
// The backward pass does (B1)–(B8) for the thread's own blocks, one barrier, then (B9) for
// the thread's own columns of δh_{t-1} from panels Wb[block][c][W] = W_hh[c][block·W + lane]:
// each thread only ever reads its own δh and δs, so one barrier per step suffices here too.
//
// Batches of unequal lengths run longest first (perm); at step t the first nlive[t] rows are
// live, and every stored value is indexed by the sequence's own position pos (t, or
// length − 1 − t in reverse), as in kernels/common.py.
//
// Built twice by kernels/native.py: -mavx2 -mfma -DVB=32 and -mavx512f … -DVB=64; the
// caller loads the widest one the CPU supports (carousel_cpu_avx512 tells).

#include <immintrin.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <new>
#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef VB
#define VB 32
#endif

typedef int64_t i64;

template <class T>
struct Vec {
    typedef T v __attribute__((vector_size(VB)));
    static constexpr int W = VB / sizeof(T);
};
typedef Vec<float>::v vf;
typedef Vec<double>::v vd;
typedef int32_t vi __attribute__((vector_size(VB)));  // as many lanes as vf

template <class V, class T>
static inline V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
template <class V, class T>
static inline void store(T* p, V v) {
    std::memcpy(p, &v, sizeof v);
}
template <class V, class T>
static inline V load_part(const T* p, int n) {  // n ≤ lanes; the rest zero
    V v = {};
    if (n == (int)(sizeof(V) / sizeof(T)))
        std::memcpy(&v, p, sizeof v);
    else
        std::memcpy(&v, p, n * sizeof(T));
    return v;
}
template <class V, class T>
static inline void store_part(T* p, V v, int n) {
    if (n == (int)(sizeof(V) / sizeof(T)))
        std::memcpy(p, &v, sizeof v);
    else
        std::memcpy(p, &v, n * sizeof(T));
}
template <class V, class T>
static inline V splat(T x) {
    return V{} + x;
}

// ---- vectorised exp, σ, tanh -------------------------------------------------------------
// float: Cephes' expf (range reduction by ln 2 in two parts, degree-6 polynomial; about 1 ulp
// on [−88, 88]); tanh: Cephes' odd polynomial below |x| = 0.625, 1 − 2/(e^{2|x|} + 1) above.
// double: libm per lane (the float64 path is for tests and exactness, not speed).

static inline vf vexp(vf x) {
    const vf hi = splat<vf>(88.3762626647949f), lo = splat<vf>(-88.3762626647949f);
    x = x > hi ? hi : x;
    x = x < lo ? lo : x;
    vf fx = x * 1.44269504088896341f + 0.5f;
    vi n = __builtin_convertvector(fx, vi);  // truncates toward zero
    vf tf = __builtin_convertvector(n, vf);
    vi adj = tf > fx;  // −1 where truncation rounded up: floor
    n = n + adj;
    tf = __builtin_convertvector(n, vf);
    x = x - tf * 0.693359375f;
    x = x - tf * -2.12194440e-4f;
    vf z = x * x;
    vf y = splat<vf>(1.9875691500e-4f);
    y = y * x + 1.3981999507e-3f;
    y = y * x + 8.3334519073e-3f;
    y = y * x + 4.1665795894e-2f;
    y = y * x + 1.6666665459e-1f;
    y = y * x + 5.0000001201e-1f;
    y = y * z + x + 1.0f;
    vi e = (n + 127) << 23;
    vf p2;
    std::memcpy(&p2, &e, sizeof p2);
    return y * p2;
}
static inline vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }
static inline vf vtanh(vf x) {
    vf ax = x < 0.0f ? -x : x;
    vf z = x * x;
    vf small = splat<vf>(-5.70498872745e-3f);
    small = small * z + 2.06390887954e-2f;
    small = small * z - 5.37397155531e-2f;
    small = small * z + 1.33314422036e-1f;
    small = small * z - 3.33332819422e-1f;
    small = small * z * x + x;
    vf big = 1.0f - 2.0f / (vexp(ax + ax) + 1.0f);
    big = x < 0.0f ? -big : big;
    return ax < 0.625f ? small : big;
}
static inline vd vexp(vd x) {
    for (int q = 0; q < Vec<double>::W; ++q) x[q] = std::exp(x[q]);
    return x;
}
static inline vd vsigmoid(vd x) {
    for (int q = 0; q < Vec<double>::W; ++q) x[q] = 1.0 / (1.0 + std::exp(-x[q]));
    return x;
}
static inline vd vtanh(vd x) {
    for (int q = 0; q < Vec<double>::W; ++q) x[q] = std::tanh(x[q]);
    return x;
}

// ---- persistent threads and one barrier per step ------------------------------------------

static inline i64 ticks() { return (i64)__rdtsc(); }

static void futex_wait(std::atomic<int>* addr, int value) {
    syscall(SYS_futex, reinterpret_cast<int*>(addr), FUTEX_WAIT_PRIVATE, value, nullptr, nullptr, 0);
}
static void futex_wake(std::atomic<int>* addr) {
    syscall(SYS_futex, reinterpret_cast<int*>(addr), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr,
            0);
}

// how long a thread spins for its partners before it sleeps (TSC ticks, ~15 µs): on a quiet
// machine they arrive well within it and nobody enters the kernel; on a crowded one the
// waiter gives its core away at once instead of spinning out its time slice
static const i64 SPIN_TICKS = 50000;

// one barrier per step: spin, then sleep on a futex; the last to arrive wakes sleepers only
struct Barrier {
    alignas(64) std::atomic<int> count{0};
    alignas(64) std::atomic<int> phase{0};
    std::atomic<int> sleepers{0};
    int n = 1;
    void wait() {
        if (n == 1) return;
        int ph = phase.load(std::memory_order_acquire);
        if (count.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
            count.store(0, std::memory_order_relaxed);
            phase.store(ph + 1, std::memory_order_seq_cst);
            if (sleepers.load(std::memory_order_seq_cst)) futex_wake(&phase);
            return;
        }
        i64 start = ticks();
        while (phase.load(std::memory_order_acquire) == ph) {
            if (ticks() - start > SPIN_TICKS) {
                sleepers.fetch_add(1, std::memory_order_seq_cst);
                while (phase.load(std::memory_order_seq_cst) == ph) futex_wait(&phase, ph);
                sleepers.fetch_sub(1, std::memory_order_seq_cst);
                return;
            }
            _mm_pause();
        }
    }
};

// A crowded machine (more runnable threads than cores) makes a per-step barrier wait for a
// descheduled partner's next time slice.  When a call's thread 0 spent most of it waiting,
// the next SOLO_CALLS calls run on one thread, then two are tried again.
static std::atomic<int> solo_calls{0};
static const int SOLO_CALLS = 16;
// below this many multiply-adds a step (B·G·H², H128 B1 has 65,536) one thread does the step
// faster than two can meet at a barrier
static const i64 MIN_SPLIT_MACS = 1 << 16;
static int threads_for(i64 requested, i64 blocks, i64 step_macs) {
    int P = (int)std::max<i64>(1, std::min<i64>(requested, blocks));
    if (step_macs < MIN_SPLIT_MACS) return 1;
    if (P > 1 && solo_calls.load(std::memory_order_relaxed) > 0) {
        solo_calls.fetch_sub(1, std::memory_order_relaxed);
        return 1;
    }
    return P;
}
static void judge(int P, i64 T, i64 sync, i64 total) {
    if (P > 1 && T >= 8 && 2 * sync > total) solo_calls.store(SOLO_CALLS, std::memory_order_relaxed);
}

// 0: calls run on the library's own pthread pool even where it was built with OpenMP (for the
// benchmark's comparison; carousel_set_openmp)
static std::atomic<int> use_openmp{1};

struct Pool {
    std::mutex m;
    std::condition_variable cv;
    uint64_t gen = 0;
    int active = 0;
    int workers = 0;
    std::function<void(int)> job;
    std::atomic<int> remaining{0};

    static void loop(Pool* p, int id) {
        uint64_t seen = 0;
        for (;;) {
            std::function<void(int)> f;
            {
                std::unique_lock<std::mutex> lk(p->m);
                p->cv.wait(lk, [&] { return p->gen != seen; });
                seen = p->gen;
                if (id >= p->active) continue;
                f = p->job;
            }
            f(id);
            if (p->remaining.fetch_sub(1, std::memory_order_seq_cst) == 1) futex_wake(&p->remaining);
        }
    }
    void run(int n, const std::function<void(int)>& f) {
        if (n <= 1) {
            f(0);
            return;
        }
#ifdef _OPENMP
        // Built with -fopenmp, the library binds to the libgomp torch has already loaded (the
        // same soname), so a call runs on torch's own OpenMP team: the worker that has just
        // finished torch's input product, still spinning in libgomp, takes our step loop at
        // once instead of competing with it for the second core.  Where the team comes back
        // smaller than asked (nested in a parallel region, a thread limit), nobody runs and
        // the pthread pool below serves.
        if (use_openmp.load(std::memory_order_relaxed) && !omp_in_parallel()) {
            int got = 0;
#pragma omp parallel num_threads(n)
            {
#pragma omp single
                got = omp_get_num_threads();
                if (got == n) f(omp_get_thread_num());
            }
            if (got == n) return;
        }
#endif
        {
            std::unique_lock<std::mutex> lk(m);
            while (workers < n - 1) {
                std::thread(loop, this, ++workers).detach();
            }
            job = f;
            active = n;
            remaining.store(n - 1, std::memory_order_release);
            ++gen;
        }
        cv.notify_all();
        f(0);
        i64 start = ticks();
        for (int left; (left = remaining.load(std::memory_order_seq_cst)) > 0;) {
            if (ticks() - start > SPIN_TICKS)
                futex_wait(&remaining, left);
            else
                _mm_pause();
        }
    }
};

static Pool* pool() {
    static Pool* p = new Pool();
    return p;
}
static std::mutex& call_mutex() {
    static std::mutex* m = new std::mutex();
    return *m;
}
// after fork() the child has none of the parent's worker threads: start a fresh pool
// (and libgomp's team does not survive fork(): a child's parallel region would wait forever
// for threads it does not have, so the child's calls use the fresh pool instead)
static void atfork_child() {
    use_openmp.store(0);
    new (pool()) Pool();
    new (&call_mutex()) std::mutex();
}
static int register_atfork() { return pthread_atfork(nullptr, nullptr, atfork_child); }
static int atfork_registered = register_atfork();

// below this many weights (G·H², H256 with 4 gates has 262,144) one thread packs W_hh
static const i64 MIN_SPLIT_PACK = 1 << 18;

// the blocks [lo, hi) of thread p among P, for NB blocks
static inline void share(i64 NB, int P, int p, i64& lo, i64& hi) {
    lo = NB * p / P;
    hi = NB * (p + 1) / P;
}

// ---- arguments --------------------------------------------------------------------------

struct Args {
    i64 T, B, H, G;
    i64 has_i, own_f, coupled, has_o, act_in, act_out, store, rev;
    i64 oi, of, og, oo;  // gate blocks' offsets in units of H (−1 absent)
    i64 threads;
    const i64* perm;
    const i64* lengths;
    const i64* nlive;
    const void* wf;    // forward panels, from carousel_pack_*
    const void* wb;    // backward panels
    const void* peep;  // (3, H): p_i, p_f, p_o (zeros where absent)
    // forward
    void* gx;   // (T, B, GH): in W_ih x + b; out the activations i, f, g, o (store)
    void* h;    // (B, H) kernel order: in h_0, out each sequence's final h
    void* c;    // (B, H) kernel order: in s_0, out each sequence's final s
    void* out;  // (T, B, H): h_t
    void* cs;   // (T, B, H): s_t (store)
    void* hbuf; // (2, B, H) scratch
    // backward
    const void* h0;    // (B, H) batch order
    const void* c0;    // (B, H) batch order
    const void* dout;  // (T, B, H)
    void* dh;          // (B, H) kernel order: in δh_n, out δh_0
    void* dc;          // (B, H) kernel order: in δs_n, out δs_0
    void* dA;          // (T, B, GH)
    void* hprev;       // (T, B, H)
    void* dpeep;       // (3, H)
    i64* prof;         // null, or 8 counters per thread: TSC ticks of each phase (PROF_*)
};

// the phases a profiled call counts, per thread (bench/cells.py --profile prints them)
enum { PROF_FWD_PRODUCT, PROF_FWD_CELL, PROF_FWD_SYNC, PROF_BWD_CELL, PROF_BWD_SYNC,
       PROF_BWD_PRODUCT, PROF_TOTAL = 7 };

static inline i64 pos_of(const Args& a, i64 b, i64 t) {
    return a.rev ? a.lengths[b] - 1 - t : t;
}

// ---- packing ----------------------------------------------------------------------------

// Wf[blk][k][g][lane] = W_hh[g·H + blk·W + lane][k];  Wb[blk][c][lane] = W_hh[c][blk·W + lane]
template <class T>
static void pack(const T* w, i64 G, i64 H, T* wf, T* wb, int threads) {
    constexpr int W = Vec<T>::W;
    const i64 NB = (H + W - 1) / W, GH = G * H;
    int P = (int)std::min<i64>(threads, NB);
    // a small weight packs in microseconds on one thread; waking a partner for it costs
    // more, and on a crowded machine milliseconds (gradcheck's thousands of tiny calls)
    if (P < 1 || G * H * H < MIN_SPLIT_PACK) P = 1;
    pool()->run(P, [&](int p) {
        i64 lo, hi;
        share(NB, P, p, lo, hi);
        for (i64 blk = lo; blk < hi; ++blk) {
            T* f = wf + blk * H * G * W;
            for (i64 g = 0; g < G; ++g)
                for (int q = 0; q < W; ++q) {  // read W_hh's rows in order
                    i64 u = blk * W + q;
                    const T* row = w + (g * H + u) * H;
                    if (u < H)
                        for (i64 k = 0; k < H; ++k) f[(k * G + g) * W + q] = row[k];
                    else
                        for (i64 k = 0; k < H; ++k) f[(k * G + g) * W + q] = T(0);
                }
            T* bp = wb + blk * GH * W;
            for (i64 c = 0; c < GH; ++c)
                for (int q = 0; q < W; ++q) {
                    i64 u = blk * W + q;
                    bp[c * W + q] = u < H ? w[c * H + u] : T(0);
                }
        }
    });
}

// ---- forward ----------------------------------------------------------------------------

// acc[r][u][g] = Σ_k h_{t−1}[row r][k] · W_hh[g·H + (blk+u)·W + lane][k]   (F1)'s recurrent part
template <class T, int R, int NU, int G>
static inline void fwd_product(const T* const* hrow, const T* panel, i64 H, i64 pstride,
                               typename Vec<T>::v (*acc)[NU][G]) {
    typedef typename Vec<T>::v V;
    constexpr int W = Vec<T>::W;
    V s[R][NU][G];
    for (int r = 0; r < R; ++r)
        for (int u = 0; u < NU; ++u)
            for (int g = 0; g < G; ++g) s[r][u][g] = V{};
    for (i64 k = 0; k < H; ++k) {
        V hb[R];
        for (int r = 0; r < R; ++r) hb[r] = splat<V>(hrow[r][k]);
        for (int u = 0; u < NU; ++u)
            for (int g = 0; g < G; ++g) {
                V w = load<V>(panel + u * pstride + (k * G + g) * W);
                for (int r = 0; r < R; ++r) s[r][u][g] += hb[r] * w;
            }
    }
    for (int r = 0; r < R; ++r)
        for (int u = 0; u < NU; ++u)
            for (int g = 0; g < G; ++g) acc[r][u][g] = s[r][u][g];
}

// (F2)–(F7) for one row j and one block of units [base, base + n) from a = acc + gx
template <class T, int G>
static inline void fwd_cell(const Args& a, i64 t, i64 j, i64 base, int n,
                            const typename Vec<T>::v* acc, T* hnext) {
    typedef typename Vec<T>::v V;
    const i64 H = a.H, GH = G * H, B = a.B;
    const i64 b = a.perm[j];
    const i64 pos = pos_of(a, b, t);
    T* grow = (T*)a.gx + (pos * B + b) * GH;
    T* c = (T*)a.c + j * H + base;
    const T* peep = (const T*)a.peep;
    V g[G];
    for (int q = 0; q < G; ++q) g[q] = acc[q] + load_part<V>(grow + q * H + base, n);  // (F1)
    const V one = splat<V>(T(1));
    V sp = load_part<V>(c, n);
    V i = one, f = one, o = one, z;
    if (a.has_i) i = vsigmoid(g[a.oi] + load_part<V>(peep + base, n) * sp);  // (F2)
    if (a.own_f)
        f = vsigmoid(g[a.of] + load_part<V>(peep + H + base, n) * sp);  // (F3)
    else if (a.coupled)
        f = one - i;
    z = g[a.og];  // (F4)
    if (a.act_in == 0)
        z = vtanh(z);
    else if (a.act_in == 1)
        z = vsigmoid(z);
    V s = f * sp + i * z;  // (F5)
    if (a.has_o) o = vsigmoid(g[a.oo] + load_part<V>(peep + 2 * H + base, n) * s);  // (F6)
    V hn = o * (a.act_out == 0 ? vtanh(s) : s);  // (F7)
    store_part(c, s, n);
    store_part(hnext + j * H + base, hn, n);
    store_part((T*)a.out + (pos * B + b) * H + base, hn, n);
    if (a.store) {  // the activations for the backward pass, in place of gx
        if (a.has_i) store_part(grow + a.oi * H + base, i, n);
        if (a.own_f) store_part(grow + a.of * H + base, f, n);
        store_part(grow + a.og * H + base, z, n);
        if (a.has_o) store_part(grow + a.oo * H + base, o, n);
        store_part((T*)a.cs + (pos * B + b) * H + base, s, n);
    }
    if (t == a.lengths[b] - 1) store_part((T*)a.h + j * H + base, hn, n);  // final h
}

template <class T, int R, int NU, int G>
static inline void fwd_tile(const Args& a, i64 t, i64 j0, i64 blk, const T* hcur, T* hnext,
                            i64* prof) {
    typedef typename Vec<T>::v V;
    constexpr int W = Vec<T>::W;
    const i64 H = a.H;
    const T* hrow[R];
    for (int r = 0; r < R; ++r) hrow[r] = hcur + (j0 + r) * H;
    V acc[R][NU][G];
    const T* panel = (const T*)a.wf + blk * H * G * W;
    i64 t0 = a.prof ? ticks() : 0;
    fwd_product<T, R, NU, G>(hrow, panel, H, H * G * W, acc);
    i64 t1 = a.prof ? ticks() : 0;
    for (int r = 0; r < R; ++r)
        for (int u = 0; u < NU; ++u) {
            i64 base = (blk + u) * W;
            int n = (int)std::min<i64>(W, H - base);
            fwd_cell<T, G>(a, t, j0 + r, base, n, acc[r][u], hnext);
        }
    if (a.prof) {
        i64 t2 = ticks();
        prof[PROF_FWD_PRODUCT] += t1 - t0;
        prof[PROF_FWD_CELL] += t2 - t1;
    }
}

template <class T, int G>
static void forward(const Args& a) {
    constexpr int W = Vec<T>::W;
    const i64 H = a.H, B = a.B, T_ = a.T;
    const i64 NB = (H + W - 1) / W;
    const int P = threads_for(a.threads, NB, a.B * a.G * H * H);
    T* hbuf = (T*)a.hbuf;
    std::memcpy(hbuf, a.h, sizeof(T) * B * H);
    Barrier bar;
    bar.n = P;
    pool()->run(P, [&](int p) {
        i64 lo, hi;
        share(NB, P, p, lo, hi);
        i64 mine[8] = {};
        i64* prof = mine;
        i64 start = ticks(), waited = 0;
        for (i64 t = 0; t < T_; ++t) {
            const i64 n = a.nlive[t];
            const T* hcur = hbuf + (t & 1) * B * H;
            T* hnext = hbuf + ((t + 1) & 1) * B * H;
            if (n == 1) {
                i64 blk = lo;
                for (; blk + 2 <= hi; blk += 2) fwd_tile<T, 1, 2, G>(a, t, 0, blk, hcur, hnext, prof);
                for (; blk < hi; ++blk) fwd_tile<T, 1, 1, G>(a, t, 0, blk, hcur, hnext, prof);
            } else {
                for (i64 blk = lo; blk < hi; ++blk) {
                    i64 j = 0;
                    for (; j + 2 <= n; j += 2) fwd_tile<T, 2, 1, G>(a, t, j, blk, hcur, hnext, prof);
                    for (; j < n; ++j) fwd_tile<T, 1, 1, G>(a, t, j, blk, hcur, hnext, prof);
                }
            }
            i64 t0 = ticks();
            bar.wait();  // h_t complete before any thread reads it
            waited += ticks() - t0;
        }
        i64 total = ticks() - start;
        if (p == 0) judge(P, T_, waited, total);
        if (a.prof) {
            prof[PROF_FWD_SYNC] = waited;
            prof[PROF_TOTAL] = total;
            for (int q = 0; q < 8; ++q) a.prof[p * 8 + q] += prof[q];
        }
    });
}

// ---- backward ---------------------------------------------------------------------------

// (B1)–(B8) for row j, units [base, base + n); writes δA_t's columns of these units
template <class T>
static inline void bwd_cell(const Args& a, i64 t, i64 j, i64 base, int n) {
    typedef typename Vec<T>::v V;
    const i64 H = a.H, GH = a.G * H, B = a.B;
    const i64 b = a.perm[j];
    const i64 pos = pos_of(a, b, t);
    const i64 pp = a.rev ? pos + 1 : pos - 1;
    const T* grow = (const T*)a.gx + (pos * B + b) * GH;  // the saved activations i, f, g, o
    const T* cs = (const T*)a.cs;
    const T* peep = (const T*)a.peep;
    const V one = splat<V>(T(1)), zero = V{};
    const T* sp_ = t == 0 ? (const T*)a.c0 + b * H : cs + (pp * B + b) * H;
    const T* hp_ = t == 0 ? (const T*)a.h0 + b * H : (const T*)a.out + (pp * B + b) * H;
    store_part((T*)a.hprev + (pos * B + b) * H + base, load_part<V>(hp_ + base, n), n);
    V sp = load_part<V>(sp_ + base, n);
    V st = load_part<V>(cs + (pos * B + b) * H + base, n);
    V i = a.has_i ? load_part<V>(grow + a.oi * H + base, n) : one;
    V f = a.own_f ? load_part<V>(grow + a.of * H + base, n) : (a.coupled ? one - i : one);
    V g = load_part<V>(grow + a.og * H + base, n);
    V o = a.has_o ? load_part<V>(grow + a.oo * H + base, n) : one;
    T* dhp = (T*)a.dh + j * H + base;
    T* dcp = (T*)a.dc + j * H + base;
    V dh = load_part<V>(dhp, n) + load_part<V>((const T*)a.dout + (pos * B + b) * H + base, n);  // (B1)
    V phi = a.act_out == 0 ? vtanh(st) : st;
    V dao = a.has_o ? dh * phi * o * (one - o) : zero;  // (B2)
    V po = load_part<V>(peep + 2 * H + base, n);
    V ds = load_part<V>(dcp, n) + dh * o * (a.act_out == 0 ? one - phi * phi : one) + dao * po;  // (B3)
    V dphi_in = a.act_in == 0 ? one - g * g : (a.act_in == 1 ? g * (one - g) : one);
    V dag = ds * i * dphi_in;  // (B4)
    V dai = a.has_i ? ds * (a.coupled ? g - sp : g) * i * (one - i) : zero;  // (B5)
    V daf = a.own_f ? ds * sp * f * (one - f) : zero;  // (B6)
    V pi = load_part<V>(peep + base, n), pf = load_part<V>(peep + H + base, n);
    store_part(dcp, ds * f + dai * pi + daf * pf, n);  // (B7)
    T* dp = (T*)a.dpeep;  // (B8)
    store_part(dp + base, load_part<V>(dp + base, n) + dai * sp, n);
    store_part(dp + H + base, load_part<V>(dp + H + base, n) + daf * sp, n);
    store_part(dp + 2 * H + base, load_part<V>(dp + 2 * H + base, n) + dao * st, n);
    T* drow = (T*)a.dA + (pos * B + b) * GH;
    if (a.has_i) store_part(drow + a.oi * H + base, dai, n);
    if (a.own_f) store_part(drow + a.of * H + base, daf, n);
    store_part(drow + a.og * H + base, dag, n);
    if (a.has_o) store_part(drow + a.oo * H + base, dao, n);
}

// δh_{t−1}[row rows[r]][(blk+u)·W + lane] = Σ_c δA_t[r][c] · W_hh[c][(blk+u)·W + lane]   (B9)
// S independent partial sums over c hide the FMA latency when R·NU is small
template <class T, int R, int NU, int S>
static inline void bwd_tile(const Args& a, const T* const* drow, const i64* rows, i64 blk) {
    typedef typename Vec<T>::v V;
    constexpr int W = Vec<T>::W;
    const i64 H = a.H, GH = a.G * H;
    const T* panel = (const T*)a.wb + blk * GH * W;
    const i64 pstride = GH * W;
    V s[S][R][NU];
    for (int q = 0; q < S; ++q)
        for (int r = 0; r < R; ++r)
            for (int u = 0; u < NU; ++u) s[q][r][u] = V{};
    i64 c = 0;
    for (; c + S <= GH; c += S)
        for (int q = 0; q < S; ++q)
            for (int u = 0; u < NU; ++u) {
                V w = load<V>(panel + u * pstride + (c + q) * W);
                for (int r = 0; r < R; ++r) s[q][r][u] += splat<V>(drow[r][c + q]) * w;
            }
    for (; c < GH; ++c)
        for (int u = 0; u < NU; ++u) {
            V w = load<V>(panel + u * pstride + c * W);
            for (int r = 0; r < R; ++r) s[0][r][u] += splat<V>(drow[r][c]) * w;
        }
    for (int r = 0; r < R; ++r)
        for (int u = 0; u < NU; ++u) {
            V v = s[0][r][u];
            for (int q = 1; q < S; ++q) v += s[q][r][u];
            i64 base = (blk + u) * W;
            store_part((T*)a.dh + rows[r] * H + base, v, (int)std::min<i64>(W, H - base));
        }
}

template <class T>
static void backward(const Args& a) {
    constexpr int W = Vec<T>::W;
    const i64 H = a.H, B = a.B, GH = a.G * H;
    const i64 NB = (H + W - 1) / W;
    const int P = threads_for(a.threads, NB, a.B * a.G * H * H);
    Barrier bar;
    bar.n = P;
    pool()->run(P, [&](int p) {
        i64 lo, hi;
        share(NB, P, p, lo, hi);
        i64 prof[8] = {};
        i64 start = ticks(), waited = 0;
        for (i64 t = a.T - 1; t >= 0; --t) {
            const i64 n = a.nlive[t];
            i64 t0 = a.prof ? ticks() : 0;
            for (i64 blk = lo; blk < hi; ++blk)
                for (i64 j = 0; j < n; ++j) {
                    i64 base = blk * W;
                    bwd_cell<T>(a, t, j, base, (int)std::min<i64>(W, H - base));
                }
            i64 t1 = ticks();
            bar.wait();  // δA_t complete before any thread reads it
            i64 t2 = ticks();
            waited += t2 - t1;
            auto row = [&](i64 j) {
                i64 b = a.perm[j];
                return (const T*)a.dA + (pos_of(a, b, t) * B + b) * GH;
            };
            if (n == 1) {
                const T* d[1] = {row(0)};
                const i64 r[1] = {0};
                i64 blk = lo;
                for (; blk + 4 <= hi; blk += 4) bwd_tile<T, 1, 4, 2>(a, d, r, blk);
                for (; blk + 2 <= hi; blk += 2) bwd_tile<T, 1, 2, 4>(a, d, r, blk);
                for (; blk < hi; ++blk) bwd_tile<T, 1, 1, 8>(a, d, r, blk);
            } else {
                i64 j = 0;
                for (; j + 4 <= n; j += 4) {
                    const T* d[4] = {row(j), row(j + 1), row(j + 2), row(j + 3)};
                    const i64 r[4] = {j, j + 1, j + 2, j + 3};
                    i64 blk = lo;
                    for (; blk + 2 <= hi; blk += 2) bwd_tile<T, 4, 2, 1>(a, d, r, blk);
                    for (; blk < hi; ++blk) bwd_tile<T, 4, 1, 2>(a, d, r, blk);
                }
                for (; j < n; ++j) {
                    const T* d[1] = {row(j)};
                    const i64 r[1] = {j};
                    i64 blk = lo;
                    for (; blk + 2 <= hi; blk += 2) bwd_tile<T, 1, 2, 4>(a, d, r, blk);
                    for (; blk < hi; ++blk) bwd_tile<T, 1, 1, 8>(a, d, r, blk);
                }
            }
            // no barrier here: the next step's (B1)–(B8) read only this thread's own δh, δs
            if (a.prof) {
                prof[PROF_BWD_CELL] += t1 - t0;
                prof[PROF_BWD_SYNC] += t2 - t1;
                prof[PROF_BWD_PRODUCT] += ticks() - t2;
            }
        }
        i64 total = ticks() - start;
        if (p == 0) judge(P, a.T, waited, total);
        if (a.prof) {
            prof[PROF_TOTAL] = total;
            for (int q = 0; q < 8; ++q) a.prof[p * 8 + q] += prof[q];
        }
    });
}

// ---- entry points -----------------------------------------------------------------------

template <class T>
static int forward_any(const Args& a) {
    switch (a.G) {
        case 1: forward<T, 1>(a); return 0;
        case 2: forward<T, 2>(a); return 0;
        case 3: forward<T, 3>(a); return 0;
        case 4: forward<T, 4>(a); return 0;
    }
    return 1;
}

#ifndef CAROUSEL_SOURCE_HASH
#define CAROUSEL_SOURCE_HASH 0ULL
#endif

extern "C" {

uint64_t carousel_source_hash() { return CAROUSEL_SOURCE_HASH; }

#ifdef _OPENMP
int carousel_openmp() { return use_openmp.load(); }
#else
int carousel_openmp() { return 0; }
#endif
void carousel_set_openmp(int on) { use_openmp.store(on ? 1 : 0); }

int carousel_vector_bytes() { return VB; }

int carousel_cpu_avx512() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
}

int carousel_cpu_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// panel sizes in elements, for dtype_bytes 4 or 8
i64 carousel_pack_size(i64 G, i64 H, i64 dtype_bytes) {
    i64 W = VB / dtype_bytes, NB = (H + W - 1) / W;
    return NB * W * G * H;
}

int carousel_pack_f32(const float* w, i64 G, i64 H, float* wf, float* wb, i64 threads) {
    std::lock_guard<std::mutex> lk(call_mutex());
    pack<float>(w, G, H, wf, wb, (int)threads);
    return 0;
}
int carousel_pack_f64(const double* w, i64 G, i64 H, double* wf, double* wb, i64 threads) {
    std::lock_guard<std::mutex> lk(call_mutex());
    pack<double>(w, G, H, wf, wb, (int)threads);
    return 0;
}
int carousel_lstm_forward_f32(const Args* a) {
    std::lock_guard<std::mutex> lk(call_mutex());
    return forward_any<float>(*a);
}
int carousel_lstm_forward_f64(const Args* a) {
    std::lock_guard<std::mutex> lk(call_mutex());
    return forward_any<double>(*a);
}
int carousel_lstm_backward_f32(const Args* a) {
    std::lock_guard<std::mutex> lk(call_mutex());
    backward<float>(*a);
    return 0;
}
int carousel_lstm_backward_f64(const Args* a) {
    std::lock_guard<std::mutex> lk(call_mutex());
    backward<double>(*a);
    return 0;
}
}
