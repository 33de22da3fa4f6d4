#include "ds/shards.h"

#include <zstd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <memory>

#include "ds/error.h"
#include "ds/fsutil.h"
#include "ds/memory.h"

namespace ds {

namespace {
static_assert(std::endian::native == std::endian::little, "token ids are stored little-endian and read in place");

constexpr uint32_t kZstdMagic = 0xFD2FB528;  // the first 4 bytes of every zstd frame, little-endian
constexpr size_t kChunkBytes = size_t(1) << 20;

// Gathers bytes, which may arrive split anywhere, into whole token ids of the file `name`.
class TokenBytes {
 public:
  explicit TokenBytes(std::string name) : name_(std::move(name)) {}
  void reserve(uint64_t bytes) { grow(bytes / 4); }
  void append(std::span<const std::byte> bytes) {
    if (bytes.empty()) return;  // ids_.data() may be null, which memcpy must not see
    const size_t words = (size_ + bytes.size() + 3) / 4;
    if (words > ids_.capacity()) grow(std::max(words, 2 * ids_.capacity()));
    ids_.resize(words);
    std::memcpy(reinterpret_cast<std::byte*>(ids_.data()) + size_, bytes.data(), bytes.size());
    size_ += bytes.size();
  }
  std::vector<uint32_t> finish() {
    if (size_ % 4 != 0) fail("{}: {} bytes is not a whole number of 4-byte token ids", name_, size_);
    return std::move(ids_);
  }

 private:
  // A few compressed bytes can stand for any number of ids, so each growth is checked against memory first.
  void grow(uint64_t words) {
    require_memory(double(words) * sizeof(uint32_t), fmt::format("{}: holding the shard", name_));
    ids_.reserve(size_t(words));
  }

  std::string name_;
  std::vector<uint32_t> ids_;
  size_t size_ = 0;
};
}  // namespace

std::vector<uint32_t> read_tokens(const std::string& path) {
  InputFile in(path);
  TokenBytes out(in.name());
  std::vector<std::byte> chunk(kChunkBytes);
  size_t n = in.read(chunk);
  uint32_t magic = 0;
  if (n >= 4) std::memcpy(&magic, chunk.data(), 4);
  if (magic != kZstdMagic) {
    out.reserve(in.size_hint());
    for (; n > 0; n = in.read(chunk)) out.append({chunk.data(), n});
    return out.finish();
  }

  const std::unique_ptr<ZSTD_DCtx, decltype(&ZSTD_freeDCtx)> dctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  if (!dctx) fail("{}: cannot create a zstd decompressor", in.name());
  std::vector<std::byte> buf(ZSTD_DStreamOutSize());
  size_t frame_left = 0;  // zstd's hint of input still expected; 0 exactly at the end of a frame
  for (; n > 0; n = in.read(chunk)) {
    ZSTD_inBuffer input{chunk.data(), n, 0};
    // zstd keeps the last byte of a frame until all of the frame's output is flushed, so this drains everything.
    while (input.pos < input.size) {
      ZSTD_outBuffer output{buf.data(), buf.size(), 0};
      frame_left = ZSTD_decompressStream(dctx.get(), &output, &input);
      if (ZSTD_isError(frame_left)) fail("{}: corrupt zstd data: {}", in.name(), ZSTD_getErrorName(frame_left));
      out.append({buf.data(), output.pos});
    }
  }
  if (frame_left != 0) fail("{}: zstd data ends in the middle of a frame", in.name());
  return out.finish();
}

void write_tokens(const std::string& path, std::span<const uint32_t> ids, int zstd_level, int threads) {
  AtomicFile file(path);
  const std::span<const std::byte> bytes = std::as_bytes(ids);
  if (zstd_level == 0) {
    file.write(bytes);
    file.commit();
    return;
  }

  const std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> cctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
  if (!cctx) fail("{}: cannot create a zstd compressor", path);
  const auto check = [&](size_t result) {
    if (ZSTD_isError(result)) fail("{}: zstd compression failed: {}", path, ZSTD_getErrorName(result));
    return result;
  };
  check(ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, zstd_level));
  check(ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_checksumFlag, 1));  // so a damaged shard fails instead of training
  if (threads > 1) check(ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_nbWorkers, threads));
  check(ZSTD_CCtx_setPledgedSrcSize(cctx.get(), bytes.size()));  // recorded in the frame header
  std::vector<std::byte> buf(ZSTD_CStreamOutSize());
  ZSTD_inBuffer input{bytes.data(), bytes.size(), 0};
  size_t unflushed;
  do {
    ZSTD_outBuffer output{buf.data(), buf.size(), 0};
    unflushed = check(ZSTD_compressStream2(cctx.get(), &output, &input, ZSTD_e_end));
    file.write({buf.data(), output.pos});
  } while (unflushed != 0);
  file.commit();
}

void check_token_range(const std::string& path, std::span<const uint32_t> ids, uint32_t vocab_size) {
  const auto it = std::ranges::find_if(ids, [&](uint32_t id) { return id >= vocab_size; });
  if (it != ids.end())
    fail("{}: token id {} at position {} is outside the vocabulary of {}", path, *it, it - ids.begin(), vocab_size);
}

}  // namespace ds
