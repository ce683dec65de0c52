// onnxruntime custom-op library: ai.cepd::TTSparseConv on the native kernel (ttsparse.cpp).
//
// Built as cepd_deploy._ort_cepd together with the kernel sources; onnxruntime loads it with
// SessionOptions.register_custom_ops_library(cepd_deploy.get_library_path()) and calls
// RegisterCustomOps. Plain C API only, declared in ort_abi.h (the part of the API used here, API
// version 21; the C API is append-only, so onnxruntime 1.21 and every later release load it).
// Built with -DCEPD_ORT_OFFICIAL_HEADER (setup.py, when $CEPD_ORT_HEADERS is set), it includes
// onnxruntime's own onnxruntime_c_api.h instead: the same source compiles against both.
//
// The op has one heterogeneous variadic input (X, the step weights, S, index, scale, bias, R: the
// fused exporter's order) and one output Y. The layer geometry comes from the node's int64
// attribute `native_desc` (the cepd_tts_create descriptor, written by the fused exporter for the
// layers the kernel supports). The kernel handle is built from the constant inputs when the
// session creates the kernel (or, if they are not initializers, at the first Compute) and reused.
// cepd_ort_runs() counts Compute calls (for tests), cepd_ort_version() names the runtime that
// registered the library; the kernel's threads: cepd_tts_set_threads.

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#ifdef CEPD_ORT_OFFICIAL_HEADER
#include <onnxruntime_c_api.h>
#else
#include "ort_abi.h"
#endif

extern "C" {
void* cepd_tts_create(const int64_t* desc, const float* const* weights, const int64_t* index);
void cepd_tts_destroy(void* handle);
int cepd_tts_run(void* handle, const float* x, const float* residual, float* y, int n);
}

#define CEPD_EXPORT __attribute__((visibility("default")))

namespace {

std::atomic<int64_t> g_runs{0};
std::atomic<const OrtApiBase*> g_api_base{nullptr};  // of the last RegisterCustomOps
std::atomic<int> g_registered{0};                     // domains added to session options

#define CEPD_RETURN_IF_ERROR(expr)       \
  do {                                   \
    OrtStatus* _st = (expr);             \
    if (_st != nullptr) return _st;      \
  } while (0)

// ---- reference path: layers the native kernel does not run ---------------------------------------
// A node without native_desc but with ref_desc (the fused exporter writes it for every layer the
// kernel does not support: chains with permutes or folded views, grouped or several conv steps)
// runs here, so the bare register_custom_ops_library recipe loads every fused model: the ops of
// the layer's function body (subsample, matmul / conv / permute steps, the sparse branch and its
// scatter, the epilogue) in plain float32 loops on one thread. Slower than onnxruntime running
// the body itself, which native_model() arranges. Every field of ref_desc is checked at session
// load (a hostile model gets an error, never an out-of-bounds access).
struct RefStep {
  int op = 0;  // 0 matmul, 1 conv, 2 permute
  int64_t outer = 1, cin = 0, cout = 0, inner = 1;
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, groups = 1;
  std::vector<int64_t> axes, perm;
  int64_t c = 0, h = 0, w = 0;       // input channels and map
  int64_t oc = 0, oh = 0, ow = 0;    // output
  int weight = -1;                   // input index of its weight (-1: a permute)
};

struct RefConv {
  int64_t cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, groups;
};

// y (cout, ho, wo) += conv(x (cin, h, w), wt (cout, cin / groups, kh, kw)).
void ref_conv(const float* x, int64_t h, int64_t w, const float* wt, const RefConv& g, float* y, int64_t ho,
              int64_t wo) {
  const int64_t cpg = g.cin / g.groups, opg = g.cout / g.groups;
  for (int64_t co = 0; co < g.cout; ++co) {
    const int64_t c0 = (co / opg) * cpg;
    for (int64_t ci = 0; ci < cpg; ++ci) {
      for (int64_t a = 0; a < g.kh; ++a) {
        for (int64_t b = 0; b < g.kw; ++b) {
          const float wv = wt[((co * cpg + ci) * g.kh + a) * g.kw + b];
          const int64_t off = b * g.dw - g.pw;  // iw = ow * sw + off
          int64_t ow0 = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
          int64_t ow1 = w - 1 - off < 0 ? -1 : (w - 1 - off) / g.sw;  // last ow with iw < w
          ow1 = std::min(ow1, wo - 1);
          for (int64_t oh = 0; oh < ho; ++oh) {
            const int64_t ih = oh * g.sh - g.ph + a * g.dh;
            if (ih < 0 || ih >= h) continue;
            const float* xr = x + ((c0 + ci) * h + ih) * w;
            float* yr = y + (co * ho + oh) * wo;
            for (int64_t o = ow0; o <= ow1; ++o) yr[o] += wv * xr[o * g.sw + off];
          }
        }
      }
    }
  }
}

int64_t conv_out(int64_t n, int64_t k, int64_t s, int64_t p, int64_t d) { return (n + 2 * p - d * (k - 1) - 1) / s + 1; }

struct RefLayer {
  int64_t I = 0, H = 0, W = 0, O = 0, Ho = 0, Wo = 0, sub_h = 1, sub_w = 1, kappa = 0;
  int64_t has_scale = 0, has_bias = 0, residual = 0, act = 0;
  RefConv s{};  // the sparse branch (cout = kappa)
  std::vector<RefStep> steps;
  size_t n_inputs = 0;
  int s_input = -1, index_input = -1, scale_input = -1, bias_input = -1;
  int64_t hs = 0, ws = 0;  // the (subsampled) input map the chain and the branch read

