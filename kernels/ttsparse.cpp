// TTSparseConv: one CEPD conv (TT chain of 1x1 / KxK steps + filter-sparse branch) on the CPU.
//
// float32, NCHW, batch >= 1. A layer is created once (weights packed into 6-row panels), then
// run any number of times; its workspace grows to the largest batch seen and is reused.
// GEMMs C[M x N] = A[M x K] * B[K x N] run on 6 x 32 register tiles (AVX-512: 12 zmm
// accumulators; the AVX2 and generic builds split the same vectors). The tile is compiled once
// per instruction set (tile_*.cpp, target set per file) and picked by cpuid when the library
// loads, so one build runs on machines with and without AVX-512.
// The last step's tile epilogue does scale, bias, the sparse scatter-add, the residual and
// the activation while the tile is in registers. Work is split over a small persistent
// thread pool (tasks = N-panels x M-chunks).
//
// C ABI (ctypes): cepd_tts_create / cepd_tts_run / cepd_tts_destroy / cepd_tts_set_threads.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>


#include "tile.h"

#define CEPD_DECLARE_ISA(ns)                                                            \
  namespace ns {                                                                      \
  void tile(const float*, const float*, int, float*);                                 \
  void finish(const float*, int, int, size_t, size_t, const cepd::Epilogue*, float*); \
  }
CEPD_DECLARE_ISA(cepd_tile_avx512)
CEPD_DECLARE_ISA(cepd_tile_avx2)
CEPD_DECLARE_ISA(cepd_tile_generic)

namespace {

#ifndef CEPD_SHALLOW_K
#define CEPD_SHALLOW_K 64  // GEMMs with K up to this walk rows outside (see gemm)
#endif

using cepd::Epilogue;
using cepd::MR;
using cepd::NR;

// ---- thread pool -----------------------------------------------------------------------
class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  void resize(int n) {
    n = std::max(1, n);
    if (n == size_) return;
    stop();
    size_ = n;
    quit_ = false;
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { loop(); });
  }
  int size() const { return size_; }

  // Run fn(task) for task in [0, ntasks) on all threads; returns when every task is done.
  void run(int ntasks, const std::function<void(int)>& fn) {
    std::lock_guard<std::mutex> one_at_a_time(run_mu_);
    if (size_ == 1 || ntasks == 1) {
      for (int t = 0; t < ntasks; ++t) fn(t);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      ntasks_ = ntasks;
      next_.store(0);
      active_ = size_ - 1;
      ++epoch_;
    }
    cv_.notify_all();
    work();
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return active_ == 0; });
    fn_ = nullptr;
  }

 private:
  void work() {
    for (int t = next_.fetch_add(1); t < ntasks_; t = next_.fetch_add(1)) (*fn_)(t);
  }
  void loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return quit_ || epoch_ != seen; });
        if (quit_) return;
        seen = epoch_;
      }
      work();
      std::lock_guard<std::mutex> lk(mu_);
      if (--active_ == 0) done_cv_.notify_one();
    }
  }
  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  int size_ = 0;
  std::vector<std::thread> workers_;
  std::mutex mu_, run_mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* fn_ = nullptr;
  int ntasks_ = 0, active_ = 0;
  uint64_t epoch_ = 0;
  std::atomic<int> next_{0};
  bool quit_ = false;
};

Pool& pool() {
  static Pool p(std::max(1u, std::min(2u, std::thread::hardware_concurrency())));
  return p;
}

// ---- GEMM ------------------------------------------------------------------------------
// A packed: for each block of MR rows, K x MR floats (row-major in k), rows past M zero.
struct Packed {
  int M = 0, K = 0;
  std::vector<float> data;
};

Packed pack(const float* a, int M, int K) {
  Packed p;
  p.M = M;
  p.K = K;
  int blocks = (M + MR - 1) / MR;
  p.data.assign(static_cast<size_t>(blocks) * K * MR, 0.0f);
  for (int b = 0; b < blocks; ++b)
    for (int k = 0; k < K; ++k)
      for (int i = 0; i < MR && b * MR + i < M; ++i)
        p.data[(static_cast<size_t>(b) * K + k) * MR + i] = a[static_cast<size_t>(b * MR + i) * K + k];
  return p;
}

// B of a GEMM: row k is base + roff[k], N columns. A conv reads its input through row offsets
// into a zero-padded copy (no im2col); its columns then run over the padded width ``wp`` and
// only those with (n % wp) < wo are outputs (written compacted).
struct BSrc {
  const float* base;
  const int64_t* roff;
  int N;
  int wp = 0, wo = 0;  // 0: every column is an output, in place
};

