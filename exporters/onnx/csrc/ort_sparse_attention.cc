// ONNX Runtime custom-op library: the asa.SparseAttention kernel (domain "asa", op "SparseAttention",
// since version 1), float32 and float16, CPU. Registered on a SessionOptions by
// exporters/onnx/custom_ops.py (register_custom_ops_library), which also builds this file.
// A registered kernel takes precedence over the node's ONNX function body. Inputs 4 and 5 (rope_delta, rope:
// the RoPE clamp) are optional: a node has 4 inputs, or 6 with the clamp.
#include <cmath>
#include <exception>
#include <mutex>
#include <string>

#include "ort_abi.h"
#include "sparse_attention_cpu.h"

namespace {

constexpr const char* kDomain = "asa";
constexpr const char* kOpType = "SparseAttention";

OrtFns g_ort;

struct OpDef {
  OrtCustomOp op;  // first member: onnxruntime hands back &op, which is then also &OpDef
  int elem;        // element type of q, k_cache, v_cache and out
};

struct Kernel {
  int elem;
  bool has_scale;
  float scale;
};

OrtStatus* error(const std::string& msg) {
  return g_ort.CreateStatus(kOrtInvalidArgument, ("asa.SparseAttention: " + msg).c_str());
}

// Shape and element type of a tensor value; status on failure.
OrtStatus* shape_of(const OrtValue* value, std::vector<int64_t>* dims, int* elem) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if (OrtStatus* s = g_ort.GetTensorTypeAndShape(value, &info)) return s;
  size_t n = 0;
  OrtStatus* s = g_ort.GetDimensionsCount(info, &n);
  if (!s) {
    dims->assign(n, 0);
    s = g_ort.GetDimensions(info, dims->data(), n);
  }
  if (!s) s = g_ort.GetTensorElementType(info, elem);
  g_ort.ReleaseTensorTypeAndShapeInfo(info);
  return s;
}

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + ")";
}

