// onnxruntime custom-op library: ai.cepd::TTSparseConv on the native kernel (ttsparse.cpp).
//
// Built as cepd_deploy._ort_cepd together with the kernel sources; onnxruntime loads it with
// SessionOptions.register_custom_ops_library(cepd_deploy.get_library_path()) and calls
// RegisterCustomOps. Plain C API only (onnxruntime_c_api.h), compiled against API version 21
// (Debian's libonnxruntime-dev 1.21 headers); the C API is append-only, so newer runtimes load it.
//
// The op has one heterogeneous variadic input (X, the step weights, S, index, scale, bias, R: the
// fused exporter's order) and one output Y. The layer geometry comes from the node's int64
// attribute `native_desc` (the cepd_tts_create descriptor, written by the fused exporter for the
// layers the kernel supports). The kernel handle is built from the constant inputs when the
// session creates the kernel (or, if they are not initializers, at the first Compute) and reused.
// cepd_ort_runs() counts Compute calls (for tests); the kernel's threads: cepd_tts_set_threads.

#include <atomic>
#include <climits>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "onnxruntime_c_api.h"

extern "C" {
void* cepd_tts_create(const int64_t* desc, const float* const* weights, const int64_t* index);
void cepd_tts_destroy(void* handle);
int cepd_tts_run(void* handle, const float* x, const float* residual, float* y, int n);
}

#define CEPD_EXPORT __attribute__((visibility("default")))

namespace {

std::atomic<int64_t> g_runs{0};

#define CEPD_RETURN_IF_ERROR(expr)       \
  do {                                   \
    OrtStatus* _st = (expr);             \
    if (_st != nullptr) return _st;      \
  } while (0)

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

  OrtStatus* compute(OrtKernelContext* ctx) {
    size_t count = 0;
    CEPD_RETURN_IF_ERROR(api->KernelContext_GetInputCount(ctx, &count));
    if (count != n_inputs) return error("unexpected number of inputs");
    std::vector<const OrtValue*> ins(count);
    for (size_t i = 0; i < count; ++i) CEPD_RETURN_IF_ERROR(api->KernelContext_GetInput(ctx, i, &ins[i]));
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
    if (residual) {
      std::vector<int64_t> rd;
      CEPD_RETURN_IF_ERROR(shape(ins[count - 1], rd));
      if (rd != std::vector<int64_t>(dims, dims + 4)) return error("residual shape differs from the output's");
      void* p = nullptr;
      CEPD_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(ins[count - 1]), &p));
      res = static_cast<const float*>(p);
    }
    OrtValue* out = nullptr;
    CEPD_RETURN_IF_ERROR(api->KernelContext_GetOutput(ctx, 0, dims, 4, &out));
    void* x = nullptr;
    void* y = nullptr;
    CEPD_RETURN_IF_ERROR(api->GetTensorMutableData(const_cast<OrtValue*>(ins[0]), &x));
    CEPD_RETURN_IF_ERROR(api->GetTensorMutableData(out, &y));
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
    OrtStatus* err = k->error("no native_desc attribute: the native kernel does not support this layer. "
                              "Use cepd_deploy.targets.onnx.ort_library.native_model(model) (or "
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
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;  // cannot report: a runtime older than the headers
  OrtCustomOpDomain* domain = nullptr;
  CEPD_RETURN_IF_ERROR(api->CreateCustomOpDomain("ai.cepd", &domain));
  CEPD_RETURN_IF_ERROR(api->CustomOpDomain_Add(domain, &g_op));
  // the domain must outlive every session using it: kept for the life of the process
  return api->AddCustomOpDomain(options, domain);
}

// Compute calls of TTSparseConv kernels since the library was loaded.
CEPD_EXPORT int64_t cepd_ort_runs() { return g_runs.load(); }

}  // extern "C"
