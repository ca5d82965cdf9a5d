// The slice of the ONNX Runtime C ABI this custom-op library uses, declared here because no package on
// this project's registries ships onnxruntime's headers (the pip wheel has only the shared library).
//
// Why this is safe: OrtApi is a table of function pointers that onnxruntime only ever appends to, and
// OrtApiBase::GetApi(v) returns a table that holds at least every entry of version v. So the position of
// an entry is fixed forever once released; the positions below are those of the public C API (they have
// not moved since API version 13, onnxruntime 1.13). OrtCustomOp is read by onnxruntime only up to the
// fields its `version` announces; we announce 16 (KernelComputeV2 returns a status, so errors reach the
// caller as a normal onnxruntime error instead of an exception crossing the C boundary).
// Needs onnxruntime >= 1.16 at run time; tests/test_ort_custom_op.py exercises every entry used.
#pragma once
#include <cstddef>
#include <cstdint>

extern "C" {

struct OrtStatus;
struct OrtValue;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtSessionOptions;
struct OrtCustomOpDomain;
struct OrtTensorTypeAndShapeInfo;
struct OrtApi;  // opaque: read through OrtFns below

// ONNX TensorProto element types (the values are the ONNX standard's)
enum AsaElemType : int { kElemUndefined = 0, kElemFloat = 1, kElemInt32 = 6, kElemFloat16 = 10 };
enum AsaErrorCode : int { kOrtOk = 0, kOrtFail = 1, kOrtInvalidArgument = 2 };
enum AsaIOCharacteristic : int { kRequired = 0, kOptional = 1 };
enum AsaMemType : int { kMemDefault = 0 };

struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version) noexcept;
  const char* (*GetVersionString)() noexcept;
};

// The OrtCustomOp struct, through its version-16 fields.
struct OrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
  const char* (*GetName)(const OrtCustomOp* op);
  const char* (*GetExecutionProviderType)(const OrtCustomOp* op);
  int (*GetInputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const OrtCustomOp* op);
  int (*GetOutputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const OrtCustomOp* op);
  void (*KernelCompute)(void* kernel, OrtKernelContext* context);
  void (*KernelDestroy)(void* kernel);
  int (*GetInputCharacteristic)(const OrtCustomOp* op, size_t index);
  int (*GetOutputCharacteristic)(const OrtCustomOp* op, size_t index);
  int (*GetInputMemoryType)(const OrtCustomOp* op, size_t index);
  int (*GetVariadicInputMinArity)(const OrtCustomOp* op);        // version 14
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp* op);
  int (*GetVariadicOutputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp* op);
  OrtStatus* (*CreateKernelV2)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                               void** kernel);                   // version 16
  OrtStatus* (*KernelComputeV2)(void* kernel, OrtKernelContext* context);
};
constexpr uint32_t kCustomOpVersion = 16;
constexpr uint32_t kApiVersion = 16;

}  // extern "C"

// The OrtApi entries used, with their fixed positions in the table.
struct OrtFns {
  OrtStatus* (*CreateStatus)(int code, const char* msg) noexcept;                                   // 0
  const char* (*GetErrorMessage)(const OrtStatus* status) noexcept;                                 // 2
  OrtStatus* (*CreateCustomOpDomain)(const char* domain, OrtCustomOpDomain** out) noexcept;         // 26
  OrtStatus* (*CustomOpDomain_Add)(OrtCustomOpDomain* domain, const OrtCustomOp* op) noexcept;      // 27
  OrtStatus* (*AddCustomOpDomain)(OrtSessionOptions* options, OrtCustomOpDomain* domain) noexcept;  // 28
  OrtStatus* (*GetTensorMutableData)(OrtValue* value, void** out) noexcept;                         // 51
  OrtStatus* (*GetTensorElementType)(const OrtTensorTypeAndShapeInfo* info, int* out) noexcept;     // 60
  OrtStatus* (*GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out) noexcept;    // 61
  OrtStatus* (*GetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t n) noexcept;  // 62
  OrtStatus* (*GetTensorTypeAndShape)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out) noexcept;  // 65
  OrtStatus* (*KernelInfoGetAttribute_float)(const OrtKernelInfo* info, const char* name, float* out) noexcept;  // 85
  OrtStatus* (*KernelContext_GetInputCount)(const OrtKernelContext* ctx, size_t* out) noexcept;     // 88
  OrtStatus* (*KernelContext_GetInput)(const OrtKernelContext* ctx, size_t i, const OrtValue** out) noexcept;  // 90
  OrtStatus* (*KernelContext_GetOutput)(OrtKernelContext* ctx, size_t i, const int64_t* dims, size_t n,
                                        OrtValue** out) noexcept;                                   // 91
  void (*ReleaseStatus)(OrtStatus* status) noexcept;                                                // 93
  void (*ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* info) noexcept;                 // 99

  template <class F>
  static F at(const OrtApi* api, int index) {
    return reinterpret_cast<F const*>(api)[index];
  }

  void load(const OrtApi* api) {
    CreateStatus = at<decltype(CreateStatus)>(api, 0);
    GetErrorMessage = at<decltype(GetErrorMessage)>(api, 2);
    CreateCustomOpDomain = at<decltype(CreateCustomOpDomain)>(api, 26);
    CustomOpDomain_Add = at<decltype(CustomOpDomain_Add)>(api, 27);
    AddCustomOpDomain = at<decltype(AddCustomOpDomain)>(api, 28);
    GetTensorMutableData = at<decltype(GetTensorMutableData)>(api, 51);
    GetTensorElementType = at<decltype(GetTensorElementType)>(api, 60);
    GetDimensionsCount = at<decltype(GetDimensionsCount)>(api, 61);
    GetDimensions = at<decltype(GetDimensions)>(api, 62);
    GetTensorTypeAndShape = at<decltype(GetTensorTypeAndShape)>(api, 65);
    KernelInfoGetAttribute_float = at<decltype(KernelInfoGetAttribute_float)>(api, 85);
    KernelContext_GetInputCount = at<decltype(KernelContext_GetInputCount)>(api, 88);
    KernelContext_GetInput = at<decltype(KernelContext_GetInput)>(api, 90);
    KernelContext_GetOutput = at<decltype(KernelContext_GetOutput)>(api, 91);
    ReleaseStatus = at<decltype(ReleaseStatus)>(api, 93);
    ReleaseTensorTypeAndShapeInfo = at<decltype(ReleaseTensorTypeAndShapeInfo)>(api, 99);
  }
};