  // Parse and check ref_desc; an empty string when it describes a consistent layer.
  std::string parse(const std::vector<int64_t>& d) {
    size_t i = 0;
    bool bad = false;
    auto next = [&](int64_t lo, int64_t hi) -> int64_t {
      if (i >= d.size() || d[i] < lo || d[i] > hi) {
        bad = true;
        return lo;
      }
      return d[i++];
    };
    const int64_t big = int64_t(1) << 20;  // any one size
    if (next(1, 1) != 1 || bad) return "unsupported ref_desc version";
    I = next(1, big), H = next(1, big), W = next(1, big), O = next(1, big), Ho = next(1, big), Wo = next(1, big);
    sub_h = next(1, big), sub_w = next(1, big), kappa = next(0, O);
    has_scale = next(0, 1), has_bias = next(0, 1), residual = next(0, 1), act = next(0, 2);
    s = RefConv{I, kappa, next(1, 4096), next(1, 4096), next(1, big), next(1, big), next(0, big), next(0, big),
                next(1, big), next(1, big), 1};
    const int64_t nsteps = next(1, 64);
    if (bad) return "malformed ref_desc header";
    hs = (H - 1) / sub_h + 1, ws = (W - 1) / sub_w + 1;
    int64_t c = I, h = hs, w = ws;
    int input = 1;
    const double most = double(int64_t(1) << 28);  // elements of any one value (1 GiB of floats)
    if (double(I) * H * W > most || double(O) * Ho * Wo > most || double(I) * hs * ws > most)
      return "the layer's input or output is too large";
    for (int64_t k = 0; k < nsteps; ++k) {
      RefStep st;
      st.op = int(next(0, 2));
      st.c = c, st.h = h, st.w = w;
      if (st.op == 0) {
        st.outer = next(1, big), st.cin = next(1, big), st.cout = next(1, big), st.inner = next(1, big);
        if (bad || double(st.outer) * st.cin * st.inner != double(c)) return "a matmul step does not fit its input";
        st.oc = st.outer * st.cout * st.inner, st.oh = h, st.ow = w;
        st.weight = input++;
      } else if (st.op == 1) {
        st.outer = next(1, big), st.cin = next(1, big), st.cout = next(1, big);
        st.kh = next(1, 4096), st.kw = next(1, 4096), st.sh = next(1, big), st.sw = next(1, big);
        st.ph = next(0, big), st.pw = next(0, big), st.dh = next(1, big), st.dw = next(1, big);
        st.groups = next(1, big);
        if (bad || double(st.outer) * st.cin != double(c) || st.cin % st.groups || st.cout % st.groups)
          return "a conv step does not fit its input";
        st.oc = st.outer * st.cout;
        st.oh = conv_out(h, st.kh, st.sh, st.ph, st.dh), st.ow = conv_out(w, st.kw, st.sw, st.pw, st.dw);
        if (st.oh < 1 || st.ow < 1) return "a conv step's window is larger than its input";
        st.weight = input++;
      } else {
        const int64_t n = next(1, 16);
        int64_t prod = 1;
        for (int64_t j = 0; j < n && !bad; ++j) {
          st.axes.push_back(next(1, big));
          prod = std::min<int64_t>(prod * st.axes.back(), big * big);  // no overflow: c <= 2^28
        }
        std::vector<int> seen(size_t(n), 0);
        for (int64_t j = 0; j < n && !bad; ++j) {
          st.perm.push_back(next(0, n - 1));
          if (!bad && seen[size_t(st.perm.back())]++) return "a permute step's perm is not a permutation";
        }
        if (bad || prod != c) return "a permute step does not fit its input";
        st.oc = c, st.oh = h, st.ow = w;
      }
      if (bad) return "malformed ref_desc step";
      if (double(st.oc) * st.oh * st.ow > most || double(st.c) * st.h * st.w > most)
        return "a step's output is too large";
      c = st.oc, h = st.oh, w = st.ow;
      steps.push_back(std::move(st));
    }
    if (i != d.size()) return "ref_desc has trailing fields";
    if (c != O || h != Ho || w != Wo) return "the steps do not produce the layer's output shape";
    if (kappa) {
      if (conv_out(hs, s.kh, s.sh, s.ph, s.dh) != Ho || conv_out(ws, s.kw, s.sw, s.pw, s.dw) != Wo)
        return "the sparse branch's window does not produce the output map";
      s_input = input++, index_input = input++;
    }
    if (has_scale) scale_input = input++;
    if (has_bias) bias_input = input++;
    n_inputs = size_t(input + residual);
    return "";
  }

