// SHA-256 (FIPS 180-4) for fingerprints and tensor checksums; self-contained so the torch-free
// parsers and the fuzz targets need no crypto library.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace lathe {

/// Streaming SHA-256. Feed bytes with update() in any number of pieces, then call finish() once;
/// the digest depends only on the concatenated bytes. After finish() the object is reset and may
/// hash a new message.
class Sha256 {
 public:
  /// A 32-byte digest.
  using Digest = std::array<uint8_t, 32>;

  Sha256() { reset(); }

  /// Appends `size` bytes at `data` to the message (`data` may be null when `size` is 0).
  void update(const void* data, size_t size);
  /// Appends the bytes of `text` (no terminator) to the message.
  void update(std::string_view text) { update(text.data(), text.size()); }

  /// Pads, returns the digest of everything passed to update() since the last reset, and resets.
  Digest finish();
  /// finish() as 64 lower-case hex characters.
  std::string finish_hex();

  /// Starts a new, empty message.
  void reset();

 private:
  void compress(const uint8_t* blocks, size_t count);

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;
  size_t buffered_ = 0;       // bytes waiting in buffer_, always < 64
  uint64_t total_bytes_ = 0;  // message length so far
};

/// The block functions behind Sha256, exposed for the test that checks them against each other:
/// `count` 64-byte blocks at `blocks` into `state`. The accelerated one uses the x86 SHA extensions
/// and returns false (touching nothing) on a CPU or build without them; Sha256 uses it when it can.
namespace sha256_blocks {
void portable(uint32_t state[8], const uint8_t* blocks, size_t count);
bool accelerated(uint32_t state[8], const uint8_t* blocks, size_t count);
}  // namespace sha256_blocks

/// Lower-case hex of `size` bytes at `data`.
std::string to_hex(const uint8_t* data, size_t size);

/// SHA-256 of one buffer, as 64 lower-case hex characters.
std::string sha256_hex(const void* data, size_t size);

}  // namespace lathe
