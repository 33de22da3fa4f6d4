// The GPU tests run on cuda:0 and skip themselves (exit 77) on a machine without one.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "ds/cuda.h"

int main(int argc, char** argv) {
  if (ds::cuda::device_count() == 0) {
    std::fprintf(stderr, "no CUDA device: GPU tests skipped\n");
    return 77;
  }
  ds::cuda::select_device(0);
  doctest::Context context(argc, argv);
  return context.run();
}
