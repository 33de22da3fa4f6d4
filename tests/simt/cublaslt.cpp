// The cuBLASLt calls of libcore/src/cuda/gemm_cuda.cpp on the CPU: D = alpha op(A) op(B) + beta C, column-major, with
// BF16 or FP8 e4m3 inputs, F32 or BF16 outputs, FP32 accumulation (OpenBLAS), and FP8's block scales. It checks what
// the library checks for these calls (layouts that fit the problem, FP8 only "TN" and not 128x128 scales on both
// sides), so a descriptor the library would refuse fails here too.
#include <cblas.h>
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

struct Layout {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
};

struct Op {
  cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  int32_t scale_mode_a = -1, scale_mode_b = -1;
  const float* scales_a = nullptr;
  const float* scales_b = nullptr;
};

template <typename T>
bool set(T& field, const void* buf, size_t bytes) {
  if (bytes != sizeof(T)) return false;
  std::memcpy(&field, buf, sizeof(T));
  return true;
}

float load(cudaDataType_t type, const void* base, int64_t index) {
  switch (type) {
    case CUDA_R_32F:
      return static_cast<const float*>(base)[index];
    case CUDA_R_16BF:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
    default: {
      __nv_fp8_e4m3 code;
      std::memcpy(&code, static_cast<const uint8_t*>(base) + index, 1);
      return float(code);
    }
  }
}

// The scale of element (outer, k) of an operand seen as [outer, K] with K fastest in the product.
float scale_of(int32_t mode, const float* scales, int64_t outers, int64_t K, int64_t outer, int64_t k) {
  if (mode == CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F) return scales[k / 128 * outers + outer];
  const int64_t stride = ((K + 127) / 128 + 3) / 4 * 4;  // BLK128x128_32F: rows of ceil(K/128) padded to 4
  return scales[outer / 128 * stride + k / 128];
}

