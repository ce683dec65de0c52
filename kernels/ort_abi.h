// ort_abi.h: the slice of onnxruntime's C API that the custom-op library (ort_customop.cpp) uses,
// declared here so that building cepd_deploy._ort_cepd needs no onnxruntime header at all.
//
// Why a partial declaration is safe. onnxruntime's C API is not a set of exported functions but
// one table of function pointers, OrtApi, that the runtime hands out through
// OrtApiBase::GetApi(version). The table is append-only and versioned: each release adds its new
// entries at the end and never moves, removes or retypes an existing one, so the position of every
// entry is a fixed, documented part of the ABI, and a library built for API version N works with
// every runtime whose API version is >= N (GetApi returns null on an older one). Below, the
// entries we call are declared with their documented signatures at their documented positions;
// every other entry up to the last one we call is an opaque pointer-sized slot. The static_asserts
// at the end pin each position, so an edit that shifts a slot does not compile.
//
// OrtCustomOp, the struct the library fills in for each op, is versioned the same way: its
// `version` field says which API version the struct follows, the runtime reads only the fields
// that existed in that version, and new fields are only ever appended. We declare every field up to
// API version ORT_API_VERSION. The enums keep their documented values; all are plain C enums
// (int-sized), as in the runtime.
//
// Names (types, entries, enumerators, ORT_API_CALL, ORT_API_VERSION) are the API's own, so
// ort_customop.cpp also compiles against onnxruntime's official onnxruntime_c_api.h; setup.py does
// that instead when $CEPD_ORT_HEADERS names a folder holding it (a cross-check).

#ifndef CEPD_ORT_ABI_H_
#define CEPD_ORT_ABI_H_

#include <stddef.h>
#include <stdint.h>

// The API version this library targets: onnxruntime 1.21 and every later release.
#define ORT_API_VERSION 21

// Calling convention of the API's function pointers: __stdcall on Windows, the default elsewhere.
#if defined(_WIN32)
#define ORT_API_CALL __stdcall
#else
#define ORT_API_CALL
#endif

// The runtime's functions never throw into the caller (errors come back as an OrtStatus*).
#if defined(__cplusplus)
#define CEPD_ORT_NOTHROW noexcept
#else
#define CEPD_ORT_NOTHROW
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Opaque runtime objects: only ever handled through pointers.
typedef struct OrtStatus OrtStatus;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtValue OrtValue;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtShapeInferContext OrtShapeInferContext;
typedef struct OrtCustomOp OrtCustomOp;

// Status codes; a null OrtStatus* means success.
typedef enum OrtErrorCode {
  ORT_OK = 0,
  ORT_FAIL = 1,
  ORT_INVALID_ARGUMENT = 2,
  ORT_NO_SUCHFILE = 3,
  ORT_NO_MODEL = 4,
  ORT_ENGINE_ERROR = 5,
  ORT_RUNTIME_EXCEPTION = 6,
  ORT_INVALID_PROTOBUF = 7,
  ORT_MODEL_LOADED = 8,
  ORT_NOT_IMPLEMENTED = 9,
  ORT_INVALID_GRAPH = 10,
  ORT_EP_FAIL = 11,
} OrtErrorCode;

// Tensor element types (the ONNX TensorProto data type numbers); only the ones we name.
typedef enum ONNXTensorElementDataType {
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED = 0,  // any type
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 = 7,
} ONNXTensorElementDataType;

// Where an input of a custom op must live.
typedef enum OrtMemType {
  OrtMemTypeCPUInput = -2,
  OrtMemTypeCPUOutput = -1,
  OrtMemTypeCPU = OrtMemTypeCPUOutput,
  OrtMemTypeDefault = 0,  // the execution provider's own memory (host memory for the CPU provider)
} OrtMemType;

// Arity of a custom op's input or output.
typedef enum OrtCustomOpInputOutputCharacteristic {
  INPUT_OUTPUT_REQUIRED = 0,
  INPUT_OUTPUT_OPTIONAL = 1,
  INPUT_OUTPUT_VARIADIC = 2,  // the last input/output only: one or more values
} OrtCustomOpInputOutputCharacteristic;

typedef struct OrtApi OrtApi;

// The entry point: onnxruntime passes it to RegisterCustomOps.
typedef struct OrtApiBase {
  // the table for API `version`, or null if the runtime is older than that
  const OrtApi*(ORT_API_CALL* GetApi)(uint32_t version) CEPD_ORT_NOTHROW;
  // the runtime's release, e.g. "1.21.0"
  const char*(ORT_API_CALL* GetVersionString)(void) CEPD_ORT_NOTHROW;
} OrtApiBase;

// An entry returning a status (null: success), and a run of `n` entries we never call (opaque).
#define CEPD_ORT_STATUS(name, ...) OrtStatus*(ORT_API_CALL * name)(__VA_ARGS__) CEPD_ORT_NOTHROW
#define CEPD_ORT_SKIP(first, n) const void* unused_from_##first[n]

