// TTSparseConv: one CEPD conv (TT chain of 1x1 / KxK steps + filter-sparse branch) on the CPU.
//
// float32, NCHW, batch >= 1. A layer is created once (weights packed into balanced blocks of at
// most 6 rows), then run any number of times.
// GEMMs run on 6 x 32 register tiles (narrower on a panel's tail; AVX-512: 12 zmm accumulators;
// the AVX2 and generic builds split the same vectors) whose B rows are read in place through
// row offsets (no packing of activations). The tile is compiled once per instruction set
// (tile_*.cpp, target set per file) and picked by cpuid when the library loads, so one build
// runs on machines with and without AVX-512. On AArch64 the builds are NEON and generic.
// The whole chain is fused per panel of 32 pixels: each step's 6 x 32 tiles land in a small
// per-thread panel buffer that is the next step's B (it stays in L1), the sparse branch S runs on
// the same panel, and the last step's tile epilogue does scale, bias, the sparse scatter-add,
// the residual and the activation. A layer with a KxK step runs in two passes (one pool
// dispatch each): pass A runs the 1x1 steps before the KxK step per input panel and writes
// into a zero-padded, stride-phase-split copy ("planes"; also of x for S), pass B runs the KxK
// step, the steps after it, S and the epilogue per output panel. A strided window is read
// from the phase planes, so no im2col is ever built. A 3x3 stride-1 S where it pays runs as a
// Winograd F(2x2, 3x3) conv instead: its products join pass A, one more dispatch transforms
// them into S's panels. With few panels (small maps) the chain runs step by step instead (one
// dispatch per step, tasks over panels x row blocks), so both threads stay busy. The planes
// and per-panel buffers belong to the layer (reused across runs); the thread pool spins briefly
// after each job so back-to-back dispatches are cheap, and hands tasks out from both ends (the
// caller the front, workers the back) so each thread keeps one part of the map.
//
// C ABI (ctypes): cepd_tts_create / cepd_tts_run / cepd_tts_destroy / cepd_tts_set_threads.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>


#include "tile.h"

#define CEPD_DECLARE_ISA(ns)                                                            \
  namespace ns {                                                                      \
  void tile(const float*, const float*, const int64_t*, int, int, float*, int, int);        \
  void finish(const float*, int, int, int, int, const cepd::Epilogue*, const float*, const float*, float*, \
              size_t, size_t);                                                                 \
  void tile_finish(const float*, const float*, const int64_t*, int, int, int, const cepd::Epilogue*,     \
                   const float*, const float*, float*, size_t, size_t);                           \
  void copy_rows(float*, size_t, const float*, size_t, int, int);                                      \
  void split2(float*, float*, const float*, int);                                                      \
  void wino_in(const float*, int, size_t, int, int, int, int, int, int, int, int, float*, size_t, size_t); \
  void wino_out(const float*, size_t, int, float*);                                                      \
  }
// The tile builds of this machine (setup.py compiles the matching tile_*.cpp): x86-64 with
// GCC/clang: AVX-512, AVX2 and generic (SSE); AArch64: NEON and generic; else generic only.
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CEPD_X86_TILES 1
CEPD_DECLARE_ISA(cepd_tile_avx512)
CEPD_DECLARE_ISA(cepd_tile_avx2)
#elif defined(__aarch64__)
#define CEPD_NEON_TILES 1
CEPD_DECLARE_ISA(cepd_tile_neon)
#endif
CEPD_DECLARE_ISA(cepd_tile_generic)

namespace {

using cepd::Epilogue;
using cepd::MR;
using cepd::NR;

// ---- thread pool -----------------------------------------------------------------------
// A persistent pool: the caller works too; workers spin a short while after each job (so the
// next layer's dispatch is cheap) and then sleep on a condition variable.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  // n threads in all (the caller is one), clamped to [1, hardware threads]: more than the machine
  // runs at once only slows a spinning pool down. Where the system refuses a thread (a process or
  // memory limit), the pool keeps the ones it got instead of aborting.
  void resize(int n) {
    const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
    n = std::clamp(n, 1, cores);
    std::lock_guard<std::mutex> one_at_a_time(run_mu_);
    if (n == size_) return;
    stop();
    quit_ = false;
    const uint64_t e = epoch_.load();
    for (int i = 1; i < n; ++i) {
      try {
        workers_.emplace_back([this, e] { loop(e); });
      } catch (const std::system_error&) {
        break;
      }
    }
    size_ = int(workers_.size()) + 1;
  }
  int size() const { return size_; }

  // Run fn(task) for task in [0, ntasks) on all threads; returns when every task is done. The
  // caller never waits for a worker that has not joined yet (a sleeping worker takes tens of
  // microseconds to wake on a VM): it runs whatever tasks are left itself, closes the job, and
  // waits only for the workers inside it. The caller takes tasks from the front, the workers
  // from the back: tasks numbered in map order give each thread one contiguous part of the
  // map, so what one pass writes (planes, panel buffers) the next mostly reads on the same core.
  void run(int ntasks, const std::function<void(int)>& fn) {
    std::lock_guard<std::mutex> one_at_a_time(run_mu_);
    if (size_ == 1 || ntasks <= 1) {
      for (int t = 0; t < ntasks; ++t) fn(t);
      return;
    }
    fn_ = &fn;
    left_.store(uint64_t(ntasks) << 32, std::memory_order_relaxed);
    const uint64_t e = epoch_.load(std::memory_order_relaxed) + 1;
    open_.store(e, std::memory_order_seq_cst);
    epoch_.store(e, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lk(mu_);
      cv_.notify_all();
    }
    work(true);
    open_.store(0, std::memory_order_seq_cst);  // late workers no longer join
    while (active_.load(std::memory_order_seq_cst) > 0) cpu_relax();
    fn_ = nullptr;
  }

 private:
  // left_ holds the tasks not yet taken, [lo, hi): lo in the low 32 bits, hi in the high ones.
  void work(bool front) {
    uint64_t r = left_.load(std::memory_order_relaxed);
    for (;;) {
      const uint32_t lo = uint32_t(r), hi = uint32_t(r >> 32);
      if (lo >= hi) return;
      const uint64_t taken = front ? r + 1 : (uint64_t(hi - 1) << 32) | lo;
      if (left_.compare_exchange_weak(r, taken, std::memory_order_acq_rel, std::memory_order_relaxed)) {
        (*fn_)(int(front ? lo : hi - 1));
        r = left_.load(std::memory_order_relaxed);
      }
    }
  }
  void loop(uint64_t seen) {
    for (;;) {
      // spin ~50 us for the next job, then sleep
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; epoch_.load(std::memory_order_acquire) == seen && !quit_.load(); ++i) {
        cpu_relax();
        if ((i & 255) == 255 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(50)) break;
      }
      if (epoch_.load(std::memory_order_acquire) == seen && !quit_.load()) {
        std::unique_lock<std::mutex> lk(mu_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        cv_.wait(lk, [&] { return quit_.load() || epoch_.load(std::memory_order_seq_cst) != seen; });
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      }
      if (quit_.load()) return;
      seen = epoch_.load(std::memory_order_seq_cst);
      active_.fetch_add(1, std::memory_order_seq_cst);
      if (open_.load(std::memory_order_seq_cst) == seen) work(false);  // else the job is over
      active_.fetch_sub(1, std::memory_order_seq_cst);
    }
  }
  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_.store(true);
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  int size_ = 0;
  std::vector<std::thread> workers_;
  std::mutex mu_, run_mu_;
  std::condition_variable cv_;
  const std::function<void(int)>* fn_ = nullptr;
  std::atomic<uint64_t> left_{0};
  std::atomic<uint64_t> epoch_{0};
  std::atomic<uint64_t> open_{0};  // the epoch of the job still taking workers, or 0
  std::atomic<int> active_{0}, sleepers_{0};
  std::atomic<bool> quit_{false};
};