  // Expected element count of every weight input (checked against the tensors at each run).
  int64_t weight_elems(int k) const {
    for (const RefStep& st : steps)
      if (st.weight == k) return st.op == 0 ? st.cout * st.cin : st.cout * (st.cin / st.groups) * st.kh * st.kw;
    if (k == s_input) return kappa * I * s.kh * s.kw;
    if (k == index_input) return kappa;
    return O;  // scale, bias
  }

  // One image: x (I, H, W) [+ r (O, Ho, Wo)] -> y (O, Ho, Wo).
  void run(const float* x, const std::vector<const float*>& wts, const int64_t* index, const float* r, float* y,
           std::vector<float>& a, std::vector<float>& b) const {
    a.assign(size_t(I * hs * ws), 0.f);
    for (int64_t c = 0; c < I; ++c)
      for (int64_t i = 0; i < hs; ++i)
        for (int64_t j = 0; j < ws; ++j) a[size_t((c * hs + i) * ws + j)] = x[(c * H + i * sub_h) * W + j * sub_w];
    std::vector<float> xs = a;  // what the sparse branch reads
    for (const RefStep& st : steps) {
      b.assign(size_t(st.oc * st.oh * st.ow), 0.f);
      const int64_t hw = st.h * st.w;
      if (st.op == 0) {
        const int64_t len = st.inner * hw;
        const float* wt = wts[size_t(st.weight)];
        for (int64_t o = 0; o < st.outer; ++o)
          for (int64_t co = 0; co < st.cout; ++co) {
            float* yr = b.data() + (o * st.cout + co) * len;
            for (int64_t ci = 0; ci < st.cin; ++ci) {
              const float wv = wt[co * st.cin + ci];
              const float* xr = a.data() + (o * st.cin + ci) * len;
              for (int64_t l = 0; l < len; ++l) yr[l] += wv * xr[l];
            }
          }
      } else if (st.op == 1) {
        const RefConv g{st.cin, st.cout, st.kh, st.kw, st.sh, st.sw, st.ph, st.pw, st.dh, st.dw, st.groups};
        for (int64_t o = 0; o < st.outer; ++o)
          ref_conv(a.data() + o * st.cin * hw, st.h, st.w, wts[size_t(st.weight)], g,
                   b.data() + o * st.cout * st.oh * st.ow, st.oh, st.ow);
      } else {  // out axis d <- in axis perm[d]; the map rides along
        const size_t n = st.axes.size();
        std::vector<int64_t> in_stride(n), out_dims(n), idx(n, 0);
        int64_t acc = hw;
        for (size_t d = n; d-- > 0;) in_stride[d] = acc, acc *= st.axes[d];
        for (size_t d = 0; d < n; ++d) out_dims[d] = st.axes[size_t(st.perm[d])];
        for (int64_t oc = 0; oc < st.oc; ++oc) {
          int64_t src = 0;
          for (size_t d = 0; d < n; ++d) src += idx[d] * in_stride[size_t(st.perm[d])];
          std::copy(a.data() + src, a.data() + src + hw, b.data() + oc * hw);
          for (size_t d = n; d-- > 0;) {
            if (++idx[d] < out_dims[d]) break;
            idx[d] = 0;
          }
        }
      }
      a.swap(b);
    }
    const int64_t map = Ho * Wo;
    std::copy(a.begin(), a.end(), y);
    if (kappa) {
      b.assign(size_t(kappa * map), 0.f);
      ref_conv(xs.data(), hs, ws, wts[size_t(s_input)], s, b.data(), Ho, Wo);
      for (int64_t k = 0; k < kappa; ++k) {
        float* yr = y + index[k] * map;
        for (int64_t p = 0; p < map; ++p) yr[p] += b[size_t(k * map + p)];
      }
    }
    const float* scale = has_scale ? wts[size_t(scale_input)] : nullptr;
    const float* bias = has_bias ? wts[size_t(bias_input)] : nullptr;
    for (int64_t c = 0; c < O; ++c) {
      float* yr = y + c * map;
      const float sc = scale ? scale[c] : 1.f, bi = bias ? bias[c] : 0.f;
      for (int64_t p = 0; p < map; ++p) {
        float v = yr[p];
        if (scale) v *= sc;
        if (bias) v += bi;
        if (r) v += r[c * map + p];
        if (act >= 1) v = v > 0.f ? v : 0.f;
        if (act == 2) v = v < 6.f ? v : 6.f;
        yr[p] = v;
      }
    }
  }
};

struct Kernel {
  const OrtApi* api = nullptr;
  std::string name;
  std::vector<int64_t> desc;
  int n_w = 0;            // weights before the index: steps (+ S)
  int kappa = 0, has_scale = 0, has_bias = 0, residual = 0;
  size_t n_inputs = 0;
  int64_t I = 0, H = 0, W = 0, O = 0, Ho = 0, Wo = 0;
  void* handle = nullptr;
  std::mutex mu;
  std::vector<RefLayer> ref;  // one: a layer without native_desc, run by the reference path