OrtStatus* compute(const Kernel& kern, OrtKernelContext* ctx) {
  size_t n_in = 0;
  if (OrtStatus* s = g_ort.KernelContext_GetInputCount(ctx, &n_in)) return s;
  if (n_in != 4 && n_in != 6)
    return error("expects 4 inputs (q, k_cache, v_cache, rows) or 6 (+ rope_delta, rope), got " +
                 std::to_string(n_in));
  const OrtValue* in[6] = {};
  std::vector<int64_t> dims[6];
  int elem[6] = {};
  void* data[6] = {};
  for (size_t i = 0; i < n_in; ++i) {
    if (OrtStatus* s = g_ort.KernelContext_GetInput(ctx, i, &in[i])) return s;
    if (!in[i]) {  // an omitted optional input
      if (i < 4) return error("input " + std::to_string(i) + " is missing");
      continue;
    }
    if (OrtStatus* s = shape_of(in[i], &dims[i], &elem[i])) return s;
    // inputs are read only; the C API of this version has one accessor for both directions
    if (OrtStatus* s = g_ort.GetTensorMutableData(const_cast<OrtValue*>(in[i]), &data[i])) return s;
  }
  const auto &qd = dims[0], &kd = dims[1], &vd = dims[2], &rd = dims[3];
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || rd.size() != 3)
    return error("expects q, k_cache, v_cache of rank 4 and rows of rank 3, got " + dims_str(qd) + ", " +
                 dims_str(kd) + ", " + dims_str(vd) + ", " + dims_str(rd));
  asa::Dims d{qd[0], qd[1], kd[1], qd[2], kd[2], qd[3], rd[2]};
  if (kd != vd || kd[0] != d.B || kd[3] != d.D)
    return error("k_cache " + dims_str(kd) + " and v_cache " + dims_str(vd) + " must both be (B, Hkv, S, D) for q " +
                 dims_str(qd));
  if (d.Hkv <= 0 || d.Hq % d.Hkv) return error("Hq=" + std::to_string(d.Hq) + " is not a multiple of Hkv=" +
                                               std::to_string(d.Hkv));
  if (rd[0] != d.B || rd[1] != d.T) return error("rows " + dims_str(rd) + " must be (B, T, K) for q " + dims_str(qd));
  if (elem[0] != kern.elem || elem[1] != kern.elem || elem[2] != kern.elem || elem[3] != kElemInt32)
    return error("element types do not match the contract (q, k_cache, v_cache one float type; rows int32)");
  const int32_t* rows = static_cast<const int32_t*>(data[3]);
  if (d.K == 0 && d.B * d.T > 0) return error("rows has K=0: every row needs at least one valid slot");
  std::string bad = asa::check_rows(rows, d);
  if (!bad.empty()) return error(bad);
  asa::Rope rope;
  if ((in[4] != nullptr) != (in[5] != nullptr))
    return error("rope_delta and rope go together (the RoPE clamp): give both or neither");
  if (in[4]) {
    const auto &dd = dims[4], &td = dims[5];
    if (dd != rd) return error("rope_delta " + dims_str(dd) + " must have the shape of rows " + dims_str(rd));
    if (td.size() != 3 || td[1] * 2 != d.D || td[2] != 2)
      return error("rope " + dims_str(td) + " must be (P, D/2, 2) for D=" + std::to_string(d.D));
    if (elem[4] != kElemInt32 || elem[5] != kElemFloat)
      return error("element types do not match the contract (rope_delta int32, rope float32)");
    d.P = td[0];
    rope.delta = static_cast<const int32_t*>(data[4]);
    rope.table = static_cast<const float*>(data[5]);
    bad = asa::check_deltas(rope.delta, d);
    if (!bad.empty()) return error(bad);
  }

  OrtValue* out_v = nullptr;
  if (OrtStatus* s = g_ort.KernelContext_GetOutput(ctx, 0, qd.data(), 4, &out_v)) return s;
  void* out = nullptr;
  if (OrtStatus* s = g_ort.GetTensorMutableData(out_v, &out)) return s;
  if (d.B * d.Hq * d.T * d.D == 0) return nullptr;
  const float scale = kern.has_scale ? kern.scale : 1.0f / std::sqrt(float(d.D));
  if (kern.elem == kElemFloat) {
    asa::sparse_attention(static_cast<const float*>(data[0]), static_cast<const float*>(data[1]),
                          static_cast<const float*>(data[2]), rows, rope, static_cast<float*>(out), d, scale);
  } else {
    asa::sparse_attention(static_cast<const asa::Half*>(data[0]), static_cast<const asa::Half*>(data[1]),
                          static_cast<const asa::Half*>(data[2]), rows, rope, static_cast<asa::Half*>(out), d,
                          scale);
  }
  return nullptr;
}

// ---- OrtCustomOp callbacks --------------------------------------------------------------------------
const char* op_name(const OrtCustomOp*) { return kOpType; }
const char* op_ep(const OrtCustomOp*) { return nullptr; }  // nullptr = the CPU execution provider
size_t op_n_in(const OrtCustomOp*) { return 6; }  // q, k_cache, v_cache, rows, [rope_delta, rope]
size_t op_n_out(const OrtCustomOp*) { return 1; }
int op_in_type(const OrtCustomOp* op, size_t i) {
  if (i == 3 || i == 4) return kElemInt32;  // rows, rope_delta
  if (i == 5) return kElemFloat;            // rope (float32 for both op dtypes)
  return reinterpret_cast<const OpDef*>(op)->elem;
}
int op_out_type(const OrtCustomOp* op, size_t) { return reinterpret_cast<const OpDef*>(op)->elem; }
int op_in_characteristic(const OrtCustomOp*, size_t i) { return i >= 4 ? kOptional : kRequired; }
int op_required(const OrtCustomOp*, size_t) { return kRequired; }
int op_mem_default(const OrtCustomOp*, size_t) { return kMemDefault; }
int op_arity_one(const OrtCustomOp*) { return 1; }
int op_homogeneous(const OrtCustomOp*) { return 1; }

