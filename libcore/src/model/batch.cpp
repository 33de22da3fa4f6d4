// Batch layout shared by the models and the engine (batch.h).
#include "batch.h"

#include <algorithm>

#include "ds/error.h"

namespace ds {

std::vector<int32_t> checked_positions(const int32_t* positions, int64_t B, int64_t Tn) {
  std::vector<int32_t> pos(size_t(B * Tn));
  for (int64_t n = 0; n < B * Tn; ++n) {
    const int32_t p = positions ? positions[n] : int32_t(n % Tn);
    if (p != 0 && (n % Tn == 0 || p != pos[size_t(n - 1)] + 1))
      fail(
          "position {} at token {} of sequence {}: a sequence starts at 0 and each position is 0 (a new document) "
          "or the previous one + 1",
          p, n % Tn, n / Tn);
    pos[size_t(n)] = p;
  }
  return pos;
}

MtpBatch mtp_batch(const int32_t* inputs, const int32_t* targets, const std::vector<int32_t>& positions, int64_t B,
                   int64_t Tn, int64_t shift) {
  MtpBatch m{std::vector<int32_t>(size_t(B * Tn), 0), std::vector<int32_t>(size_t(B * Tn), -1)};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < Tn; ++i) {
      const int64_t n = b * Tn + i, j = i + shift;
      if (j < Tn) {
        m.tokens[size_t(n)] = inputs[b * Tn + j];
        bool same_document = true;
        for (int64_t s = i + 1; s <= j; ++s) same_document = same_document && positions[size_t(b * Tn + s)] != 0;
        if (same_document) m.targets[size_t(n)] = targets[b * Tn + j];
      } else if (j == Tn) {
        m.tokens[size_t(n)] = std::max(targets[b * Tn + Tn - 1], 0);
      }
    }
  return m;
}

}  // namespace ds