bool known_scale_mode(int32_t mode) {
  return mode == CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F || mode == CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
}

}  // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  static int device;
  *handle = reinterpret_cast<cublasLtHandle_t>(&device);
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasLtGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
      return "CUBLAS_STATUS";
  }
}
const char* cublasLtGetStatusString(cublasStatus_t status) {
  return status == CUBLAS_STATUS_SUCCESS ? "success" : "simt: refused by the emulated cuBLASLt";
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute, cudaDataType_t scale) {
  if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  *desc = reinterpret_cast<cublasLtMatmulDesc_t>(new Op);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete reinterpret_cast<Op*>(desc);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute,
                                              const void* buf, size_t bytes) {
  Op& op = *reinterpret_cast<Op*>(desc);
  bool ok = false;
  switch (attribute) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
      ok = set(op.trans_a, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_TRANSB:
      ok = set(op.trans_b, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_A_SCALE_MODE:
      ok = set(op.scale_mode_a, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_B_SCALE_MODE:
      ok = set(op.scale_mode_b, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_A_SCALE_POINTER:
      ok = set(op.scales_a, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_B_SCALE_POINTER:
      ok = set(op.scales_b, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_FAST_ACCUM:
      ok = bytes == 1;
      break;  // accumulation is always FP32 here
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return ok ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  if (type != CUDA_R_32F && type != CUDA_R_16BF && type != CUDA_R_8F_E4M3) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (ld < int64_t(rows) || ld < 1) return CUBLAS_STATUS_INVALID_VALUE;
  *layout = reinterpret_cast<cublasLtMatrixLayout_t>(new Layout{type, rows, cols, ld});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete reinterpret_cast<Layout*>(layout);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  *pref = reinterpret_cast<cublasLtMatmulPreference_t>(new int(0));
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete reinterpret_cast<int*>(pref);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t,
                                                    const void*, size_t) {
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"

namespace {

// The problem a descriptor set describes, or a status the library would return for it.
struct Problem {
  int64_t m = 0, n = 0, k = 0;
  bool fp8 = false;
};

cublasStatus_t check(const Op& op, const Layout& a, const Layout& b, const Layout& c, const Layout& d, Problem& p) {
  const bool ta = op.trans_a == CUBLAS_OP_T, tb = op.trans_b == CUBLAS_OP_T;
  p.m = int64_t(ta ? a.cols : a.rows);
  p.k = int64_t(ta ? a.rows : a.cols);
  p.n = int64_t(tb ? b.rows : b.cols);
  if (int64_t(tb ? b.cols : b.rows) != p.k) return CUBLAS_STATUS_INVALID_VALUE;
  if (int64_t(c.rows) != p.m || int64_t(c.cols) != p.n || c.rows != d.rows || c.cols != d.cols || c.ld != d.ld ||
      c.type != d.type || c.type == CUDA_R_8F_E4M3)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (a.type != b.type) return CUBLAS_STATUS_NOT_SUPPORTED;
  p.fp8 = a.type == CUDA_R_8F_E4M3;
  if (!p.fp8) return op.scale_mode_a < 0 && op.scale_mode_b < 0 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
  if (!ta || tb) return CUBLAS_STATUS_NOT_SUPPORTED;  // Hopper's FP8 is TN only
  if (!known_scale_mode(op.scale_mode_a) || !known_scale_mode(op.scale_mode_b)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (op.scale_mode_a == CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F &&
      op.scale_mode_b == CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if (!op.scales_a || !op.scales_b) return CUBLAS_STATUS_INVALID_VALUE;
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t d, cublasLtMatmulPreference_t, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* found) {
  Problem p;
  const cublasStatus_t status = check(*reinterpret_cast<const Op*>(desc), *reinterpret_cast<const Layout*>(a),
                                      *reinterpret_cast<const Layout*>(b), *reinterpret_cast<const Layout*>(c),
                                      *reinterpret_cast<const Layout*>(d), p);
  *found = 0;
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  if (requested > 0) {
    results[0] = cublasLtMatmulHeuristicResult_t{};
    results[0].state = CUBLAS_STATUS_SUCCESS;
    *found = 1;
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t desc, const void* alpha_ptr, const void* A,
                              cublasLtMatrixLayout_t a_layout, const void* B, cublasLtMatrixLayout_t b_layout,
                              const void* beta_ptr, const void* C, cublasLtMatrixLayout_t c_layout, void* D,
                              cublasLtMatrixLayout_t d_layout, const cublasLtMatmulAlgo_t*, void*, size_t,
                              cudaStream_t) {
  const Op& op = *reinterpret_cast<const Op*>(desc);
  const Layout &a = *reinterpret_cast<const Layout*>(a_layout), &b = *reinterpret_cast<const Layout*>(b_layout),
               &c = *reinterpret_cast<const Layout*>(c_layout), &d = *reinterpret_cast<const Layout*>(d_layout);
  Problem p;
  if (const cublasStatus_t status = check(op, a, b, c, d, p); status != CUBLAS_STATUS_SUCCESS) return status;
  const float alpha = *static_cast<const float*>(alpha_ptr), beta = *static_cast<const float*>(beta_ptr);
  // op(A) as [m, k] and op(B) as [k, n], column-major, in float: FP8 codes times their scales. Scaling each element
  // sums the same products as scaling each 128-wide K tile's sum, up to float rounding.
  const bool ta = op.trans_a == CUBLAS_OP_T, tb = op.trans_b == CUBLAS_OP_T;
  std::vector<float> a_op(size_t(p.m * p.k)), b_op(size_t(p.k * p.n)), d_op(size_t(p.m * p.n));
  for (int64_t kk = 0; kk < p.k; ++kk)
    for (int64_t i = 0; i < p.m; ++i) {
      float x = load(a.type, A, ta ? kk + i * a.ld : i + kk * a.ld);
      if (p.fp8) x *= scale_of(op.scale_mode_a, op.scales_a, p.m, p.k, i, kk);
      a_op[size_t(i + kk * p.m)] = x;
    }
  for (int64_t j = 0; j < p.n; ++j)
    for (int64_t kk = 0; kk < p.k; ++kk) {
      float x = load(b.type, B, tb ? j + kk * b.ld : kk + j * b.ld);
      if (p.fp8) x *= scale_of(op.scale_mode_b, op.scales_b, p.n, p.k, j, kk);
      b_op[size_t(kk + j * p.k)] = x;
    }
  cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, int(p.m), int(p.n), int(p.k), alpha, a_op.data(),
              int(std::max<int64_t>(p.m, 1)), b_op.data(), int(std::max<int64_t>(p.k, 1)), 0.0f, d_op.data(),
              int(std::max<int64_t>(p.m, 1)));
  for (int64_t j = 0; j < p.n; ++j)
    for (int64_t i = 0; i < p.m; ++i) {
      const int64_t at = i + j * c.ld;
      float out = d_op[size_t(i + j * p.m)];
      if (beta != 0) out += beta * load(c.type, C, at);
      if (d.type == CUDA_R_32F)
        static_cast<float*>(D)[at] = out;
      else
        static_cast<__nv_bfloat16*>(D)[at] = __float2bfloat16_rn(out);
    }
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
