#pragma once
// How a batch of B rows of Tn tokens is laid out, shared by the CPU model, the device model and the engine: the
// positions of packed documents, and the shifted inputs and targets of the MTP modules.
#include <cstdint>
#include <vector>

namespace ds {

// positions ([B*Tn]), or 0..Tn-1 in each row when null, checked: a row starts at 0 and every other position is 0 (a
// new document) or the one before + 1. Throws ds::Error naming the first that is not.
std::vector<int32_t> checked_positions(const int32_t* positions, int64_t B, int64_t Tn);

// MTP depth `shift` (1-based): position i of a row sees token i + shift and predicts target i + shift, which carries
// no loss (-1) where it lies in a later document. Of the last `shift` positions, which predict nothing, the first
// sees the row's last target (0 when it has none) and the others token 0.
struct MtpBatch {
  std::vector<int32_t> tokens, targets;
};
MtpBatch mtp_batch(const int32_t* inputs, const int32_t* targets, const std::vector<int32_t>& positions, int64_t B,
                   int64_t Tn, int64_t shift);

}  // namespace ds