// The function table, up to the last entry the library calls. [index] of each entry.
struct OrtApi {
  /*   0 */ OrtStatus*(ORT_API_CALL* CreateStatus)(OrtErrorCode code, const char* msg) CEPD_ORT_NOTHROW;
  /*   1 */ CEPD_ORT_SKIP(1, 25);
  /*  26 */ CEPD_ORT_STATUS(CreateCustomOpDomain, const char* domain, OrtCustomOpDomain** out);
  /*  27 */ CEPD_ORT_STATUS(CustomOpDomain_Add, OrtCustomOpDomain* domain, const OrtCustomOp* op);
  /*  28 */ CEPD_ORT_STATUS(AddCustomOpDomain, OrtSessionOptions* options, OrtCustomOpDomain* domain);
  /*  29 */ CEPD_ORT_SKIP(29, 22);
  /*  51 */ CEPD_ORT_STATUS(GetTensorMutableData, OrtValue* value, void** out);
  /*  52 */ CEPD_ORT_SKIP(52, 8);
  /*  60 */ CEPD_ORT_STATUS(GetTensorElementType, const OrtTensorTypeAndShapeInfo* info,
                            ONNXTensorElementDataType* out);
  /*  61 */ CEPD_ORT_STATUS(GetDimensionsCount, const OrtTensorTypeAndShapeInfo* info, size_t* out);
  /*  62 */ CEPD_ORT_STATUS(GetDimensions, const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t n_dims);
  /*  63 */ CEPD_ORT_SKIP(63, 2);
  /*  65 */ CEPD_ORT_STATUS(GetTensorTypeAndShape, const OrtValue* value, OrtTensorTypeAndShapeInfo** out);
  /*  66 */ CEPD_ORT_SKIP(66, 22);
  /*  88 */ CEPD_ORT_STATUS(KernelContext_GetInputCount, const OrtKernelContext* context, size_t* out);
  /*  89 */ CEPD_ORT_SKIP(89, 1);
  /*  90 */ CEPD_ORT_STATUS(KernelContext_GetInput, const OrtKernelContext* context, size_t index,
                            const OrtValue** out);
  /*  91 */ CEPD_ORT_STATUS(KernelContext_GetOutput, OrtKernelContext* context, size_t index,
                            const int64_t* dims, size_t n_dims, OrtValue** out);
  /*  92 */ CEPD_ORT_SKIP(92, 1);
  /*  93 */ void(ORT_API_CALL* ReleaseStatus)(OrtStatus* status) CEPD_ORT_NOTHROW;
  /*  94 */ CEPD_ORT_SKIP(94, 5);
  /*  99 */ void(ORT_API_CALL* ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* info) CEPD_ORT_NOTHROW;
  /* 100 */ CEPD_ORT_SKIP(100, 63);
  /* 163 */ CEPD_ORT_STATUS(KernelInfoGetAttributeArray_int64, const OrtKernelInfo* info, const char* name,
                            int64_t* out, size_t* size);
  /* 164 */ CEPD_ORT_SKIP(164, 66);
  /* 230 */ CEPD_ORT_STATUS(KernelInfo_GetInputCount, const OrtKernelInfo* info, size_t* out);
  /* 231 */ CEPD_ORT_SKIP(231, 13);
  /* 244 */ CEPD_ORT_STATUS(KernelInfo_GetNodeName, const OrtKernelInfo* info, char* out, size_t* size);
  /* 245 */ CEPD_ORT_SKIP(245, 4);
  /* 249 */ CEPD_ORT_STATUS(KernelInfoGetConstantInput_tensor, const OrtKernelInfo* info, size_t index,
                            int* is_constant, const OrtValue** out);
  // the runtime's table goes on; the library never reads past entry 249
};

#undef CEPD_ORT_STATUS
#undef CEPD_ORT_SKIP

// A custom op's schema and kernel callbacks, filled in by the library (layout of API version 21).
struct OrtCustomOp {
  uint32_t version;  // the API version this struct follows: ORT_API_VERSION