OrtStatus* op_create_kernel_v2(const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo* info, void** out) {
  try {
    auto* k = new Kernel{reinterpret_cast<const OpDef*>(op)->elem, false, 0.f};
    if (OrtStatus* s = g_ort.KernelInfoGetAttribute_float(info, "scale", &k->scale)) {
      g_ort.ReleaseStatus(s);  // absent: 1/sqrt(D), known at compute time
    } else {
      k->has_scale = true;
    }
    *out = k;
    return nullptr;
  } catch (const std::exception& e) {
    return g_ort.CreateStatus(kOrtFail, e.what());
  }
}

void* op_create_kernel(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info) {
  void* k = nullptr;
  if (OrtStatus* s = op_create_kernel_v2(op, api, info, &k)) g_ort.ReleaseStatus(s);
  return k;
}

OrtStatus* op_compute_v2(void* kernel, OrtKernelContext* ctx) {
  try {
    return compute(*static_cast<Kernel*>(kernel), ctx);
  } catch (const std::exception& e) {  // e.g. bad_alloc: report it instead of unwinding into onnxruntime
    return g_ort.CreateStatus(kOrtFail, (std::string("asa.SparseAttention: ") + e.what()).c_str());
  }
}

void op_compute(void* kernel, OrtKernelContext* ctx) {  // pre-16 entry point; unused when version >= 16
  if (OrtStatus* s = op_compute_v2(kernel, ctx)) g_ort.ReleaseStatus(s);
}

void op_destroy(void* kernel) { delete static_cast<Kernel*>(kernel); }

OpDef make_op(int elem) {
  OpDef d{};
  d.elem = elem;
  OrtCustomOp& o = d.op;
  o.version = kCustomOpVersion;
  o.CreateKernel = op_create_kernel;
  o.GetName = op_name;
  o.GetExecutionProviderType = op_ep;
  o.GetInputType = op_in_type;
  o.GetInputTypeCount = op_n_in;
  o.GetOutputType = op_out_type;
  o.GetOutputTypeCount = op_n_out;
  o.KernelCompute = op_compute;
  o.KernelDestroy = op_destroy;
  o.GetInputCharacteristic = op_in_characteristic;
  o.GetOutputCharacteristic = op_required;
  o.GetInputMemoryType = op_mem_default;
  o.GetVariadicInputMinArity = op_arity_one;
  o.GetVariadicInputHomogeneity = op_homogeneous;
  o.GetVariadicOutputMinArity = op_arity_one;
  o.GetVariadicOutputHomogeneity = op_homogeneous;
  o.CreateKernelV2 = op_create_kernel_v2;
  o.KernelComputeV2 = op_compute_v2;
  return d;
}

OpDef g_op_f32 = make_op(kElemFloat);
OpDef g_op_f16 = make_op(kElemFloat16);
OrtCustomOpDomain* g_domain = nullptr;  // lives as long as the process: sessions may outlive any one caller
std::mutex g_mutex;

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                                const OrtApiBase* base) {
  const OrtApi* api = base->GetApi(kApiVersion);
  if (!api) {  // an onnxruntime older than 1.16: report through the oldest table, which has CreateStatus
    const OrtApi* old = base->GetApi(1);
    if (!old) return nullptr;
    auto create = OrtFns::at<decltype(OrtFns::CreateStatus)>(old, 0);
    return create(kOrtFail, "the asa.SparseAttention kernel needs onnxruntime >= 1.16");
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  g_ort.load(api);
  if (!g_domain) {
    OrtCustomOpDomain* dom = nullptr;
    if (OrtStatus* s = g_ort.CreateCustomOpDomain(kDomain, &dom)) return s;
    if (OrtStatus* s = g_ort.CustomOpDomain_Add(dom, &g_op_f32.op)) return s;
    if (OrtStatus* s = g_ort.CustomOpDomain_Add(dom, &g_op_f16.op)) return s;
    g_domain = dom;
  }
  return g_ort.AddCustomOpDomain(options, g_domain);
}
