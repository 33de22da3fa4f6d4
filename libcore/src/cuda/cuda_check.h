#pragma once
// Every CUDA runtime and cuBLAS call goes through DS_CUDA_CHECK / DS_CUBLAS_CHECK: a failure becomes a ds::Error
// naming the status, the call and its file:line. Kernel launches are followed by DS_CUDA_CHECK(cudaGetLastError()).
#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include <string>

namespace ds::cuda {

[[noreturn]] void fail_cuda(cudaError_t status, const char* call, const char* file, int line);
[[noreturn]] void fail_cublas(cublasStatus_t status, const char* call, const char* file, int line);
// Throws ds::Error(message): for CUDA sources, which cannot include fmt (ds/error.h) under nvcc.
[[noreturn]] void fail_text(const std::string& message);

inline void check(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) fail_cuda(status, call, file, line);
}
inline void check(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS) fail_cublas(status, call, file, line);
}

}  // namespace ds::cuda

#define DS_CUDA_CHECK(call) ::ds::cuda::check((call), #call, __FILE__, __LINE__)
#define DS_CUBLAS_CHECK(call) ::ds::cuda::check((call), #call, __FILE__, __LINE__)