Pool& pool() {
  static Pool p(std::max(1u, std::min(2u, std::thread::hardware_concurrency())));
  return p;
}

// ---- packed weights --------------------------------------------------------------------
// A packed: M rows in blocks of at most MR, balanced (13 rows: 5 + 4 + 4, not 6 + 6 + 1: a
// block of one or two rows is bound by the FMA latency, not the FMA throughput); per block,
// K x MR floats (row-major in k), the lanes past its rows zero.
struct Packed {
  int M = 0, K = 0;
  std::vector<float> data;
  int blocks() const { return (M + MR - 1) / MR; }
  int row0(int b) const { return b * (M / blocks()) + std::min(b, M % blocks()); }  // block b's first row
  int rows(int b) const { return M / blocks() + (b < M % blocks()); }
  const float* block(int b) const { return data.data() + static_cast<size_t>(b) * K * MR; }
};

Packed pack(const float* a, int M, int K) {
  Packed p;
  p.M = M;
  p.K = K;
  p.data.assign(static_cast<size_t>(p.blocks()) * K * MR + 8, 0.0f);  // slack: tile_cols reads 8 floats per k
  for (int b = 0; b < p.blocks(); ++b)
    for (int k = 0; k < K; ++k)
      for (int i = 0; i < p.rows(b); ++i)
        p.data[(static_cast<size_t>(b) * K + k) * MR + i] = a[static_cast<size_t>(p.row0(b) + i) * K + k];
  return p;
}

// The register tile, one build per instruction set (tile_*.cpp), picked by cpuid once.
// x86-64: 2 AVX-512F (+ VL), 1 AVX2 + FMA, 0 generic. AArch64: 1 NEON (Advanced SIMD is part of
// every AArch64 CPU), 0 generic.
int detect_isa() {
#if defined(CEPD_X86_TILES)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#elif defined(CEPD_NEON_TILES)
  return 1;
#endif
  return 0;
}

struct Isa {
  cepd::TileFn tile;
  cepd::FinishFn finish;
  cepd::TileFinishFn tile_finish;
  cepd::CopyRowsFn copy_rows;
  cepd::Split2Fn split2;
  cepd::WinoInFn wino_in;
  cepd::WinoOutFn wino_out;
  // Whether Winograd for S can pay with this build (auto mode): measured with AVX-512 and AVX2
  // (see winograd_mode); the NEON and generic builds keep the direct window (unmeasured there).
  bool wino_pays = false;
};

Isa isa_for(int level) {
  switch (level) {
#if defined(CEPD_X86_TILES)
    case 2:
      return Isa{&cepd_tile_avx512::tile, &cepd_tile_avx512::finish, &cepd_tile_avx512::tile_finish,
                 &cepd_tile_avx512::copy_rows, &cepd_tile_avx512::split2,
                 &cepd_tile_avx512::wino_in, &cepd_tile_avx512::wino_out, true};
    case 1:
      return Isa{&cepd_tile_avx2::tile, &cepd_tile_avx2::finish, &cepd_tile_avx2::tile_finish,
                 &cepd_tile_avx2::copy_rows, &cepd_tile_avx2::split2,
                 &cepd_tile_avx2::wino_in, &cepd_tile_avx2::wino_out, true};
#elif defined(CEPD_NEON_TILES)
    case 1:
      return Isa{&cepd_tile_neon::tile, &cepd_tile_neon::finish, &cepd_tile_neon::tile_finish,
                 &cepd_tile_neon::copy_rows, &cepd_tile_neon::split2,
                 &cepd_tile_neon::wino_in, &cepd_tile_neon::wino_out};
#endif
    default:
      return Isa{&cepd_tile_generic::tile, &cepd_tile_generic::finish, &cepd_tile_generic::tile_finish,
                 &cepd_tile_generic::copy_rows, &cepd_tile_generic::split2,
                 &cepd_tile_generic::wino_in, &cepd_tile_generic::wino_out};
  }
}

int isa_level = detect_isa();
Isa isa_fns = isa_for(isa_level);  // cepd_tts_use_isa may lower it (tests: every build checked)

// ---- geometry --------------------------------------------------------------------------
struct ConvGeom {
  int kh, kw, sh, sw, ph, pw, dh, dw;
};

// d[m] = v[m * step] for m < n (step 2: the instruction set's split2).
inline void deinterleave(float* __restrict d, const float* __restrict v, int n, int step) {
  if (step == 2) return isa_fns.split2(d, nullptr, v, 2 * n - 1);
  for (int m = 0; m < n; ++m) d[m] = v[size_t(m) * step];
}

// "Planes": a zero-padded copy of a (c x h x w) map, split into sh x sw stride phases, each
// hq x wq, so that a strided KxK window is a set of row offsets into it and output (oy, ox)
// is column oy * wq + ox (columns with ox >= wo are computed and dropped). Stride 1: one
// phase, the padded copy with rows sharing their padding columns. Padding positions are
// written once (zero) and never again.
struct Planes {
  ConvGeom g{};
  int h = 0, w = 0, wq = 0, hq = 0;
  size_t plane = 0, cs = 0;  // one phase plane; one channel (all phases)