// The register tile, one build per instruction set (tile_*.cpp), picked by cpuid once.
int detect_isa() {  // 2: AVX-512F, 1: AVX2 + FMA, 0: other
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}

struct Isa {
  cepd::TileFn tile;
  cepd::FinishFn finish;
};

const Isa isa_fns = [] {
  switch (detect_isa()) {
    case 2: return Isa{&cepd_tile_avx512::tile, &cepd_tile_avx512::finish};
    case 1: return Isa{&cepd_tile_avx2::tile, &cepd_tile_avx2::finish};
    default: return Isa{&cepd_tile_generic::tile, &cepd_tile_generic::finish};
  }
}();

// Pack one NR-column panel of B (zero-padded on the right) into ``panel`` (K x NR).
void pack_panel(const BSrc& b, int K, int n0, int cols, float* panel) {
  for (int k = 0; k < K; ++k) {
    float* dst = panel + static_cast<size_t>(k) * NR;
    std::memcpy(dst, b.base + b.roff[k] + n0, sizeof(float) * cols);
    if (cols < NR) std::memset(dst + cols, 0, sizeof(float) * (NR - cols));
  }
}

// Contiguous runs of output columns in a panel: (first column in panel, length, destination).
int column_runs(const BSrc& b, int n0, int cols, int* run_j, int* run_len, size_t* run_dst) {
  int nruns = 0;
  for (int j = 0; j < cols;) {
    const int n = n0 + j;
    int len = cols - j;
    size_t dst = n;
    if (b.wp) {
      const int ox = n % b.wp;
      if (ox >= b.wo) {
        j += b.wp - ox;
        continue;
      }
      len = std::min(len, b.wo - ox);
      dst = size_t(n / b.wp) * b.wo + ox;
    }
    run_j[nruns] = j, run_len[nruns] = len, run_dst[nruns++] = dst;
    j += len;
  }
  return nruns;
}

// One MR-row block times one packed panel, then store (with the epilogue if any).
void block_panel(const Packed& a, int blk, const float* panel, const BSrc& b, int n0, int cols, float* c,
                 size_t out_n, const Epilogue* e) {
  int run_j[NR], run_len[NR];
  size_t run_dst[NR];
  const int nruns = column_runs(b, n0, cols, run_j, run_len, run_dst);
  alignas(64) float acc[MR * NR];
  const int m0 = blk * MR, rows = std::min(MR, a.M - m0);
  isa_fns.tile(a.data.data() + static_cast<size_t>(blk) * a.K * MR, panel, a.K, acc);
  for (int i = 0; i < rows; ++i) {
    float* cp = c + static_cast<size_t>(m0 + i) * out_n;
    const float* v = acc + i * NR;
    for (int r = 0; r < nruns; ++r) {
      if (e)
        isa_fns.finish(v + run_j[r], run_len[r], m0 + i, run_dst[r], out_n, e, cp + run_dst[r]);
      else
        std::memcpy(cp + run_dst[r], v + run_j[r], sizeof(float) * run_len[r]);
    }
  }
}

// C (M x out_n) = A * B (+ epilogue). A deep K reuses each packed B panel over many row
// blocks (tasks = panels x row chunks); a shallow K (memory-bound: a thin B, a wide C) walks
// row blocks outside so C and the residual stream row by row (tasks = row chunks x panel
// ranges), re-packing the cheap panels.
void gemm(const Packed& a, const BSrc& b, float* c, size_t out_n, const Epilogue* e) {
  const int mblocks = (a.M + MR - 1) / MR;
  const int npanels = (b.N + NR - 1) / NR;
  const int threads = pool().size();
  if (a.K <= CEPD_SHALLOW_K) {
    const int nranges = std::max(1, std::min(npanels, (4 * threads + mblocks - 1) / mblocks));
    const int pper = (npanels + nranges - 1) / nranges;
    pool().run(mblocks * nranges, [&](int task) {
      const int blk = task / nranges, r = task % nranges;
      thread_local std::vector<float> panel;
      panel.resize(static_cast<size_t>(a.K) * NR);
      for (int p = r * pper; p < std::min(npanels, (r + 1) * pper); ++p) {
        const int n0 = p * NR, cols = std::min(NR, b.N - n0);
        pack_panel(b, a.K, n0, cols, panel.data());
        block_panel(a, blk, panel.data(), b, n0, cols, c, out_n, e);
      }
    });
    return;
  }
  int mchunks = std::min(mblocks, std::max(1, (4 * threads + npanels - 1) / npanels));
  const int per = (mblocks + mchunks - 1) / mchunks;
  mchunks = (mblocks + per - 1) / per;
  pool().run(npanels * mchunks, [&](int task) {
    const int p = task % npanels, q = task / npanels;
    const int n0 = p * NR, cols = std::min(NR, b.N - n0);
    thread_local std::vector<float> panel;
    panel.resize(static_cast<size_t>(a.K) * NR);
    pack_panel(b, a.K, n0, cols, panel.data());
    for (int blk = q * per; blk < std::min(mblocks, (q + 1) * per); ++blk)
      block_panel(a, blk, panel.data(), b, n0, cols, c, out_n, e);
  });
}

