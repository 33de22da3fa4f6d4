// cuBLASLt GEMMs. Row-major C[M,N] = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so every call passes B as
// the library's first operand and A as its second, with C^T [N, M] as output.
#include <cublasLt.h>

#include <array>
#include <map>
#include <mutex>

#include "cuda_check.h"
#include "cuda_gemm.h"
#include "cuda_memory.h"
#include "ds/error.h"

namespace ds::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // what cuBLAS suggests for Hopper

// The library handle and workspace of a device, and the algorithms chosen so far by problem.
struct Lt {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::map<std::array<int64_t, 14>, cublasLtMatmulAlgo_t> algos;
};
std::mutex lt_mutex;
std::map<int, Lt> lts;

Lt& lt_for_current_device() {
  int device = 0;
  DS_CUDA_CHECK(cudaGetDevice(&device));
  Lt& lt = lts[device];
  if (!lt.handle) {
    DS_CUBLAS_CHECK(cublasLtCreate(&lt.handle));
    lt.workspace = allocate(kWorkspaceBytes);
  }
  return lt;
}

// The largest power of two up to 256 dividing the address: what the algorithm may assume about the pointer.
int64_t alignment(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  int64_t a = 256;
  while (a > 1 && address % uintptr_t(a) != 0) a /= 2;
  return a;
}

// Descriptors destroyed with the object, whatever happens between.
struct Desc {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~Desc() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
  template <typename T>
  void set(cublasLtMatmulDescAttributes_t attribute, const T& value) {
    DS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, attribute, &value, sizeof(value)));
  }
};

// Runs D = alpha op(A) op(B) + beta C in the library's column-major terms with C = D; `key` identifies the problem
// apart from the pointers, whose alignments are added to it.
void run(Desc& d, std::array<int64_t, 14> key, float alpha, const void* A, const void* B, float beta, void* C,
         cudaStream_t stream) {
  const int64_t align[4] = {alignment(A), alignment(B), alignment(C), alignment(C)};
  key[10] = align[0], key[11] = align[1], key[12] = align[2];
  std::lock_guard lock(lt_mutex);
  Lt& lt = lt_for_current_device();
  auto it = lt.algos.find(key);
  if (it == lt.algos.end()) {
    DS_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&d.pref));
    auto pref = [&](cublasLtMatmulPreferenceAttributes_t attribute, auto value) {
      DS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, attribute, &value, sizeof(value)));
    };
    pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(kWorkspaceBytes));
    pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, uint32_t(align[0]));
    pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, uint32_t(align[1]));
    pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, uint32_t(align[2]));
    pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, uint32_t(align[3]));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    DS_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lt.handle, d.op, d.a, d.b, d.c, d.c, d.pref, 1, &result, &found));
    if (found == 0)
      fail("cuBLASLt has no algorithm for this GEMM (M={} N={} K={}) on this GPU: FP8 block scaling needs sm_90",
           key[1], key[0], key[2]);
    it = lt.algos.emplace(key, result.algo).first;
  }
  DS_CUBLAS_CHECK(cublasLtMatmul(lt.handle, d.op, &alpha, A, d.a, B, d.b, &beta, C, d.c, C, d.c, &it->second,
                                 lt.workspace, kWorkspaceBytes, stream));
}

cudaDataType_t data_type(OutType t) { return t == OutType::F32 ? CUDA_R_32F : CUDA_R_16BF; }

}  // namespace

void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const __nv_bfloat16* A,
               int64_t lda, const __nv_bfloat16* B, int64_t ldb, float beta, void* C, OutType c_type, int64_t ldc,
               cudaStream_t stream) {
  if (M == 0 || N == 0) return;
  Desc d;
  DS_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // The library's first operand is B: stored column-major as [N, K] (row-major [K, N]) unless trans_b.
  d.set(CUBLASLT_MATMUL_DESC_TRANSA, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
  d.set(CUBLASLT_MATMUL_DESC_TRANSB, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
  DS_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&d.a, CUDA_R_16BF, uint64_t(trans_b ? K : N), uint64_t(trans_b ? N : K), ldb));
  DS_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&d.b, CUDA_R_16BF, uint64_t(trans_a ? M : K), uint64_t(trans_a ? K : M), lda));
  DS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.c, data_type(c_type), uint64_t(N), uint64_t(M), ldc));
  run(d, {N, M, K, trans_a, trans_b, lda, ldb, ldc, int64_t(c_type), 0, 0, 0, 0, beta != 0}, alpha, B, A, beta, C,
      stream);
}

void grouped_linear_bf16(void* y, OutType y_type, const __nv_bfloat16* x, const __nv_bfloat16* const* w,
                         const int32_t* offsets, int64_t E, int64_t N, int64_t K, cudaStream_t stream) {
  const size_t y_size = y_type == OutType::F32 ? 4 : 2;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = offsets[e], rows = offsets[e + 1] - begin;
    if (rows < 0) fail("grouped GEMM: offsets decrease at expert {}", e);
    gemm_bf16(false, true, rows, N, K, 1.0f, x + begin * K, K, w[e], K, 0.0f,
              static_cast<char*>(y) + size_t(begin * N) * y_size, y_type, N, stream);
  }
}

void gemm_fp8(const Fp8Operand& a, const Fp8Operand& b, int64_t M, int64_t N, int64_t K, float beta, void* y,
              OutType y_type, cudaStream_t stream) {
  if (M == 0 || N == 0) return;
  // The scales of a Groups operand are rows-fastest, each K tile's run of them 16-byte aligned too.
  if (K % 16 != 0 || N % 8 != 0 || M % 4 != 0)
    fail("FP8 GEMM {}x{}x{}: M must be a multiple of 4 (pad the tokens), N of 8 and K of 16", M, N, K);
  if (a.scaling == Fp8Scaling::Blocks && b.scaling == Fp8Scaling::Blocks)
    fail("FP8 GEMM {}x{}x{}: 128x128 scales on both operands are not supported", M, N, K);
  for (const void* p :
       {static_cast<const void*>(a.codes), static_cast<const void*>(b.codes), static_cast<const void*>(a.scales),
        static_cast<const void*>(b.scales), static_cast<const void*>(y)})
    if (alignment(p) < 16) fail("FP8 GEMM {}x{}x{}: an operand is not 16-byte aligned", M, N, K);
  auto mode = [](Fp8Scaling s) {
    return int32_t(s == Fp8Scaling::Groups ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F
                                           : CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F);
  };
  Desc d;
  DS_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Hopper takes FP8 only as "TN": the first operand transposed, both K-contiguous.
  d.set(CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
  d.set(CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
  d.set(CUBLASLT_MATMUL_DESC_FAST_ACCUM, int8_t(0));
  d.set(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, mode(b.scaling));
  d.set(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, mode(a.scaling));
  d.set(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, static_cast<const void*>(b.scales));
  d.set(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, static_cast<const void*>(a.scales));
  DS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.a, CUDA_R_8F_E4M3, uint64_t(K), uint64_t(N), K));
  DS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.b, CUDA_R_8F_E4M3, uint64_t(K), uint64_t(M), K));
  DS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.c, data_type(y_type), uint64_t(N), uint64_t(M), N));
  run(d, {N, M, K, int64_t(a.scaling), int64_t(b.scaling), -1, -1, -1, int64_t(y_type), 1, 0, 0, 0, beta != 0}, 1.0f,
      b.codes, a.codes, beta, y, stream);
}

}  // namespace ds::cuda