  Planes() = default;
  Planes(const ConvGeom& g_, int h_, int w_, int ho, int wo) : g(g_), h(h_), w(w_) {
    const int hp = h + 2 * g.ph, wp = w + 2 * g.pw;
    // stride 1: rows share their padding columns (row r's right padding is row r + 1's left),
    // so a row is w + pw columns, not w + 2 pw: fewer computed-and-dropped columns (3x3 at 14x14:
    // 210 instead of 224)
    wq = g.sw == 1 ? std::max(wp - g.pw, wo)
                   : std::max((wp + g.sw - 1) / g.sw, wo + ((g.kw - 1) * g.dw) / g.sw);
    hq = std::max((hp + g.sh - 1) / g.sh, ho + ((g.kh - 1) * g.dh) / g.sh) + 1;
    plane = size_t(hq) * wq;
    cs = plane * g.sh * g.sw;
  }
  size_t size(int c) const { return cs * c + 2 * NR + wq; }  // with slack for over-reads
  int64_t tap(int i, int j) const {
    const int y = i * g.dh, x = j * g.dw;
    return int64_t(((y % g.sh) * g.sw + x % g.sw) * plane) + int64_t(y / g.sh) * wq + x / g.sw;
  }
  // Write one channel's whole map (h x w, row-major); stride 1: one strided row copy.
  void store_map(float* ch, const float* v) const {
    if (g.sh == 1 && g.sw == 1) return isa_fns.copy_rows(ch + size_t(g.ph) * wq + g.pw, wq, v, w, h, w);
    for (int i = 0; i < h; ++i) store_row(ch, v + size_t(i) * w, w, i, 0);
  }
  // Write len values of one channel's map (pixels p, p+1, ... in row-major h x w order).
  void store(float* ch, const float* v, int len, size_t p) const {
    int y = int(p / w), x = int(p % w);
    while (len > 0) {
      const int run = std::min(len, w - x);
      store_row(ch, v, run, y, x);
      v += run, len -= run, x = 0, ++y;
    }
  }
  // Write v[0..run) at row y, columns x, x+1, ... of one channel's map.
  void store_row(float* ch, const float* v, int run, int y, int x) const {
    const int yp = y + g.ph, xp = x + g.pw;
    if (g.sh == 1 && g.sw == 1) {
      isa_fns.copy_rows(ch + size_t(yp) * wq + xp, 0, v, 0, 1, run);
      return;
    }
    // phase q of the row gets every sw-th value (divisions by 2 as shifts: the common case)
    const int ya = g.sh == 2 ? (yp & 1) : yp % g.sh, yq = g.sh == 2 ? (yp >> 1) : yp / g.sh;
    float* rowp = ch + size_t(ya * g.sw) * plane + size_t(yq) * wq;
    if (g.sw == 2) {  // v's even values go to phase xp & 1, its odd ones to the other
      const int q = xp & 1;
      isa_fns.split2(rowp + q * plane + (xp >> 1), rowp + (1 - q) * plane + ((xp + 1) >> 1), v, run);
      return;
    }
    for (int q = 0; q < g.sw; ++q) {
      const int t0 = ((q - xp % g.sw) + g.sw) % g.sw;
      if (t0 >= run) continue;
      deinterleave(rowp + size_t(q) * plane + (xp + t0) / g.sw, v + t0, (run - t0 + g.sw - 1) / g.sw, g.sw);
    }
  }
};

// ---- the layer -------------------------------------------------------------------------
struct Step {
  bool conv;
  int cin, cout;
  Packed w;
};

struct Layer {
  int I, H, W, O, Ho, Wo;   // layer input and output
  int sub_h, sub_w;          // subsample stride (1 = none)
  ConvGeom g;                // the KxK window (conv step and sparse branch)
  std::vector<Step> steps;
  int kappa;
  Packed s;
  std::vector<int32_t> srow;
  std::vector<float> scale, bias;
  int residual, act;
  // derived at creation
  int hb, wb;                // the (subsampled) branch input size
  ConvGeom wg;               // the window as run (stride 1 when subsampled)
  int ci = -1;               // the windowed step, or -1 (every step and S pointwise)
  int max_rows = 0, max_k = 0;
  Planes pl;
  std::vector<int64_t> roff_x, roff_nr, roff_win;  // x in place; a panel; window into planes
  std::vector<float> xs, xplanes, cplanes;         // subsampled x; planes of x and of the conv input
  std::vector<float> mid[2], sbuf;                 // stepwise: intermediates and S, per panel
  // S as a Winograd F(2x2, 3x3) conv (3x3 stride-1 windows): 16 transformed filter matrices
  // and their products with x's transform (16 x panels of NR tiles x kappa rows x NR); S
  // lands in sbuf per output panel, as the stepwise path keeps it
  bool wino = false;
  int th = 0, tw = 0, tiles = 0;
  std::vector<Packed> wu;
  std::vector<float> wm;
  std::mutex mu;

  int s_rows() const { return (kappa + MR - 1) / MR * MR; }  // S's rows in whole blocks
  size_t s_panel() const { return size_t(s_rows()) * NR; }    // S of one panel (sbuf, wm)
  size_t out_cols() const { return size_t(Ho) * pl.wq; }     // pass B's columns (rows wq apart)
  int tile_panels() const { return (tiles + NR - 1) / NR; }   // Winograd: panels of NR tiles
  size_t wm_xi() const { return tile_panels() * s_panel(); }  // Winograd: one M[xi] in wm
};

using Src = std::pair<const float*, const int64_t*>;  // B rows: base + roff[k]

// What the end of a chain does with the last step's tiles.
struct Sink {
  // layer output (pass B, or the only pass)
  float* y = nullptr;
  const float* res = nullptr;
  const Epilogue* e = nullptr;
  const float* spanel = nullptr;  // S for this panel (kappa x NR), or null
  size_t out_hw = 0;
  int wq = 0, wo = 0;             // column pitch and valid width (wq == 0: columns are pixels)
  // or: a conv input's planes (pass A)
  const Planes* pl = nullptr;
  float* planes = nullptr;
};