// ---- convolution inputs ----------------------------------------------------------------
struct ConvGeom {
  int kh, kw, sh, sw, ph, pw, dh, dw;
};

// Zero-padded copy of one image (c x h x w) -> (c x hp x wp), plus one spare zero row.
void pad_input(const float* x, int c, int h, int w, const ConvGeom& g, float* out) {
  const int hp = h + 2 * g.ph, wp = w + 2 * g.pw;
  const size_t plane = size_t(hp) * wp;
  std::memset(out, 0, sizeof(float) * (plane * c + wp));
  for (int ch = 0; ch < c; ++ch)
    for (int i = 0; i < h; ++i)
      std::memcpy(out + ch * plane + size_t(i + g.ph) * wp + g.pw, x + (size_t(ch) * h + i) * w,
                  sizeof(float) * w);
}

// col[(c*kh + i)*kw + j][oy*wo + ox] for one image (c x h x w): strided convs only.
void im2col(const float* x, int c, int h, int w, const ConvGeom& g, int ho, int wo, float* col) {
  const int rows = c * g.kh * g.kw;
  for (int r = 0; r < rows; ++r) {
    const int j = r % g.kw, i = (r / g.kw) % g.kh, ch = r / (g.kw * g.kh);
    float* out = col + static_cast<size_t>(r) * ho * wo;
    const float* in = x + static_cast<size_t>(ch) * h * w;
    for (int oy = 0; oy < ho; ++oy) {
      const int iy = oy * g.sh - g.ph + i * g.dh;
      float* o = out + oy * wo;
      if (iy < 0 || iy >= h) {
        std::memset(o, 0, sizeof(float) * wo);
        continue;
      }
      const float* row = in + static_cast<size_t>(iy) * w;
      for (int ox = 0; ox < wo; ++ox) {
        const int ix = ox * g.sw - g.pw + j * g.dw;
        o[ox] = (ix >= 0 && ix < w) ? row[ix] : 0.0f;
      }
    }
  }
}

// How a conv (or matmul) reads its input: fills ``roff`` and returns the B source; may use
// ``scratch`` (a padded copy or an im2col buffer).
BSrc conv_source(const float* x, int c, int h, int w, const ConvGeom& g, int ho, int wo, bool window,
                 float* scratch, std::vector<int64_t>& roff) {
  if (!window) {  // a channel matmul
    roff.resize(c);
    for (int k = 0; k < c; ++k) roff[k] = int64_t(k) * h * w;
    return BSrc{x, roff.data(), h * w};
  }
  const int kk = g.kh * g.kw;
  roff.resize(size_t(c) * kk);
  if (g.sh == 1 && g.sw == 1) {
    const int hp = h + 2 * g.ph, wp = w + 2 * g.pw;
    const bool padded = g.ph || g.pw;
    if (padded) pad_input(x, c, h, w, g, scratch);
    const int rw = padded ? wp : w;
    for (int ch = 0; ch < c; ++ch)
      for (int i = 0; i < g.kh; ++i)
        for (int j = 0; j < g.kw; ++j)
          roff[(size_t(ch) * g.kh + i) * g.kw + j] =
              int64_t(ch) * (padded ? hp : h) * rw + int64_t(i) * g.dh * rw + int64_t(j) * g.dw;
    BSrc b{padded ? scratch : x, roff.data(), ho * rw};
    if (rw != wo || !padded) {
      b.wp = rw;
      b.wo = wo;
    }
    return b;
  }
  im2col(x, c, h, w, g, ho, wo, scratch);
  for (size_t k = 0; k < roff.size(); ++k) roff[k] = int64_t(k) * ho * wo;
  return BSrc{scratch, roff.data(), ho * wo};
}

size_t conv_scratch(int c, int h, int w, const ConvGeom& g, int ho, int wo) {
  if (g.sh == 1 && g.sw == 1) return size_t(c) * (h + 2 * g.ph) * (w + 2 * g.pw) + (w + 2 * g.pw);
  return size_t(c) * g.kh * g.kw * ho * wo;
}

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
  std::vector<float> ws;     // workspace, reused
  std::vector<int64_t> roff; // GEMM row offsets, reused
  std::mutex mu;
};

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
  if (L->kappa > 0) {
    L->s = pack(weights[wi++], L->kappa, L->I * L->g.kh * L->g.kw);
    L->srow.assign(L->O, -1);
    for (int r = 0; r < L->kappa; ++r) L->srow[index[r]] = r;
  }
  if (has_scale) L->scale.assign(weights[wi], weights[wi] + L->O), ++wi;
  if (has_bias) L->bias.assign(weights[wi], weights[wi] + L->O), ++wi;
  return L;
}

