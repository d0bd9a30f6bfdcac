// SHA-256 against the NIST FIPS 180-4 example vectors (csrc.nist.gov, "SHA256.pdf",
// "SHA2_Additional.pdf").
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "compressor/common/sha256.h"

namespace lathe {
namespace {

TEST(Sha256, EmptyMessage) {
  EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256, Abc) {
  EXPECT_EQ(sha256_hex("abc", 3),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256, TwoBlockMessage448Bits) {
  const std::string message = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  ASSERT_EQ(message.size() * 8, 448u);
  EXPECT_EQ(sha256_hex(message.data(), message.size()),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256, OneMillionA) {
  const std::string message(1000000, 'a');
  EXPECT_EQ(sha256_hex(message.data(), message.size()),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, StreamingInUnevenPiecesMatchesOneShot) {
  // Pieces of 1..97 bytes cross the 64-byte block boundary at every possible offset.
  const std::string message(1000000, 'a');
  Sha256 hasher;
  size_t done = 0;
  for (size_t piece = 1; done < message.size(); piece = piece % 97 + 1) {
    const size_t len = std::min(piece, message.size() - done);
    hasher.update(message.data() + done, len);
    done += len;
  }
  EXPECT_EQ(hasher.finish_hex(),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, PaddingBoundaries) {
  // 55 bytes fit the length in one block, 56 and 64 need a second: the classic off-by-one spots.
  // Reference digests from Python's hashlib.
  EXPECT_EQ(sha256_hex(std::string(55, 'a').data(), 55),
            "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
  EXPECT_EQ(sha256_hex(std::string(56, 'a').data(), 56),
            "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
  EXPECT_EQ(sha256_hex(std::string(64, 'a').data(), 64),
            "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
}

TEST(Sha256, FinishResetsForTheNextMessage) {
  Sha256 hasher;
  hasher.update("garbage");
  hasher.finish();
  hasher.update("abc");
  EXPECT_EQ(hasher.finish_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256, NullPointerWithZeroLengthIsEmpty) {
  Sha256 hasher;
  hasher.update("ab");
  hasher.update(nullptr, 0);
  hasher.update("c");
  EXPECT_EQ(hasher.finish_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256, AcceleratedBlocksEqualPortableOnes) {
  std::vector<uint8_t> data(64 * 300);
  uint32_t x = 12345;
  for (auto& b : data) b = static_cast<uint8_t>((x = x * 1664525u + 1013904223u) >> 24);
  for (const size_t count : {size_t{1}, size_t{2}, size_t{3}, size_t{7}, size_t{300}}) {
    uint32_t a[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    uint32_t b[8];
    std::copy(a, a + 8, b);
    sha256_blocks::portable(a, data.data(), count);
    if (!sha256_blocks::accelerated(b, data.data(), count))
      GTEST_SKIP() << "no SHA extensions on this CPU";
    for (int i = 0; i < 8; ++i) EXPECT_EQ(a[i], b[i]) << "count " << count << " word " << i;
  }
}

TEST(Sha256, ToHex) {
  const uint8_t bytes[] = {0x00, 0x0f, 0xa5, 0xff};
  EXPECT_EQ(to_hex(bytes, 4), "000fa5ff");
}

}  // namespace
}  // namespace lathe