  void*(ORT_API_CALL* CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
  const char*(ORT_API_CALL* GetName)(const OrtCustomOp* op);
  const char*(ORT_API_CALL* GetExecutionProviderType)(const OrtCustomOp* op);  // null: CPU provider
  ONNXTensorElementDataType(ORT_API_CALL* GetInputType)(const OrtCustomOp* op, size_t index);
  size_t(ORT_API_CALL* GetInputTypeCount)(const OrtCustomOp* op);
  ONNXTensorElementDataType(ORT_API_CALL* GetOutputType)(const OrtCustomOp* op, size_t index);
  size_t(ORT_API_CALL* GetOutputTypeCount)(const OrtCustomOp* op);
  void(ORT_API_CALL* KernelCompute)(void* kernel, OrtKernelContext* context);
  void(ORT_API_CALL* KernelDestroy)(void* kernel);

  // read from version 8 on
  OrtCustomOpInputOutputCharacteristic(ORT_API_CALL* GetInputCharacteristic)(const OrtCustomOp* op,
                                                                             size_t index);
  OrtCustomOpInputOutputCharacteristic(ORT_API_CALL* GetOutputCharacteristic)(const OrtCustomOp* op,
                                                                              size_t index);
  // from version 13 on
  OrtMemType(ORT_API_CALL* GetInputMemoryType)(const OrtCustomOp* op, size_t index);
  // from version 14 on: variadic inputs/outputs
  int(ORT_API_CALL* GetVariadicInputMinArity)(const OrtCustomOp* op);
  int(ORT_API_CALL* GetVariadicInputHomogeneity)(const OrtCustomOp* op);  // nonzero: one element type
  int(ORT_API_CALL* GetVariadicOutputMinArity)(const OrtCustomOp* op);
  int(ORT_API_CALL* GetVariadicOutputHomogeneity)(const OrtCustomOp* op);
  // from version 16 on: kernel creation and compute that return a status (used when non-null)
  OrtStatus*(ORT_API_CALL* CreateKernelV2)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                                           void** kernel);
  OrtStatus*(ORT_API_CALL* KernelComputeV2)(void* kernel, OrtKernelContext* context);
  // from version 17 on: shape inference and the op's opset range
  OrtStatus*(ORT_API_CALL* InferOutputShapeFn)(const OrtCustomOp* op, OrtShapeInferContext* context);
  int(ORT_API_CALL* GetStartVersion)(const OrtCustomOp* op);
  int(ORT_API_CALL* GetEndVersion)(const OrtCustomOp* op);
  // newest: outputs that may reuse (in place) or alias an input, as two index arrays of the returned
  // length; each Get has a matching Release of the arrays it returned
  size_t(ORT_API_CALL* GetMayInplace)(int** input_index, int** output_index);
  void(ORT_API_CALL* ReleaseMayInplace)(int* input_index, int* output_index);
  size_t(ORT_API_CALL* GetAliasMap)(int** input_index, int** output_index);
  void(ORT_API_CALL* ReleaseAliasMap)(int* input_index, int* output_index);
};

#ifdef __cplusplus
}  // extern "C"
#endif

// Every declared entry at its documented index, and OrtCustomOp's fields in their documented order.
#define CEPD_ORT_AT(entry, index) \
  offsetof(OrtApi, entry) == (index) * sizeof(void*), "OrtApi::" #entry " must be entry " #index
#ifdef __cplusplus
#define CEPD_ORT_STATIC_ASSERT static_assert
#else
#define CEPD_ORT_STATIC_ASSERT _Static_assert
#endif
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(CreateStatus, 0));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(CreateCustomOpDomain, 26));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(CustomOpDomain_Add, 27));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(AddCustomOpDomain, 28));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(GetTensorMutableData, 51));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(GetTensorElementType, 60));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(GetDimensionsCount, 61));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(GetDimensions, 62));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(GetTensorTypeAndShape, 65));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(KernelContext_GetInputCount, 88));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(KernelContext_GetInput, 90));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(KernelContext_GetOutput, 91));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(ReleaseStatus, 93));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(ReleaseTensorTypeAndShapeInfo, 99));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(KernelInfoGetAttributeArray_int64, 163));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(KernelInfo_GetInputCount, 230));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(KernelInfo_GetNodeName, 244));
CEPD_ORT_STATIC_ASSERT(CEPD_ORT_AT(KernelInfoGetConstantInput_tensor, 249));
CEPD_ORT_STATIC_ASSERT(sizeof(OrtApi) == 250 * sizeof(void*), "OrtApi must end at entry 249");
// OrtCustomOp: a uint32_t (padded to a pointer) then 25 function pointers, in order
CEPD_ORT_STATIC_ASSERT(offsetof(OrtCustomOp, CreateKernel) == sizeof(void*), "OrtCustomOp layout");
CEPD_ORT_STATIC_ASSERT(offsetof(OrtCustomOp, CreateKernelV2) == 17 * sizeof(void*), "OrtCustomOp layout");
CEPD_ORT_STATIC_ASSERT(offsetof(OrtCustomOp, GetStartVersion) == 20 * sizeof(void*), "OrtCustomOp layout");
CEPD_ORT_STATIC_ASSERT(sizeof(OrtCustomOp) == 26 * sizeof(void*), "OrtCustomOp has 25 callbacks");
#undef CEPD_ORT_AT
#undef CEPD_ORT_STATIC_ASSERT
#undef CEPD_ORT_NOTHROW

#endif  // CEPD_ORT_ABI_H_