  ~Kernel() {
    if (handle) cepd_tts_destroy(handle);
  }

  OrtStatus* error(const std::string& what) const {
    return api->CreateStatus(ORT_FAIL, ("TTSparseConv node '" + name + "': " + what).c_str());
  }

  // Build the kernel handle from the weight tensors (inputs 1 .. n_inputs-1-residual).
  OrtStatus* build(const std::vector<const OrtValue*>& ins) {
    std::vector<const float*> weights;
    const int64_t* index = nullptr;
    size_t k = 1;
    for (int i = 0; i < n_w; ++i, ++k) {
      void* p = nullptr;
      CEPD_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(ins[k]), &p));
      weights.push_back(static_cast<const float*>(p));
    }
    if (kappa) {
      void* p = nullptr;
      CEPD_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(ins[k++]), &p));
      index = static_cast<const int64_t*>(p);
    }
    for (int flag : {has_scale, has_bias}) {
      if (!flag) continue;
      void* p = nullptr;
      CEPD_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(ins[k++]), &p));
      weights.push_back(static_cast<const float*>(p));
    }
    handle = cepd_tts_create(desc.data(), weights.data(), index);
    return handle ? nullptr : error("the kernel could not be created");
  }

  OrtStatus* shape(const OrtValue* v, std::vector<int64_t>& dims) const {
    OrtTensorTypeAndShapeInfo* info = nullptr;
    CEPD_RETURN_IF_ERROR(api->GetTensorTypeAndShape(v, &info));
    size_t n = 0;
    OrtStatus* st = api->GetDimensionsCount(info, &n);
    if (!st) {
      dims.resize(n);
      st = api->GetDimensions(info, dims.data(), n);
    }
    api->ReleaseTensorTypeAndShapeInfo(info);
    return st;
  }

  // The residual (last input, checked against the output's shape) when there is one, the input's
  // data and the output allocated at ``dims``: what both compute paths need before they run.
  OrtStatus* io(OrtKernelContext* ctx, const std::vector<const OrtValue*>& ins, const int64_t (&dims)[4],
                bool has_residual, const float** res, void** x, void** y) const {
    if (has_residual) {
      std::vector<int64_t> rd;
      CEPD_RETURN_IF_ERROR(shape(ins.back(), rd));
      if (rd != std::vector<int64_t>(dims, dims + 4)) return error("residual shape differs from the output's");
      void* p = nullptr;
      CEPD_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(ins.back()), &p));
      *res = static_cast<const float*>(p);
    }
    OrtValue* out = nullptr;
    CEPD_RETURN_IF_ERROR(api->KernelContext_GetOutput(ctx, 0, dims, 4, &out));
    CEPD_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(ins[0]), x));
    return api->GetTensorMutableData(out, y);
  }

  // Every input is float32 but the S branch's channel index (int64): the inputs are declared
  // untyped (variadic, mixed), so onnxruntime does not check this for us.
  OrtStatus* check_types(const std::vector<const OrtValue*>& ins, size_t index_input) const {
    for (size_t i = 0; i < ins.size(); ++i) {
      OrtTensorTypeAndShapeInfo* info = nullptr;
      CEPD_RETURN_IF_ERROR(api->GetTensorTypeAndShape(ins[i], &info));
      ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
      OrtStatus* st = api->GetTensorElementType(info, &type);
      api->ReleaseTensorTypeAndShapeInfo(info);
      if (st) return st;
      const bool index = i == index_input;
      if (type != (index ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT))
        return error("input " + std::to_string(i) + " must be " + (index ? "int64" : "float32"));
    }
    return nullptr;
  }

  // The reference path (see RefLayer): inputs checked against ref_desc, then image by image.
  OrtStatus* ref_compute(OrtKernelContext* ctx) {
    const RefLayer& L = ref[0];
    size_t count = 0;
    CEPD_RETURN_IF_ERROR(api->KernelContext_GetInputCount(ctx, &count));
    if (count != L.n_inputs) return error("unexpected number of inputs");
    std::vector<const OrtValue*> ins(count);
    std::vector<const float*> wts(count, nullptr);
    for (size_t i = 0; i < count; ++i) CEPD_RETURN_IF_ERROR(api->KernelContext_GetInput(ctx, i, &ins[i]));
    CEPD_RETURN_IF_ERROR(check_types(ins, L.index_input < 0 ? count : size_t(L.index_input)));
    std::vector<int64_t> xd;
    CEPD_RETURN_IF_ERROR(shape(ins[0], xd));
    if (xd.size() != 4 || xd[0] < 0 || xd[1] != L.I || xd[2] != L.H || xd[3] != L.W)
      return error("input shape differs from the exported layer's (N, " + std::to_string(L.I) + ", " +
                   std::to_string(L.H) + ", " + std::to_string(L.W) + ")");
    const int64_t* index = nullptr;
    for (size_t i = 1; i < count - size_t(L.residual); ++i) {
      std::vector<int64_t> d;
      CEPD_RETURN_IF_ERROR(shape(ins[i], d));
      int64_t elems = 1;
      for (int64_t v : d) elems = v < 0 ? -1 : elems * v;
      if (elems != L.weight_elems(int(i))) return error("weight input " + std::to_string(i) + " has the wrong size");
      void* p = nullptr;
      CEPD_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(ins[i]), &p));
      if (int(i) == L.index_input) index = static_cast<const int64_t*>(p);
      else wts[i] = static_cast<const float*>(p);
    }
    for (int64_t k = 0; k < L.kappa; ++k)
      if (index[k] < 0 || index[k] >= L.O) return error("an index entry is not an output channel");
    const int64_t dims[4] = {xd[0], L.O, L.Ho, L.Wo};
    const float* res = nullptr;
    void* x = nullptr;
    void* y = nullptr;
    CEPD_RETURN_IF_ERROR(io(ctx, ins, dims, L.residual, &res, &x, &y));
    const int64_t in_n = L.I * L.H * L.W, out_n = L.O * L.Ho * L.Wo;
    std::vector<float> a, b;
    for (int64_t n = 0; n < xd[0]; ++n)
      L.run(static_cast<const float*>(x) + n * in_n, wts, index, res ? res + n * out_n : nullptr,
            static_cast<float*>(y) + n * out_n, a, b);
    g_runs.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }

  OrtStatus* compute(OrtKernelContext* ctx) {
    if (!ref.empty()) return ref_compute(ctx);
    size_t count = 0;
    CEPD_RETURN_IF_ERROR(api->KernelContext_GetInputCount(ctx, &count));
    if (count != n_inputs) return error("unexpected number of inputs");
    std::vector<const OrtValue*> ins(count);
    for (size_t i = 0; i < count; ++i) CEPD_RETURN_IF_ERROR(api->KernelContext_GetInput(ctx, i, &ins[i]));
    CEPD_RETURN_IF_ERROR(check_types(ins, kappa ? size_t(1 + n_w) : count));
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!handle) CEPD_RETURN_IF_ERROR(build(ins));
    }
    std::vector<int64_t> xd;
    CEPD_RETURN_IF_ERROR(shape(ins[0], xd));
    if (xd.size() != 4 || xd[1] != I || xd[2] != H || xd[3] != W)
      return error("input shape differs from the exported layer's (N, " + std::to_string(I) + ", " +
                   std::to_string(H) + ", " + std::to_string(W) + ")");
    const int64_t dims[4] = {xd[0], O, Ho, Wo};
    const float* res = nullptr;
    void* x = nullptr;
    void* y = nullptr;
    CEPD_RETURN_IF_ERROR(io(ctx, ins, dims, residual, &res, &x, &y));
    if (xd[0] > 0) cepd_tts_run(handle, static_cast<const float*>(x), res, static_cast<float*>(y), int(xd[0]));
    g_runs.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
};

OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info,
                                      void** out) {
  auto* k = new Kernel();
  k->api = api;
  size_t len = 0;
  if (!api->KernelInfo_GetNodeName(info, nullptr, &len) && len > 0) {
    std::vector<char> buf(len);
    if (OrtStatus* st = api->KernelInfo_GetNodeName(info, buf.data(), &len)) api->ReleaseStatus(st);
    else k->name.assign(buf.data());
  }
  size_t n = 0;
  OrtStatus* st = api->KernelInfoGetAttributeArray_int64(info, "native_desc", nullptr, &n);
  if (st || n < 22) {
    if (st) api->ReleaseStatus(st);
    size_t rn = 0;  // no native_desc: the reference path, where the exporter described the layer
    if (OrtStatus* rs = api->KernelInfoGetAttributeArray_int64(info, "ref_desc", nullptr, &rn)) {
      api->ReleaseStatus(rs);
    } else if (rn > 0 && rn <= 4096) {
      std::vector<int64_t> d(rn);
      if ((st = api->KernelInfoGetAttributeArray_int64(info, "ref_desc", d.data(), &rn))) {
        delete k;
        return st;
      }
      k->ref.emplace_back();
      const std::string why = k->ref[0].parse(d);
      size_t count = 0;
      if (why.empty() && ((st = api->KernelInfo_GetInputCount(info, &count)) || count != k->ref[0].n_inputs)) {
        if (st) api->ReleaseStatus(st);
        OrtStatus* err = k->error("the node's inputs do not match its ref_desc");
        delete k;
        return err;
      }
      if (!why.empty()) {
        OrtStatus* err = k->error("ref_desc: " + why);
        delete k;
        return err;
      }
      *out = k;
      return nullptr;
    }
    OrtStatus* err = k->error("no native_desc or ref_desc attribute (a model exported by an older "
                              "cepd-deploy): export it again, or use "
                              "cepd_deploy.targets.onnx.ort_library.native_model(model) (or "
                              "build_session(model, native=True)), which leaves such layers to their "
                              "function bodies");
    delete k;
    return err;
  }
  k->desc.resize(n);
  if ((st = api->KernelInfoGetAttributeArray_int64(info, "native_desc", k->desc.data(), &n))) {
    delete k;
    return st;
  }
  const int64_t* d = k->desc.data();
  k->I = d[0], k->H = d[1], k->W = d[2], k->O = d[3], k->Ho = d[4], k->Wo = d[5];
  const int nsteps = int(d[16]);
  k->kappa = int(d[17]), k->has_scale = int(d[18]), k->has_bias = int(d[19]), k->residual = int(d[20]);
  k->n_w = nsteps + (k->kappa ? 1 : 0);
  k->n_inputs = 1 + k->n_w + (k->kappa ? 1 : 0) + k->has_scale + k->has_bias + k->residual;
  if (n != size_t(22 + 3 * nsteps)) {
    OrtStatus* err = k->error("malformed native_desc");
    delete k;
    return err;
  }
  size_t count = 0;
  if ((st = api->KernelInfo_GetInputCount(info, &count)) || count != k->n_inputs) {
    if (st) api->ReleaseStatus(st);
    OrtStatus* err = k->error("the node's inputs do not match its native_desc");
    delete k;
    return err;
  }
  // weights that are initializers: pack them now, once per session
  std::vector<const OrtValue*> ins(count, nullptr);
  bool all_const = true;
  for (size_t i = 1; i < count - k->residual && all_const; ++i) {
    int is_const = 0;
    if ((st = api->KernelInfoGetConstantInput_tensor(info, i, &is_const, &ins[i]))) {
      api->ReleaseStatus(st);
      is_const = 0;
    }
    all_const = is_const != 0;
  }
  if (all_const && (st = k->build(ins))) {
    delete k;
    return st;
  }
  *out = k;
  return nullptr;
}

