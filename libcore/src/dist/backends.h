#pragma once
// What the backends share: the deadline every collective waits under, and the constructors comm.cpp's factory calls
// (each compiled only when its library is found).
#include <functional>
#include <memory>
#include <string>

#include "ds/comm.h"

namespace ds::dist {

// Polls done() (backing off from spinning to short sleeps) until it returns true; past timeout_s calls on_timeout
// (which releases what the backend holds) and throws ds::Error naming the collective. Returns the seconds waited.
double wait_until(const std::function<bool()>& done, double timeout_s, const std::string& what, int rank, int size,
                  const std::function<void()>& on_timeout = {});

std::unique_ptr<Comm> make_mpi_comm(const Launch& launch, double timeout_s);
std::unique_ptr<Comm> make_nccl_comm(const Launch& launch, const CommOptions& options);

}  // namespace ds::dist