CEPD_API void cepd_tts_destroy(void* handle) { delete static_cast<Layer*>(handle); }

CEPD_API void cepd_tts_set_threads(int n) { pool().resize(n); }

CEPD_API int cepd_tts_threads() { return pool().size(); }

CEPD_API int cepd_tts_isa() { return detect_isa(); }  // the tile in use: 2 AVX-512, 1 AVX2, 0 generic

// y (n x O x Ho x Wo) = layer(x (n x I x H x W)) [+ residual (n x O x Ho x Wo)].
CEPD_API int cepd_tts_run(void* handle, const float* x, const float* residual, float* y, int n) {
  Layer& L = *static_cast<Layer*>(handle);
  std::lock_guard<std::mutex> lock(L.mu);
  const int hb = (L.H - 1) / L.sub_h + 1, wb = (L.W - 1) / L.sub_w + 1;  // branch input size
  const bool sub = L.sub_h > 1 || L.sub_w > 1;
  const ConvGeom g = sub ? ConvGeom{L.g.kh, L.g.kw, 1, 1, L.g.ph, L.g.pw, L.g.dh, L.g.dw} : L.g;
  const size_t in_hw = size_t(hb) * wb, out_hw = size_t(L.Ho) * L.Wo;
  // workspace: subsampled x, two ping-pong buffers, conv scratch, sparse branch output
  size_t chan = L.I;
  for (auto& s : L.steps) chan = std::max({chan, size_t(s.cin), size_t(s.cout)});
  const size_t big = chan * std::max(in_hw, out_hw);
  size_t scratch = 0;
  for (auto& s : L.steps)
    if (s.conv) scratch = std::max(scratch, conv_scratch(s.cin, hb, wb, g, L.Ho, L.Wo));
  if (L.kappa) scratch = std::max(scratch, conv_scratch(L.I, hb, wb, g, L.Ho, L.Wo));
  const size_t need = (sub ? size_t(L.I) * in_hw : 0) + 2 * big + scratch + size_t(L.kappa) * out_hw;
  if (L.ws.size() < need) L.ws.resize(need);
  float* xs = L.ws.data();
  float* buf[2] = {xs + (sub ? size_t(L.I) * in_hw : 0), nullptr};
  buf[1] = buf[0] + big;
  float* scr = buf[1] + big;
  float* sb = scr + scratch;
  std::vector<int64_t>& roff = L.roff;
  for (int b = 0; b < n; ++b) {
    const float* xb = x + size_t(b) * L.I * L.H * L.W;
    if (sub) {
      for (int c = 0; c < L.I; ++c)
        for (int i = 0; i < hb; ++i)
          for (int j = 0; j < wb; ++j)
            xs[(size_t(c) * hb + i) * wb + j] = xb[(size_t(c) * L.H + i * L.sub_h) * L.W + j * L.sub_w];
      xb = xs;
    }
    const bool pointwise = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
    if (L.kappa) {
      BSrc src = conv_source(xb, L.I, hb, wb, g, L.Ho, L.Wo, !pointwise, scr, roff);
      gemm(L.s, src, sb, out_hw, nullptr);
    }
    Epilogue e;
    e.scale = L.scale.empty() ? nullptr : L.scale.data();
    e.bias = L.bias.empty() ? nullptr : L.bias.data();
    e.srow = L.kappa ? L.srow.data() : nullptr;
    e.s = sb;
    e.residual = L.residual ? residual + size_t(b) * L.O * out_hw : nullptr;
    e.act = L.act;
    const float* cur = xb;
    int hh = hb, ww = wb, which = 0;
    for (size_t k = 0; k < L.steps.size(); ++k) {
      const Step& s = L.steps[k];
      const bool last = k + 1 == L.steps.size();
      float* out = last ? y + size_t(b) * L.O * out_hw : buf[which];
      const bool window = s.conv && !pointwise;
      BSrc src = conv_source(cur, s.cin, hh, ww, g, L.Ho, L.Wo, window, scr, roff);
      if (s.conv) hh = L.Ho, ww = L.Wo;
      gemm(s.w, src, out, size_t(hh) * ww, last ? &e : nullptr);
      cur = out;
      which ^= 1;
    }
  }
  return 0;
}

}  // extern "C"