OrtStatus* ORT_API_CALL compute(void* kernel, OrtKernelContext* ctx) {
  return static_cast<Kernel*>(kernel)->compute(ctx);
}

void ORT_API_CALL destroy(void* kernel) { delete static_cast<Kernel*>(kernel); }

size_t ORT_API_CALL no_pairs(int** in, int** out) {
  *in = nullptr;
  *out = nullptr;
  return 0;
}
void ORT_API_CALL release_pairs(int*, int*) {}

OrtCustomOp make_op() {
  OrtCustomOp op{};
  op.version = ORT_API_VERSION;
  op.GetName = [](const OrtCustomOp*) -> const char* { return "TTSparseConv"; };
  op.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return "CPUExecutionProvider"; };
  op.GetInputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED; };
  op.GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
  op.GetOutputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
  op.GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
  op.GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_VARIADIC; };
  op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  op.GetVariadicInputMinArity = [](const OrtCustomOp*) { return 2; };
  op.GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 0; };
  op.GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute;
  op.KernelDestroy = destroy;
  op.GetStartVersion = [](const OrtCustomOp*) { return 1; };
  op.GetEndVersion = [](const OrtCustomOp*) { return INT_MAX; };
  op.GetMayInplace = no_pairs;
  op.ReleaseMayInplace = release_pairs;
  op.GetAliasMap = no_pairs;
  op.ReleaseAliasMap = release_pairs;
  return op;
}