float* thread_scratch(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// Panels per task of a pointwise layer with many: the last step of the chain runs block by block
// over the task's panels, so each output (and residual) channel is read and written in runs of
// GROUP x NR pixels, not NR (chain_group). A ResNet-50 56x56 1x1 layer with a residual took
// 0.66-0.83 of its time with NR-pixel runs; 4 panels beat 2, 3 and 8. (The same order in pass B
// of KxK layers, and in the stepwise path's last step, gained nothing measurable.)
constexpr int GROUP = 4;
constexpr int KC = 192;  // K chunk: a chunk of B rows (KC x NR) stays in L1 over the row blocks
// Whether a step of depth K runs in K chunks (over several row blocks).
inline bool chunked_k(int K) { return K > KC + KC / 2; }

// step rows (all blocks) -> panel (rows x NR, row-major); a deep K runs in chunks so the B rows
// are read from L1 by every row block.
inline void step_to_panel(const Packed& w, Src src, float* out, int cols, int b0 = 0, int b1 = -1) {
  if (b1 < 0) b1 = w.blocks();
  const int kc = b1 - b0 > 1 && chunked_k(w.K) ? KC : w.K;
  for (int k0 = 0; k0 < w.K; k0 += kc) {
    const int kn = std::min(kc, w.K - k0);
    for (int b = b0; b < b1; ++b)
      isa_fns.tile(w.block(b) + size_t(k0) * MR, src.first, src.second + k0, kn, w.rows(b),
                   out + size_t(w.row0(b)) * NR, k0 > 0, cols);
  }
}

// Row blocks [b0, b1) of the last step of a chain on one panel, finished into the sink.
void step_to_sink(const Packed& w, Src src, size_t n0, int cols, const Sink& k, float* whole, int b0 = 0,
                  int b1 = -1) {
  alignas(64) float acc[MR * NR];
  if (b1 < 0) b1 = w.blocks();
  const bool chunked = b1 - b0 > 1 && chunked_k(w.K);  // then all rows first, into ``whole``
  if (chunked) step_to_panel(w, src, whole, cols, b0, b1);
  // output runs of this panel: (column in panel, length, destination pixel)
  int run_j[NR], run_len[NR];
  size_t run_dst[NR];
  int nruns = 0;
  if (!k.planes) {
    for (int j = 0; j < cols;) {
      const size_t n = n0 + j;
      int len = cols - j;
      size_t dst = n;
      if (k.wq) {
        const int ox = int(n % k.wq);
        if (ox >= k.wo) {
          j += k.wq - ox;
          continue;
        }
        len = std::min(len, k.wo - ox);
        dst = (n / k.wq) * k.wo + ox;
      }
      run_j[nruns] = j, run_len[nruns] = len, run_dst[nruns++] = dst;
      j += len;
    }
  }
  // one run over the whole panel (pointwise layers): the epilogue from the registers
  const bool direct = !chunked && !k.planes && nruns == 1 && run_j[0] == 0 && run_len[0] == NR;
  for (int b = b0; b < b1; ++b) {
    const int m0 = w.row0(b), rows = w.rows(b);
    if (direct) {
      isa_fns.tile_finish(w.block(b), src.first, src.second, w.K, rows, m0, k.e, k.spanel, k.res, k.y, k.out_hw,
                          run_dst[0]);
      continue;
    }
    if (!chunked) isa_fns.tile(w.block(b), src.first, src.second, w.K, rows, acc, 0, cols);
    const float* v = chunked ? whole + size_t(m0) * NR : acc;
    if (k.planes) {
      for (int i = 0; i < rows; ++i) k.pl->store(k.planes + size_t(m0 + i) * k.pl->cs, v + i * NR, cols, n0);
      continue;
    }
    for (int r = 0; r < nruns; ++r)
      isa_fns.finish(v, rows, m0, run_j[r], run_len[r], k.e, k.spanel, k.res, k.y, k.out_hw, run_dst[r]);
  }
}

// Pack the NR-column panel at n0 (cols < NR: a tail) of in-place rows into ``out`` (K x NR).
void pack_tail(Src src, int K, size_t n0, int cols, float* out) {
  for (int k = 0; k < K; ++k) {
    float* d = out + size_t(k) * NR;
    std::memcpy(d, src.first + src.second[k] + n0, sizeof(float) * cols);
    std::memset(d + cols, 0, sizeof(float) * (NR - cols));
  }
}

// Per-thread scratch of a layer: two panels for the chain, S's panel, the last step's rows, and
// a packed tail panel of x.
size_t layer_scratch(const Layer& L) { return 4 * size_t(L.max_rows) * NR + size_t(L.max_k) * NR; }

// The panel at n0 of x (I rows, read in place), or of a tail (cols < NR) packed into this
// thread's scratch.
Src x_panel(const Layer& L, const float* x, size_t n0, int cols) {
  if (cols == NR) return Src{x + n0, L.roff_x.data()};
  float* tail = thread_scratch(layer_scratch(L)) + 4 * size_t(L.max_rows) * NR;
  pack_tail(Src{x, L.roff_x.data()}, L.I, n0, cols, tail);
  return Src{tail, L.roff_nr.data()};
}

// S (if ``s_src``) into ``sp``, then steps [s0, s1) of one panel, the first reading ``src``, each
// into pb[0] / pb[1] in turn; returns the last one's output (``src`` if there are no steps).
Src chain_steps(const Layer& L, int s0, int s1, Src src, Src s_src, int cols, float* const pb[2], float* sp) {
  if (s_src.first) step_to_panel(L.s, s_src, sp, cols);
  for (int k = s0; k < s1; ++k) {
    float* out = pb[(k - s0) & 1];
    step_to_panel(L.steps[k].w, src, out, cols);
    src = Src{out, L.roff_nr.data()};
  }
  return src;
}

// Steps [s0, s1) on one panel: the first reads ``src`` (already offset to the panel), the last
// goes to the sink; S (if ``s_src``) runs on its own source into the sink's panel.
void chain(const Layer& L, int s0, int s1, Src src, Src s_src, size_t n0, int cols, Sink sink) {
  const size_t prow = size_t(L.max_rows) * NR;
  float* scr = thread_scratch(layer_scratch(L));
  float* const pb[2] = {scr, scr + prow};
  src = chain_steps(L, s0, s1 - 1, src, s_src, cols, pb, scr + 2 * prow);
  if (s_src.first) sink.spanel = scr + 2 * prow;
  step_to_sink(L.steps[s1 - 1].w, src, n0, cols, sink, scr + 3 * prow);
}

// Tasks for ``np`` panels: groups of at most GROUP panels, as many as a multiple of the threads.
int panel_groups(int np) {
  const int threads = pool().size();
  return std::min(np, (np + GROUP * threads - 1) / (GROUP * threads) * threads);
}

// A pointwise layer's chain on panels [p0, p1) of one image (columns [0, hw)): S and every step
// but the last panel by panel (a panel's B rows stay in L1 over the row blocks), then the last
// step block by block over all the panels.
void chain_group(const Layer& L, const float* x, size_t hw, int p0, int p1, const Sink& sink) {
  const int nsteps = int(L.steps.size()), G = p1 - p0;
  const size_t prow = size_t(L.max_rows) * NR, srow = L.s_panel(), per = 2 * prow + srow;
  float* scr = thread_scratch(layer_scratch(L) + size_t(G) * per);
  float* grp = scr + layer_scratch(L);  // per panel: two chain panels, then S
  Src last[GROUP];
  for (int p = p0; p < p1; ++p) {
    const size_t n0 = size_t(p) * NR;
    const int cols = int(std::min<size_t>(NR, hw - n0));
    float* mine = grp + size_t(p - p0) * per;
    float* const pb[2] = {mine, mine + prow};
    const Src src = x_panel(L, x, n0, cols);
    last[p - p0] = chain_steps(L, 0, nsteps - 1, src, L.kappa ? src : Src{nullptr, nullptr}, cols, pb, mine + 2 * prow);
  }
  const Packed& w = L.steps[nsteps - 1].w;
  for (int b = 0; b < w.blocks(); ++b)
    for (int p = p0; p < p1; ++p) {
      const size_t n0 = size_t(p) * NR;
      Sink k = sink;
      if (L.kappa) k.spanel = grp + size_t(p - p0) * per + 2 * prow;
      step_to_sink(w, last[p - p0], n0, int(std::min<size_t>(NR, hw - n0)), k, scr + 3 * prow, b, b + 1);
    }
}

// Steps [s0, s1) over ``np`` panels (columns [0, ncols)), one pool dispatch per step with tasks
// = panels x chunks of row blocks, the intermediates in per-panel layer buffers: for layers with
// few panels (14 x 14, 7 x 7), where one task per panel would leave threads idle.
// ``src_of(n0, cols)``: the first step's B for a panel; ``s_of(n0)``: S's (or null: no S).
void stepwise(Layer& L, int s0, int s1, const std::function<Src(size_t, int)>& src_of,
              const std::function<Src(size_t)>* s_of, size_t ncols, Sink sink) {
  const int np = int((ncols + NR - 1) / NR);
  const size_t prow = size_t(L.max_rows) * NR, srow = L.s_panel();
  for (auto& b : L.mid)
    if (b.size() < np * prow) b.resize(np * prow);
  if (s_of && L.sbuf.size() < np * srow) L.sbuf.resize(np * srow);
  const int threads = pool().size();
  // S rides along with the first step's dispatch, unless that is also the last step (whose
  // epilogue reads S): then S gets a dispatch of its own first (k == s0 - 1).
  const bool s_alone = s_of && s1 - s0 == 1;
  for (int k = s_alone ? s0 - 1 : s0; k < s1; ++k) {
    const bool s_only = k < s0;
    const Packed& w = L.steps[s_only ? s0 : k].w;
    const int nbs = ((k == s0 && s_of && !s_alone) || s_only) ? L.s.blocks() : 0;
    const int units = (s_only ? 0 : w.blocks()) + nbs;
    // many row blocks: tasks = chunks of blocks over all panels (each thread reads its own slice
    // of the weights once); few: tasks = (panel, block), so that no task is a large share of the
    // step (S's 9 blocks of 4608 at 7x7 as 9 tasks left a thread idle 46 us). A deep K read from
    // x in place (a pointwise layer's first step; x's rows lie far apart): tasks = (panel,
    // 1/(2 threads) of the blocks), so each K chunk of the panel's rows is read into L1 once for
    // many blocks (a 1024 -> 32 + S 26 step at 14x14: 9-20% faster, a 2048 one at 7x7 18%)
    const bool deep = L.ci < 0 && k <= s0 && chunked_k(std::max(w.K, nbs ? L.s.K : 0));
    const bool by_rows = !deep && units >= 8 * threads;
    const int per = deep ? (units + 2 * threads - 1) / (2 * threads)
                         : by_rows ? (units + 6 * threads - 1) / (6 * threads) : 1;
    const int nchunks = (units + per - 1) / per;
    const float* in = L.mid[(k - s0 + 1) & 1].data();
    float* out = L.mid[(k - s0) & 1].data();  // (k < s0: unused)
    pool().run(by_rows ? nchunks : np * nchunks, [&](int t) {
      const int c = by_rows ? t : t % nchunks;
      const int p_lo = by_rows ? 0 : t / nchunks, p_hi = by_rows ? np : p_lo + 1;
      const int u0 = c * per, u1 = std::min(units, u0 + per);
      for (int p = p_lo; p < p_hi; ++p) {
      const size_t n0 = size_t(p) * NR;
      const int cols = int(std::min<size_t>(NR, ncols - n0));
      if (u0 < nbs) step_to_panel(L.s, (*s_of)(n0), L.sbuf.data() + p * srow, cols, u0, std::min(u1, nbs));
      if (u1 <= nbs) continue;
      const int b0 = std::max(u0, nbs) - nbs, b1 = u1 - nbs;
      const Src src = k == s0 ? src_of(n0, cols) : Src{in + p * prow, L.roff_nr.data()};
      if (k + 1 == s1) {
        Sink sk = sink;
        sk.spanel = L.sbuf.data() + p * srow;
        step_to_sink(w, src, n0, cols, sk, thread_scratch(layer_scratch(L)) + 3 * prow, b0, b1);
      } else {
        step_to_panel(w, src, out + p * prow, cols, b0, b1);
      }
      }
    });
  }
}

// Winograd for S (3x3 stride-1 windows): 1 auto (where it pays, on builds where it can (see
// Isa::wino_pays): with AVX-512, in whole ResNet-50 runs it took 10-13% off each 14 x 14 layer
// with 26 filters and 3-4% off each 28 x 28 one with 13, but cost 3% at 7 x 7, where 2 x 2 tiles
// overhang the map, and 10% with 6-7 filters, too few to pay for x's transform; with AVX2 (Zen 3)
// 9-17% off a 14 x 14 layer alone, 2-3% off a 28 x 28 one, 11% slower with 6 filters at 56 x 56),
// 0 never, 2 always (tests).
int winograd_mode = 1;
constexpr int WC = 64;  // channels per chunk of x's transform (4 x WC rows of WP floats)
constexpr int WP = 64;  // a row of the transform: 16 floats of slack, NR tiles, 16 of slack

// F(2x2, 3x3): U = G g G^T per (filter, channel), packed as 16 kappa x I matrices.
void wino_init(Layer& L, const float* sw) {
  const ConvGeom& g = L.wg;
  const bool window = g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1;
  if (!winograd_mode || !window) return;
  L.th = (L.Ho + 1) / 2, L.tw = (L.Wo + 1) / 2, L.tiles = L.th * L.tw;
  const bool pays = isa_fns.wino_pays && L.kappa >= 2 * MR && 16.0 * L.tiles <= 0.5 * 9.0 * L.Ho * L.Wo;
  if (winograd_mode == 1 && !pays) return;
  L.wino = true;
  const int I = L.I;
  const float G[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
  std::vector<float> u(size_t(16) * L.kappa * I);
  for (int k = 0; k < L.kappa; ++k)
    for (int c = 0; c < I; ++c) {
      const float* f = sw + (size_t(k) * I + c) * 9;
      float gg[4][3];  // G g
      for (int p = 0; p < 4; ++p)
        for (int b = 0; b < 3; ++b) gg[p][b] = G[p][0] * f[b] + G[p][1] * f[3 + b] + G[p][2] * f[6 + b];
      for (int p = 0; p < 4; ++p)
        for (int q = 0; q < 4; ++q)
          u[(size_t(4 * p + q) * L.kappa + k) * I + c] = gg[p][0] * G[q][0] + gg[p][1] * G[q][1] + gg[p][2] * G[q][2];
    }
  for (int xi = 0; xi < 16; ++xi) L.wu.push_back(pack(u.data() + size_t(xi) * L.kappa * I, L.kappa, I));
  L.wm.assign(16 * L.wm_xi(), 0.0f);
}

void layer_init(Layer& L, const float* s_weights) {
  L.hb = (L.H - 1) / L.sub_h + 1;
  L.wb = (L.W - 1) / L.sub_w + 1;
  const bool sub = L.sub_h > 1 || L.sub_w > 1;
  L.wg = sub ? ConvGeom{L.g.kh, L.g.kw, 1, 1, L.g.ph, L.g.pw, L.g.dh, L.g.dw} : L.g;
  const ConvGeom& g = L.wg;
  if (s_weights) wino_init(L, s_weights);
  const bool pointwise = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  L.ci = -1;
  if (!pointwise)
    for (size_t k = 0; k < L.steps.size(); ++k)
      if (L.steps[k].conv) L.ci = int(k);
  int rows = L.kappa, kmax = L.I;
  for (auto& s : L.steps) rows = std::max(rows, s.cout), kmax = std::max(kmax, s.w.K);
  L.max_rows = (rows + MR - 1) / MR * MR;
  L.max_k = kmax;
  L.roff_nr.resize(kmax);
  for (int k = 0; k < kmax; ++k) L.roff_nr[k] = int64_t(k) * NR;
  const size_t hw = size_t(L.hb) * L.wb;
  L.roff_x.resize(L.I);
  for (int k = 0; k < L.I; ++k) L.roff_x[k] = int64_t(k) * hw;
  if (sub) L.xs.assign(size_t(L.I) * hw, 0.0f);
  if (L.ci >= 0 || (L.kappa && !pointwise)) {
    L.pl = Planes(g, L.hb, L.wb, L.Ho, L.Wo);
    const int cconv = L.ci >= 0 ? L.steps[L.ci].cin : 0;
    const int cmax = std::max(L.I, cconv);
    const int kk = g.kh * g.kw;
    L.roff_win.resize(size_t(cmax) * kk);
    for (int c = 0; c < cmax; ++c)
      for (int i = 0; i < g.kh; ++i)
        for (int j = 0; j < g.kw; ++j) L.roff_win[(size_t(c) * g.kh + i) * g.kw + j] = int64_t(c) * L.pl.cs + L.pl.tap(i, j);
    const bool x_win = (L.kappa && !L.wino) || L.ci == 0;
    if (x_win) L.xplanes.assign(L.pl.size(L.I), 0.0f);
    if (L.ci > 0) L.cplanes.assign(L.pl.size(cconv), 0.0f);
  }
  if (L.wino) {
    L.sbuf.assign((L.out_cols() + NR - 1) / NR * L.s_panel(), 0.0f);
  }
}

// S by Winograd, part 1 (a pass A task): for one panel of NR tiles and one row g of B^T, the
// products M[xi] = U[xi] V[xi], xi = 4 g .. 4 g + 3, V (x's transform) made WC channels at a
// time into a per-thread buffer, M accumulated in place in wm.
void wino_products(Layer& L, const float* x, int task) {
  const int npt = L.tile_panels();
  const int p = task % npt, g = task / npt, t_lo = p * NR, nt = std::min(NR, L.tiles - t_lo);
  // the 4 copies of V a little more than WC x WP apart: at a power-of-two distance the 4 stores
  // of each channel would share one L1 set
  const size_t ms = L.wm_xi(), vs = size_t(WC) * WP + 80;
  static const std::vector<int64_t> roff = [] {
    std::vector<int64_t> r(WC);
    for (int k = 0; k < WC; ++k) r[k] = int64_t(k) * WP;
    return r;
  }();
  float* v = thread_scratch(4 * vs + WP);
  const size_t hw = size_t(L.hb) * L.wb;
  for (int c0 = 0; c0 < L.I; c0 += WC) {
    const int cn = std::min(WC, L.I - c0);
    isa_fns.wino_in(x + c0 * hw, cn, hw, L.hb, L.wb, L.wg.ph, L.wg.pw, L.tw, t_lo, nt, g, v + 16, vs, WP);
    for (int q = 0; q < 4; ++q) {
      const Packed& u = L.wu[4 * g + q];
      float* m = L.wm.data() + (4 * g + q) * ms + p * L.s_panel();
      for (int b = 0; b < u.blocks(); ++b)
        isa_fns.tile(u.block(b) + size_t(c0) * MR, v + q * vs + 16, roff.data(), cn, u.rows(b),
                     m + size_t(u.row0(b)) * NR, c0 > 0, nt);
    }
  }
}

// The order of part 1's tasks: a short last panel of tiles (49 tiles: 32 + 17) in the middle,
// whole ones at both ends, so each thread starts on long tasks and the short ones fill in.
int wino_order(const Layer& L, int t) {
  const int npt = L.tile_panels();
  if (npt < 2 || L.tiles % NR == 0) return t;
  const int nfull = 4 * (npt - 1), half = nfull / 2;  // tasks are p + npt * g
  auto full = [&](int i) { return i / 4 + npt * (i % 4); };
  if (t < half) return full(t);
  if (t < half + 4) return npt - 1 + npt * (t - half);
  return full(t - 4);
}

// S by Winograd, part 2: the output transform of each tile's 2 x 2 outputs into sbuf (per output
// panel, srow apart).
void wino_out(Layer& L) {
  const int npt = L.tile_panels(), nb = L.wu[0].blocks(), wq = L.pl.wq;
  const size_t ms = L.wm_xi(), srow = L.s_panel();
  pool().run(npt * nb, [&](int t) {
    const int p = t % npt, b = t / npt, cols = std::min(NR, L.tiles - p * NR);
    alignas(64) float y4[4 * NR];
    for (int r = L.wu[0].row0(b); r < L.wu[0].row0(b) + L.wu[0].rows(b); ++r) {
      isa_fns.wino_out(L.wm.data() + p * srow + size_t(r) * NR, ms, cols, y4);
      float* sr = L.sbuf.data() + size_t(r) * NR;
      for (int j = 0, ty = p * NR / L.tw, tx = p * NR % L.tw; j < cols; ++j) {
        for (int a = 0; a < 2 && 2 * ty + a < L.Ho; ++a)
          for (int c = 0; c < 2 && 2 * tx + c < L.Wo; ++c) {
            const size_t n = size_t(2 * ty + a) * wq + 2 * tx + c;
            sr[(n / NR) * srow + n % NR] = y4[(2 * a + c) * NR + j];  // NR: a power of two
          }
        if (++tx == L.tw) tx = 0, ++ty;
      }
    }
  });
}

Epilogue epilogue(const Layer& L) {
  Epilogue e;
  e.scale = L.scale.empty() ? nullptr : L.scale.data();
  e.bias = L.bias.empty() ? nullptr : L.bias.data();
  e.srow = L.kappa ? L.srow.data() : nullptr;
  e.act = L.act;
  return e;
}

// Whether every step and S are pointwise and read x in place (no planes, no Winograd, no
// subsample): the layer is one pass over pixels, and a batch's panels can share one dispatch.
bool in_place_pointwise(const Layer& L) {
  return L.ci < 0 && L.xplanes.empty() && !L.wino && L.sub_h == 1 && L.sub_w == 1;
}

// Panels of a layer with few of them (fewer than this per image: 4 per thread) run stepwise.
int few_panels() { return 4 * pool().size(); }

// An all-pointwise layer on n images (x, res, y: the first image's; images in_n / out_n apart; x
// with n = 1 may be the subsampled copy) in one pool dispatch, tasks = (image, group of panels) in
// order for a chain of steps whose last K is not chunked (chain_group), (image, half of the row
// blocks) for one GEMM without S (a dense 1x1 conv), (image, panel) otherwise, so an odd
// number of panels does not leave a thread idle for a whole panel at the end. The caller checks
// that there are enough panels (few_panels).
void pointwise_panels(Layer& L, const float* x, const float* res, float* y, int n) {
  const size_t hw = size_t(L.hb) * L.wb, in_n = size_t(L.I) * L.H * L.W, out_n = size_t(L.O) * L.Ho * L.Wo;
  const Epilogue e = epilogue(L);
  const int nsteps = int(L.steps.size()), np = int((hw + NR - 1) / NR);
  const int halves = nsteps == 1 && !L.kappa && L.steps[0].w.blocks() > 1 ? 2 : 1;
  if (nsteps > 1 && !chunked_k(L.steps.back().w.K)) {  // (a chunked last step: see step_to_sink)
    const int ng = panel_groups(np);
    pool().run(n * ng, [&](int t) {
      const int b = t / ng, g = t % ng;
      Sink out;
      out.y = y + b * out_n, out.res = res ? res + b * out_n : nullptr, out.e = &e, out.out_hw = out_n / L.O;
      chain_group(L, x + b * in_n, hw, int(int64_t(np) * g / ng), int(int64_t(np) * (g + 1) / ng), out);
    });
    return;
  }
  pool().run(n * np * halves, [&](int t) {
    const int b = t / (np * halves), p = t / halves % np, nb = L.steps[0].w.blocks();
    Sink out;
    out.y = y + b * out_n, out.res = res ? res + b * out_n : nullptr, out.e = &e, out.out_hw = out_n / L.O;
    const size_t n0 = size_t(p) * NR;
    const int cols = int(std::min<size_t>(NR, hw - n0));
    const Src src = x_panel(L, x + b * in_n, n0, cols);
    if (halves == 1) return chain(L, 0, nsteps, src, L.kappa ? src : Src{nullptr, nullptr}, n0, cols, out);
    const int h = t % halves;
    step_to_sink(L.steps[0].w, src, n0, cols, out, thread_scratch(layer_scratch(L)) + 3 * size_t(L.max_rows) * NR,
                 nb * h / halves, nb * (h + 1) / halves);
  });
}

// One image.
void run_image(Layer& L, const float* xb, const float* res, float* y) {
  const size_t hw = size_t(L.hb) * L.wb, out_hw = size_t(L.Ho) * L.Wo;
  const Epilogue e = epilogue(L);
  const int nsteps = int(L.steps.size());
  const float* x = xb;
  if (L.sub_h > 1 || L.sub_w > 1) {  // subsample (parallel over channel chunks)
    const int per = 8, chunks = (L.I + per - 1) / per;
    float* xs = L.xs.data();
    pool().run(chunks, [&](int t) {
      for (int c = t * per; c < std::min(L.I, (t + 1) * per); ++c)
        for (int i = 0; i < L.hb; ++i) {
          const float* src = xb + (size_t(c) * L.H + size_t(i) * L.sub_h) * L.W;
          float* d = xs + (size_t(c) * L.hb + i) * L.wb;
          deinterleave(d, src, L.wb, L.sub_w);
        }
    });
    x = xs;
  }
  Sink out;
  out.y = y, out.res = res, out.e = &e, out.out_hw = out_hw;
  auto use_stepwise = [&](int np) { return np < few_panels(); };
  const std::function<Src(size_t, int)> x_of = [&](size_t n0, int cols) { return x_panel(L, x, n0, cols); };
  const std::function<Src(size_t)> xs_of = [&](size_t n0) { return x_of(n0, int(std::min<size_t>(NR, hw - n0))); };
  if (L.ci < 0 && L.xplanes.empty() && !L.wino) {  // all pointwise: one pass over pixels
    const int np = int((hw + NR - 1) / NR);
    if (use_stepwise(np)) return stepwise(L, 0, nsteps, x_of, L.kappa ? &xs_of : nullptr, hw, out);
    return pointwise_panels(L, x, res, y, 1);  // x: the image, or its subsampled copy
  }
  // pass A: the pointwise steps before the windowed one (per input panel), planes of x (chunks
  // of channels) or S's Winograd products (per panel of tiles and row of B^T)
  const Planes& pl = L.pl;
  const int pre = std::max(0, L.ci);
  const int np_in = pre > 0 ? int((hw + NR - 1) / NR) : 0;
  const int fill_per = 4;
  const int nfill = L.xplanes.empty() ? 0 : (L.I + fill_per - 1) / fill_per;
  const int nwino = L.wino ? 4 * L.tile_panels() : 0;
  Sink to_planes;
  to_planes.pl = &pl;
  to_planes.planes = L.cplanes.data();
  const bool a_stepwise = np_in > 0 && use_stepwise(np_in);
  pool().run((a_stepwise ? 0 : np_in) + nfill + nwino, [&](int t) {
    if (a_stepwise) t += np_in;
    if (t < np_in) {
      const size_t n0 = size_t(t) * NR;
      const int cols = int(std::min<size_t>(NR, hw - n0));
      chain(L, 0, pre, x_panel(L, x, n0, cols), Src{nullptr, nullptr}, n0, cols, to_planes);
      return;
    }
    t -= np_in;
    if (t < nfill) {
      float* xp = L.xplanes.data();
      for (int c = t * fill_per; c < std::min(L.I, (t + 1) * fill_per); ++c)
        pl.store_map(xp + size_t(c) * pl.cs, x + size_t(c) * hw);
      return;
    }
    wino_products(L, x, wino_order(L, t - nfill));
  });
  if (a_stepwise) stepwise(L, 0, pre, x_of, nullptr, hw, to_planes);
  const size_t srow = L.s_panel();
  if (L.wino) wino_out(L);
  // pass B: the windowed step, the steps after it, S, the epilogue (per output panel)
  const size_t ncols = L.out_cols();
  const int np = int((ncols + NR - 1) / NR);
  out.wq = pl.wq, out.wo = L.Wo;
  const float* cin = L.ci == 0 ? L.xplanes.data() : L.cplanes.data();
  const bool s_here = L.kappa && !L.wino;  // S computed with the chain (else: already in sbuf)
  if (use_stepwise(np)) {
    const std::function<Src(size_t, int)> c_of = [&](size_t n0, int) { return Src{cin + n0, L.roff_win.data()}; };
    const std::function<Src(size_t)> sp_of = [&](size_t n0) { return Src{L.xplanes.data() + n0, L.roff_win.data()}; };
    return stepwise(L, L.ci, nsteps, c_of, s_here ? &sp_of : nullptr, ncols, out);
  }
  pool().run(np, [&](int p) {
    const size_t n0 = size_t(p) * NR;
    const int cols = int(std::min<size_t>(NR, ncols - n0));
    Src s_src{nullptr, nullptr};
    if (s_here) s_src = Src{L.xplanes.data() + n0, L.roff_win.data()};
    Sink o = out;
    if (L.wino) o.spanel = L.sbuf.data() + p * srow;
    chain(L, L.ci, nsteps, Src{cin + n0, L.roff_win.data()}, s_src, n0, cols, o);
  });
}

}  // namespace

#define CEPD_API __attribute__((visibility("default")))

extern "C" {

// desc: I,H,W,O,Ho,Wo, sub_h,sub_w, kh,kw,sh,sw,ph,pw,dh,dw, nsteps, kappa, has_scale, has_bias,
//       residual, act, then per step: conv(0/1), cin, cout.
// weights: step weights (cout x cin[*kh*kw]) in order, then S (kappa x I*kh*kw), scale, bias.
CEPD_API void* cepd_tts_create(const int64_t* desc, const float* const* weights, const int64_t* index) {
  auto* L = new Layer();
  const int64_t* d = desc;
  L->I = d[0]; L->H = d[1]; L->W = d[2]; L->O = d[3]; L->Ho = d[4]; L->Wo = d[5];
  L->sub_h = d[6]; L->sub_w = d[7];
  L->g = ConvGeom{int(d[8]), int(d[9]), int(d[10]), int(d[11]), int(d[12]), int(d[13]), int(d[14]),
                  int(d[15])};
  const int nsteps = d[16];
  L->kappa = d[17];
  const bool has_scale = d[18], has_bias = d[19];
  L->residual = d[20];
  L->act = d[21];
  int wi = 0;
  for (int k = 0; k < nsteps; ++k) {
    Step s;
    s.conv = d[22 + 3 * k];
    s.cin = d[23 + 3 * k];
    s.cout = d[24 + 3 * k];
    const int kdim = s.conv ? s.cin * L->g.kh * L->g.kw : s.cin;
    s.w = pack(weights[wi++], s.cout, kdim);
    L->steps.push_back(std::move(s));
  }
  const float* s_weights = nullptr;
  std::vector<float> s_scaled;
  if (L->kappa > 0) {
    s_weights = weights[wi];
    const size_t kdim = size_t(L->I) * L->g.kh * L->g.kw;
    if (has_scale) {  // y = (chain + S) * scale + bias, and the epilogue adds S after the scale
      const float* sc = weights[wi + 1];
      s_scaled.assign(s_weights, s_weights + L->kappa * kdim);
      for (int r = 0; r < L->kappa; ++r)
        for (size_t j = 0; j < kdim; ++j) s_scaled[r * kdim + j] *= sc[index[r]];
      s_weights = s_scaled.data();
    }
    L->s = pack(s_weights, L->kappa, int(kdim));
    ++wi;
    L->srow.assign(L->O, -1);
    for (int r = 0; r < L->kappa; ++r) L->srow[index[r]] = r;
  }
  if (has_scale) L->scale.assign(weights[wi], weights[wi] + L->O), ++wi;
  if (has_bias) L->bias.assign(weights[wi], weights[wi] + L->O), ++wi;
  layer_init(*L, s_weights);
  return L;
}

CEPD_API void cepd_tts_destroy(void* handle) { delete static_cast<Layer*>(handle); }

CEPD_API void cepd_tts_set_threads(int n) { pool().resize(n); }

CEPD_API int cepd_tts_threads() { return pool().size(); }

// The tile in use: x86-64 2 AVX-512, 1 AVX2, 0 generic; AArch64 1 NEON, 0 generic.
CEPD_API int cepd_tts_isa() { return isa_level; }

// The tile builds compiled for their instruction set, one bit per level (1 << level): all three on
// x86-64 with GCC/clang, NEON and generic on AArch64, else the generic one only.
CEPD_API int cepd_tts_isa_builds() {
#if defined(CEPD_X86_TILES)
  return 0b111;
#elif defined(CEPD_NEON_TILES)
  return 0b011;
#else
  return 0b001;
#endif
}

// The names of the tile builds by level, space-separated (cepd_deploy.native.ISAS on this machine).
CEPD_API const char* cepd_tts_isa_names() {
#if defined(CEPD_X86_TILES)
  return "scalar avx2 avx512f";
#elif defined(CEPD_NEON_TILES)
  return "scalar neon";
#else
  return "scalar";
#endif
}

// The best tile level this CPU runs (cpuid), whatever cepd_tts_use_isa set.
CEPD_API int cepd_tts_cpu_isa() { return detect_isa(); }

// Winograd for 3x3 stride-1 sparse branches of layers created from now on: 1 where it pays
// (default), 0 never, 2 always.
CEPD_API void cepd_tts_use_winograd(int mode) { winograd_mode = std::clamp(mode, 0, 2); }

// Whether a layer runs its sparse branch by Winograd.
CEPD_API int cepd_tts_winograd(void* handle) { return static_cast<Layer*>(handle)->wino ? 1 : 0; }

// Use a lower instruction set's tile (not while layers run); -1 if this CPU lacks ``level``.
CEPD_API int cepd_tts_use_isa(int level) {
  if (level < 0 || level > detect_isa()) return -1;
  isa_level = level;
  isa_fns = isa_for(level);
  return 0;
}

// y (n x O x Ho x Wo) = layer(x (n x I x H x W)) [+ residual (n x O x Ho x Wo)].
CEPD_API int cepd_tts_run(void* handle, const float* x, const float* residual, float* y, int n) {
  Layer& L = *static_cast<Layer*>(handle);
  if (L.steps.empty() || (L.ci < 0 && (!L.xplanes.empty() || L.wino))) return -1;
  std::lock_guard<std::mutex> lock(L.mu);
  const size_t in_n = size_t(L.I) * L.H * L.W, out_n = size_t(L.O) * L.Ho * L.Wo;
  const int np = int((size_t(L.hb) * L.wb + NR - 1) / NR);
  // an all-pointwise layer: the batch's panels in one dispatch (at 14 x 14 and 7 x 7 an image
  // alone has too few panels and runs stepwise, one dispatch per step); other layers keep
  // per-image state (planes, Winograd products) and run image after image
  if (n > 1 && in_place_pointwise(L) && n * np >= few_panels()) {
    pointwise_panels(L, x, L.residual ? residual : nullptr, y, n);
    return 0;
  }
  for (int b = 0; b < n; ++b)
    run_image(L, x + b * in_n, L.residual ? residual + b * out_n : nullptr, y + b * out_n);
  return 0;
}

}  // extern "C"
