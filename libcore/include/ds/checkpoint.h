#pragma once
// Training run directories (man/dskit-formats.5); their checkpoints hold model directories (ds/model_dir.h).
//
//   RUN/checkpoints/step-00001000/   a model directory + optimizer.safetensors + trainer_state.json
//   RUN/latest -> checkpoints/step-00001000   replaced atomically once the checkpoint is complete and fsynced
//   RUN/metrics.jsonl                one JSON record per logged step
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "ds/config.h"
#include "ds/model.h"
#include "ds/model_dir.h"
#include "ds/optim.h"
#include "ds/tokenizer.h"

namespace ds {

// optimizer.safetensors: AdamW's exp_avg and exp_avg_sq (F32) over the whole flat parameter array, whatever the
// number of ranks that trained it, so a run resumes on any number of ranks. Written straight from the optimizer's
// moments, a piece at a time (AdamW::gather_state), so no rank holds a copy of them. With R > 1 ranks a
// collective: every rank calls it, rank 0 writes into dir, the others' dir is not used.
void write_optimizer_state(const std::string& dir, const AdamW& optimizer);
// The same read back; throws naming the file when they do not have `size` values.
std::pair<std::vector<float>, std::vector<float>> read_optimizer_state(const std::string& dir, size_t size);
// Loads it into optimizer straight from the mapped file (the moments, not the step count), with no copy in between.
void load_optimizer_state(const std::string& dir, AdamW& optimizer);

// A stable fingerprint of a model config, so a resume cannot silently continue a different architecture.
std::string config_hash(const ModelConfig& config);

class RunDir {
 public:
  explicit RunDir(std::string path);
  const std::string& path() const { return path_; }

  // Creates the directory (or checks it is writable) before any work starts.
  void prepare() const;
  // The checkpoint `latest` points to, if any.
  std::optional<std::string> latest() const;
  // Writes checkpoints/step-NNNNNNNN completely, then points latest at it, then keeps only the newest `keep`
  // checkpoints (0 keeps all). `write_files(dir)` fills the new directory.
  std::string save(int64_t step, int keep, const std::function<void(const std::string&)>& write_files) const;
  void append_metrics(const nlohmann::json& record) const;

 private:
  std::string path_;
};

// Saves the training checkpoint of `step` into run (RunDir::save): a collective over the optimizer's ranks, which
// all call it. Rank 0 writes optimizer.safetensors (the other ranks send their parts of the moments), then the model
// directory, then what write_state adds (trainer_state.json), and returns the checkpoint's directory; the other
// ranks return "". The weights are written from the model's own storage and the moments a piece at a time, so a
// checkpoint needs no memory beyond one piece (none in one process).
std::string save_checkpoint(const RunDir& run, int64_t step, int keep, const Model<float>& model,
                            const Tokenizer& tokenizer, const AdamW& optimizer,
                            const std::function<void(const std::string&)>& write_state);

}  // namespace ds