OrtCustomOp g_op = make_op();

}  // namespace

extern "C" {

// Called by onnxruntime (SessionOptions.register_custom_ops_library): adds the ai.cepd domain.
CEPD_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  g_api_base.store(api_base);
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;  // cannot report: a runtime older than ORT_API_VERSION
  OrtCustomOpDomain* domain = nullptr;
  CEPD_RETURN_IF_ERROR(api->CreateCustomOpDomain("ai.cepd", &domain));
  CEPD_RETURN_IF_ERROR(api->CustomOpDomain_Add(domain, &g_op));
  // the domain must outlive every session using it: kept for the life of the process
  CEPD_RETURN_IF_ERROR(api->AddCustomOpDomain(options, domain));
  g_registered.fetch_add(1, std::memory_order_relaxed);
  return nullptr;
}

// Compute calls of TTSparseConv kernels since the library was loaded.
CEPD_EXPORT int64_t cepd_ort_runs() { return g_runs.load(); }

// The onnxruntime release that registered the library (OrtApiBase::GetVersionString), or null
// before any RegisterCustomOps.
CEPD_EXPORT const char* cepd_ort_version() {
  const OrtApiBase* base = g_api_base.load();
  return base ? base->GetVersionString() : nullptr;
}

// The C API version the library asks for (ORT_API_VERSION): it loads in runtimes at least as new.
CEPD_EXPORT int cepd_ort_api_version() { return ORT_API_VERSION; }

// How many times RegisterCustomOps added the ai.cepd domain (0 after a call on a runtime that
// lacks API version ORT_API_VERSION: GetApi returns null and nothing can be reported to it).
CEPD_EXPORT int cepd_ort_registered() { return g_registered.load(); }

}  // extern "C"
