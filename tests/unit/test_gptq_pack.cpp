// GPTQ / compressed-tensors packing (export/gptq_pack.h) against FORMATS.md §3/§4: hand-computed
// words, an independent bit-by-bit reference decoder written here from the FORMATS text (the 3-bit
// scheme word by word, not as a bit stream), round trips over bits × groups × sym × g_idx kinds,
// shapes at the edges of the format, and the errors for malformed tensors; sparse-24-bitmask: hand
// bytes of the mask rule, round trips and the checks of a decoded bitmask.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "compressor/common/errors.h"
#include "compressor/quant/gptq.h"
#include "compressor/quant/quantizer.h"
#include "export/gptq_pack.h"
#include "tests/unit/random_quantized.h"

namespace lathe {
namespace {

using testing::random_quantized_weight;

uint32_t word_at(const at::Tensor& t, int64_t r, int64_t c) {
  return static_cast<uint32_t>(t.index({r, c}).item<int32_t>());
}

// --- independent reference (FORMATS §3 text) ---------------------------------------------------
// Where bit k of value j (j = index along the packed axis) lives: {word offset, bit in word}.
std::pair<int64_t, int> locate(int64_t bits, int64_t j, int k) {
  if (bits != 3) {
    const int64_t pf = 32 / bits;
    return {j / pf, static_cast<int>(bits * (j % pf) + k)};
  }
  const int64_t block = j / 32, v = j % 32;
  const int64_t base = block * 3;
  if (v < 10) return {base, static_cast<int>(3 * v + k)};
  if (v == 10) return k < 2 ? std::make_pair(base, 30 + k) : std::make_pair(base + 1, 0);
  if (v < 21) return {base + 1, static_cast<int>(3 * (v - 11) + 1 + k)};
  if (v == 21) return k == 0 ? std::make_pair(base + 1, 31) : std::make_pair(base + 2, k - 1);
  return {base + 2, static_cast<int>(3 * (v - 22) + 2 + k)};
}

// Value j of the sequence packed in `words` (a std::vector of uint32), bit by bit.
int64_t ref_value(const std::vector<uint32_t>& words, int64_t bits, int64_t j) {
  int64_t v = 0;
  for (int k = 0; k < bits; ++k) {
    const auto [w, b] = locate(bits, j, k);
    if ((words.at(static_cast<size_t>(w)) >> b) & 1u) v |= int64_t{1} << k;
  }
  return v;
}

std::vector<uint32_t> column(const at::Tensor& t, int64_t c) {
  std::vector<uint32_t> r;
  for (int64_t i = 0; i < t.size(0); ++i) r.push_back(word_at(t, i, c));
  return r;
}
std::vector<uint32_t> row(const at::Tensor& t, int64_t r) {
  std::vector<uint32_t> v;
  for (int64_t i = 0; i < t.size(1); ++i) v.push_back(word_at(t, r, i));
  return v;
}

// Reference decode of a GPTQ qweight [in·b/32, out] → codes [out, in] (int64).
at::Tensor ref_qweight(const at::Tensor& qweight, int64_t bits, int64_t in) {
  const int64_t out = qweight.size(1);
  at::Tensor r = at::empty({out, in}, at::kLong);
  for (int64_t o = 0; o < out; ++o) {
    const auto col = column(qweight, o);
    for (int64_t i = 0; i < in; ++i) r.index_put_({o, i}, ref_value(col, bits, i));
  }
  return r;
}
// Reference decode along rows: [rows, words] → [rows, n].
at::Tensor ref_rows(const at::Tensor& packed, int64_t bits, int64_t n) {
  at::Tensor r = at::empty({packed.size(0), n}, at::kLong);
  for (int64_t a = 0; a < packed.size(0); ++a) {
    const auto w = row(packed, a);
    for (int64_t j = 0; j < n; ++j) r.index_put_({a, j}, ref_value(w, bits, j));
  }
  return r;
}

at::Tensor contiguous_gidx(int64_t in, int64_t g) {
  const int64_t gg = g == -1 ? in : g;
  return torch::arange(in, torch::kLong).div(gg, "floor").to(torch::kInt);
}
// act-order with dynamic groups: group j = the j-th run of g columns in a random loop order.
at::Tensor dynamic_gidx(int64_t in, int64_t g, uint64_t seed) {
  torch::manual_seed(seed);
  const at::Tensor perm = torch::randperm(in, torch::kLong);
  const int64_t gg = g == -1 ? in : g;
  at::Tensor gi = torch::empty({in}, torch::kInt);
  gi.index_put_({perm}, torch::arange(in, torch::kLong).div(gg, "floor").to(torch::kInt));
  return gi;
}

template <class E, class F>
void expect_error(F&& f, const std::string& field, const std::string& text = "") {
  try {
    f();
    ADD_FAILURE() << "no exception; expected field " << field;
  } catch (const E& e) {
    EXPECT_EQ(e.field(), field) << e.what();
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

// --- GPTQ: hand-computed words --------------------------------------------------------------

TEST(GptqPack, HandWords4Bit) {
  QuantizedWeight q;
  q.spec = QuantSpec{4, -1, true};
  q.codes = torch::empty({8, 8}, torch::kByte);
  for (int o = 0; o < 8; ++o)
    for (int i = 0; i < 8; ++i) q.codes.index_put_({o, i}, (i + o) % 16);
  q.scales = torch::full({8, 1}, 0.5f);
  q.zeros = torch::full({8, 1}, 8, torch::kInt);
  const GptqTensors t = pack_gptq(q, {});
  ASSERT_EQ(t.qweight.sizes(), at::IntArrayRef({1, 8}));
  ASSERT_EQ(t.qzeros.sizes(), at::IntArrayRef({1, 1}));
  EXPECT_EQ(word_at(t.qweight, 0, 0), 0x76543210u);
  EXPECT_EQ(word_at(t.qweight, 0, 1), 0x87654321u);
  EXPECT_EQ(word_at(t.qweight, 0, 7), 0xEDCBA987u);
  EXPECT_EQ(word_at(t.qzeros, 0, 0), 0x77777777u);  // FORMATS §3: symmetric 4-bit v1
  EXPECT_EQ(t.scales.scalar_type(), at::kHalf);
  EXPECT_EQ(t.g_idx.scalar_type(), at::kInt);
  EXPECT_TRUE(t.g_idx.eq(0).all().item<bool>());
}

TEST(GptqPack, HandWords8BitAnd2Bit) {
  QuantizedWeight q;
  q.spec = QuantSpec{8, -1, true};
  q.codes = torch::tensor({0x10, 0x32, 0x54, 0xF6}, torch::kInt).to(torch::kByte).repeat({4, 1});
  q.scales = torch::ones({4, 1});
  q.zeros = torch::full({4, 1}, 128, torch::kInt);
  GptqTensors t = pack_gptq(q, {});
  EXPECT_EQ(word_at(t.qweight, 0, 0), 0xF6543210u);
  EXPECT_EQ(word_at(t.qzeros, 0, 0), 0x7F7F7F7Fu);

  QuantizedWeight q2;
  q2.spec = QuantSpec{2, -1, true};
  q2.codes = torch::empty({16, 16}, torch::kByte);
  for (int o = 0; o < 16; ++o)
    for (int i = 0; i < 16; ++i) q2.codes.index_put_({o, i}, i % 4);
  q2.scales = torch::ones({16, 1});
  q2.zeros = torch::full({16, 1}, 2, torch::kInt);
  t = pack_gptq(q2, {});
  EXPECT_EQ(word_at(t.qweight, 0, 3), 0xE4E4E4E4u);  // 0,1,2,3 → 11 10 01 00
  EXPECT_EQ(word_at(t.qzeros, 0, 0), 0x55555555u);
}

TEST(GptqPack, HandWords3Bit) {
  QuantizedWeight q;
  q.spec = QuantSpec{3, -1, true};
  q.codes = torch::full({32, 32}, 7, torch::kByte);
  q.codes.index_put_({0, 10},
                     4);  // value 10 straddles words 0/1: 100 → bits 30,31 = 0, word1 bit0 = 1
  q.codes.index_put_(
      {0, 21}, 2);  // value 21 straddles words 1/2: 010 → word1 bit31 = 0, word2 bits 0,1 = 1,0
  q.scales = torch::ones({32, 1});
  q.zeros = torch::full({32, 1}, 4, torch::kInt);  // z − 1 = 3 = 011 everywhere
  const GptqTensors t = pack_gptq(q, {});
  ASSERT_EQ(t.qweight.sizes(), at::IntArrayRef({3, 32}));
  ASSERT_EQ(t.qzeros.sizes(), at::IntArrayRef({1, 3}));
  // 011 repeated as one stream: words derived by hand from the FORMATS §3 description.
  EXPECT_EQ(word_at(t.qzeros, 0, 0), 0xDB6DB6DBu);
  EXPECT_EQ(word_at(t.qzeros, 0, 1), 0xB6DB6DB6u);
  EXPECT_EQ(word_at(t.qzeros, 0, 2), 0x6DB6DB6Du);
  // All-7 column: every bit set.
  EXPECT_EQ(word_at(t.qweight, 0, 1), 0xFFFFFFFFu);
  EXPECT_EQ(word_at(t.qweight, 1, 1), 0xFFFFFFFFu);
  EXPECT_EQ(word_at(t.qweight, 2, 1), 0xFFFFFFFFu);
  EXPECT_EQ(word_at(t.qweight, 0, 0), 0x3FFFFFFFu);
  EXPECT_EQ(word_at(t.qweight, 1, 0),
            0x7FFFFFFFu);  // bit0 = 1 (value 10 bit 2), bit31 = 0 (value 21 bit 0)
  EXPECT_EQ(word_at(t.qweight, 1, 0) & 1u, 1u);
  EXPECT_EQ(word_at(t.qweight, 2, 0), 0xFFFFFFFDu);
}

// --- GPTQ: round trips ----------------------------------------------------------------------

enum GidxKind { kContiguous, kStaticActOrder, kDynamicActOrder };

class GptqPackRoundTrip : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, bool, int>> {
};

TEST_P(GptqPackRoundTrip, PackUnpackDequantize) {
  const auto [bits, g, sym, kind] = GetParam();
  const int64_t out = 64, in = 256;
  const uint64_t seed = static_cast<uint64_t>(bits * 1000 + (g + 1) * 7 + sym * 3 + kind);
  QuantizedWeight q = random_quantized_weight(bits, out, in, g, sym, seed);
  // Static groups with act-order keep the contiguous c / g (gptq.h); dynamic ones scatter.
  const at::Tensor gi =
      kind == kDynamicActOrder ? dynamic_gidx(in, g, seed + 1) : contiguous_gidx(in, g);
  const GptqTensors t = pack_gptq(q, kind == kContiguous ? at::Tensor() : gi);
  const int64_t groups = q.scales.size(1);
  ASSERT_EQ(t.qweight.sizes(), at::IntArrayRef({in * bits / 32, out}));
  ASSERT_EQ(t.qzeros.sizes(), at::IntArrayRef({groups, out * bits / 32}));
  ASSERT_EQ(t.scales.sizes(), at::IntArrayRef({groups, out}));
  EXPECT_TRUE(t.g_idx.equal(gi));

  // The independent decoder agrees on every code and every zero (v1: z − 1).
  EXPECT_TRUE(ref_qweight(t.qweight, bits, in).equal(q.codes.to(at::kLong)));
  EXPECT_TRUE(ref_rows(t.qzeros, bits, out).equal(q.zeros.t().to(at::kLong) - 1));

  const QuantizedWeight u = unpack_gptq(t, bits, in, out, g);
  EXPECT_TRUE(u.codes.equal(q.codes));
  EXPECT_TRUE(u.zeros.equal(q.zeros));
  const at::Tensor s16 = q.scales.to(at::kHalf).to(at::kFloat);
  EXPECT_TRUE(u.scales.equal(s16));
  EXPECT_EQ(u.spec.bits, bits);
  EXPECT_EQ(u.spec.group_size, g);
  if (sym) {
    EXPECT_TRUE(u.spec.sym);
  }

  QuantizedWeight q16 = q;
  q16.scales = s16;
  const at::Tensor w = dequantize_gptq(t, bits);
  EXPECT_TRUE(w.equal(gptq_dequantize(q16, gi)));
  if (kind != kDynamicActOrder) {
    EXPECT_TRUE(w.equal(q16.dequantize()));
  }
}

INSTANTIATE_TEST_SUITE_P(
    GptqPack, GptqPackRoundTrip,
    ::testing::Combine(::testing::Values<int64_t>(2, 3, 4, 8),
                       ::testing::Values<int64_t>(32, 128, -1), ::testing::Bool(),
                       ::testing::Values<int>(kContiguous, kStaticActOrder, kDynamicActOrder)));

TEST(GptqPack, EdgeShapesAndZeros) {
  // The smallest widths the format allows for each bit width, and zeros at the ends of [1, 2^b].
  for (int64_t bits : {2, 3, 4, 8}) {
    const int64_t m = gptq_pack_multiple(bits);
    for (auto [out, in] : {std::pair<int64_t, int64_t>{m, m}, {m, 3 * m}, {5 * m, m}}) {
      QuantizedWeight q =
          random_quantized_weight(bits, out, in, -1, false, static_cast<uint64_t>(bits + out + in));
      q.zeros.index_put_({0, 0}, 1);
      q.zeros.index_put_({out - 1, 0}, int64_t{1} << bits);  // z − 1 = maxq
      q.codes.index_put_({0, 0}, 0);
      q.codes.index_put_({out - 1, in - 1}, (1 << bits) - 1);
      ASSERT_TRUE(gptq_packable(bits, in, out));
      const GptqTensors t = pack_gptq(q, {});
      const QuantizedWeight u = unpack_gptq(t, bits, in, out, -1);
      EXPECT_TRUE(u.codes.equal(q.codes)) << bits << " " << out << "x" << in;
      EXPECT_TRUE(u.zeros.equal(q.zeros)) << bits << " " << out << "x" << in;
      EXPECT_FALSE(u.spec.sym);
    }
  }
  // A group size that does not divide `in`: ⌈in/g⌉ groups, the last one short.
  QuantizedWeight q = random_quantized_weight(4, 16, 64, 48, true, 11);
  ASSERT_EQ(q.scales.size(1), 2);
  const GptqTensors t = pack_gptq(q, {});
  EXPECT_EQ(t.g_idx[47].item<int32_t>(), 0);
  EXPECT_EQ(t.g_idx[48].item<int32_t>(), 1);
  const QuantizedWeight u = unpack_gptq(t, 4, 64, 16, 48);
  EXPECT_TRUE(u.codes.equal(q.codes));
  QuantizedWeight q16 = q;
  q16.scales = q.scales.to(at::kHalf).to(at::kFloat);
  EXPECT_TRUE(dequantize_gptq(t, 4).equal(gptq_dequantize(q16, t.g_idx)));
}

TEST(GptqPack, PackRejectsWhatTheFormatCannotHold) {
  EXPECT_FALSE(gptq_packable(4, 12, 8));
  EXPECT_FALSE(gptq_packable(3, 48, 32));
  EXPECT_FALSE(gptq_packable(5, 32, 32));
  expect_error<UnsupportedError>(
      [] { pack_gptq(random_quantized_weight(4, 8, 12, -1, true, 1), {}); }, "in_features");
  expect_error<UnsupportedError>(
      [] { pack_gptq(random_quantized_weight(4, 12, 8, -1, true, 1), {}); }, "out_features");
  expect_error<UnsupportedError>(
      [] { pack_gptq(random_quantized_weight(3, 32, 48, -1, true, 1), {}); }, "in_features");
  expect_error<UnsupportedError>(
      [] { pack_gptq(random_quantized_weight(3, 16, 32, -1, true, 1), {}); }, "out_features");
  expect_error<UnsupportedError>(
      [] { pack_gptq(random_quantized_weight(5, 32, 32, -1, true, 1), {}); }, "bits");
  {
    QuantizedWeight q = random_quantized_weight(4, 8, 8, -1, false, 1);
    q.zeros.index_put_({2, 0}, 0);  // v1 cannot store z = 0
    expect_error<InternalError>([&] { pack_gptq(q, {}); }, "zeros");
    q.zeros.index_put_({2, 0}, 17);
    expect_error<InternalError>([&] { pack_gptq(q, {}); }, "zeros");
  }
  {
    QuantizedWeight q = random_quantized_weight(4, 8, 8, -1, true, 1);
    q.codes.index_put_({1, 1}, 16);
    expect_error<InternalError>([&] { pack_gptq(q, {}); }, "codes");
  }
  {
    QuantizedWeight q = random_quantized_weight(4, 8, 8, -1, true, 1);
    q.scales.index_put_({0, 0}, 1e6f);  // beyond fp16
    expect_error<UnsupportedError>([&] { pack_gptq(q, {}); }, "scales");
  }
  {
    QuantizedWeight q = random_quantized_weight(4, 8, 16, 8, true, 1);
    expect_error<InternalError>([&] { pack_gptq(q, torch::full({16}, 2, torch::kInt)); }, "g_idx");
    expect_error<InternalError>([&] { pack_gptq(q, torch::zeros({8}, torch::kInt)); }, "g_idx");
  }
}

TEST(GptqPack, UnpackRejectsMalformedTensors) {
  const QuantizedWeight q = random_quantized_weight(4, 16, 64, 32, false, 5);
  const GptqTensors good = pack_gptq(q, {});
  const std::string p = "model.layers.0.self_attn.q_proj";
  auto unpack = [&](const GptqTensors& t) { unpack_gptq(t, 4, 64, 16, 32, p); };
  auto deq = [&](const GptqTensors& t) { dequantize_gptq(t, 4, p); };
  EXPECT_NO_THROW(unpack(good));
  EXPECT_NO_THROW(deq(good));
  {
    GptqTensors t = good;
    t.qweight = t.qweight.to(at::kLong);
    expect_error<DataError>([&] { unpack(t); }, p + ".qweight");
    expect_error<DataError>([&] { deq(t); }, p + ".qweight");
  }
  {
    GptqTensors t = good;
    t.qweight = t.qweight.narrow(0, 0, 7);
    expect_error<DataError>([&] { unpack(t); }, p + ".qweight");
    expect_error<DataError>([&] { deq(t); }, p + ".qweight");
  }
  {
    GptqTensors t = good;
    t.qweight = at::Tensor();
    expect_error<DataError>([&] { unpack(t); }, p + ".qweight");
  }
  {
    GptqTensors t = good;
    t.qzeros = t.qzeros.narrow(1, 0, 1);  // [2, 1] instead of [2, 2]
    expect_error<DataError>([&] { unpack(t); }, p + ".qzeros");
    expect_error<DataError>([&] { deq(t); }, p + ".qzeros");
  }
  {
    GptqTensors t = good;
    t.scales = t.scales.to(at::kFloat);
    expect_error<DataError>([&] { unpack(t); }, p + ".scales");
    expect_error<DataError>([&] { deq(t); }, p + ".scales");
  }
  {
    GptqTensors t = good;
    t.scales = t.scales.clone();
    t.scales.index_put_({1, 1}, std::numeric_limits<float>::infinity());
    expect_error<DataError>([&] { unpack(t); }, p + ".scales");
    expect_error<DataError>([&] { deq(t); }, p + ".scales");
  }
  {
    GptqTensors t = good;
    t.g_idx = t.g_idx.clone();
    t.g_idx.index_put_({3}, 2);  // only 2 groups
    expect_error<DataError>([&] { unpack(t); }, p + ".g_idx");
    expect_error<DataError>([&] { deq(t); }, p + ".g_idx");
    t.g_idx.index_put_({3}, -1);
    expect_error<DataError>([&] { deq(t); }, p + ".g_idx");
    t.g_idx = good.g_idx.to(at::kLong);
    expect_error<DataError>([&] { deq(t); }, p + ".g_idx");
    t.g_idx = good.g_idx.narrow(0, 0, 60);
    expect_error<DataError>([&] { unpack(t); }, p + ".g_idx");
  }
  expect_error<DataError>([&] { unpack_gptq(good, 5, 64, 16, 32, p); }, p + ".bits");
  expect_error<DataError>([&] { dequantize_gptq(good, 6, p); }, p + ".bits");
  expect_error<DataError>([&] { unpack_gptq(good, 4, 64, 16, 0, p); }, p + ".group_size");
  expect_error<DataError>([&] { unpack_gptq(good, 4, 64, 16, 16, p); },
                          p + ".qzeros");  // 4 groups declared, 2 stored
  expect_error<DataError>([&] { unpack_gptq(good, 4, 60, 16, 32, p); }, p + ".in_features");
  expect_error<DataError>([&] { unpack_gptq(good, 4, 64, 12, 32, p); }, p + ".out_features");
  expect_error<DataError>([&] { unpack_gptq(good, 8, 64, 16, 32, p); },
                          p + ".qweight");  // wrong bits for the widths
  GptqTensors bare = good;                  // without `where` the field is the bare tensor name
  bare.scales = bare.scales.to(at::kFloat);
  expect_error<DataError>([&] { unpack_gptq(bare, 4, 64, 16, 32); }, "scales");
}

// --- compressed-tensors ---------------------------------------------------------------------

TEST(CtPack, HandWordsAndSignedCodeRelation) {
  QuantizedWeight q;
  q.spec = QuantSpec{4, -1, true};
  q.codes = torch::arange(16, torch::kLong).to(torch::kByte).view({2, 8});
  q.scales = torch::tensor({{0.5f}, {0.25f}});
  q.zeros = torch::full({2, 1}, 8, torch::kInt);
  const CtPackedTensors t = pack_ct_packed(q, at::kBFloat16);
  ASSERT_EQ(t.weight_packed.sizes(), at::IntArrayRef({2, 1}));
  // Row 0: GPTQ codes 0..7 = signed CT codes −8..−1, stored as CT code + 8 = 0..7.
  EXPECT_EQ(word_at(t.weight_packed, 0, 0), 0x76543210u);
  EXPECT_EQ(word_at(t.weight_packed, 1, 0), 0xFEDCBA98u);
  EXPECT_FALSE(t.weight_zero_point.defined());
  EXPECT_EQ(t.weight_scale.scalar_type(), at::kBFloat16);
  EXPECT_EQ(t.weight_scale.sizes(), at::IntArrayRef({2, 1}));
  EXPECT_TRUE(t.weight_shape.equal(torch::tensor({2, 8}, torch::kInt)));
  // x = scale · q_ct with q_ct = GPTQ code − 2^(b−1).
  const at::Tensor signed_codes = ref_rows(t.weight_packed, 4, 8) - 8;
  EXPECT_TRUE(signed_codes.equal(q.codes.to(at::kLong) - 8));
  const at::Tensor w = dequantize_ct_packed(t, 4, -1);
  EXPECT_TRUE(w.equal(q.scales * signed_codes.to(at::kFloat)));
}

TEST(CtPack, LayoutIsTransposedGptq) {
  for (int64_t bits : {2, 4, 8}) {
    const QuantizedWeight q =
        random_quantized_weight(bits, 32, 64, 32, true, static_cast<uint64_t>(bits));
    const GptqTensors g = pack_gptq(q, {});
    const CtPackedTensors c = pack_ct_packed(q, at::kHalf);
    EXPECT_TRUE(c.weight_packed.equal(g.qweight.t())) << bits;
    EXPECT_TRUE(c.weight_scale.equal(g.scales.t())) << bits;
    EXPECT_TRUE(dequantize_ct_packed(c, bits, 32).equal(dequantize_gptq(g, bits))) << bits;
  }
}

class CtPackRoundTrip : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, bool, int>> {};

TEST_P(CtPackRoundTrip, PackUnpackDequantize) {
  const auto [bits, g, sym, shape] = GetParam();
  // Shapes: regular; `in` and `out` not multiples of the pack factor (⌈·/pf⌉ words, zero padding).
  const int64_t out = shape == 0 ? 64 : 13, in = shape == 0 ? 256 : (g == -1 ? 37 : g * 2 + 5);
  const uint64_t seed = static_cast<uint64_t>(bits * 100 + (g + 1) * 3 + sym + shape * 7);
  const QuantizedWeight q = random_quantized_weight(bits, out, in, g, sym, seed);
  const int64_t pf = 32 / bits, groups = q.scales.size(1);
  const at::Tensor gi = shape == 0 ? dynamic_gidx(in, g, seed) : at::Tensor();
  const CtPackedTensors t = pack_ct_packed(q, at::kBFloat16, gi);
  ASSERT_EQ(t.weight_packed.sizes(), at::IntArrayRef({out, (in + pf - 1) / pf}));
  ASSERT_EQ(t.weight_scale.sizes(), at::IntArrayRef({out, groups}));
  EXPECT_EQ(t.weight_g_idx.defined(), gi.defined());
  EXPECT_TRUE(ref_rows(t.weight_packed, bits, in).equal(q.codes.to(at::kLong)));
  if (sym) {
    EXPECT_FALSE(t.weight_zero_point.defined());
  } else {
    ASSERT_EQ(t.weight_zero_point.sizes(), at::IntArrayRef({(out + pf - 1) / pf, groups}));
    EXPECT_TRUE(
        ref_rows(t.weight_zero_point.t().contiguous(), bits, out).equal(q.zeros.t().to(at::kLong)));
  }
  if (in % pf != 0) {  // padding bits of the last word are zero
    const int64_t used = (in % pf) * bits;
    const uint32_t w = word_at(t.weight_packed, 0, t.weight_packed.size(1) - 1);
    EXPECT_EQ(w >> used, 0u);
  }
  const QuantizedWeight u = unpack_ct_packed(t, bits, g);
  EXPECT_TRUE(u.codes.equal(q.codes));
  EXPECT_TRUE(u.zeros.equal(q.zeros));
  const at::Tensor sb = q.scales.to(at::kBFloat16).to(at::kFloat);
  EXPECT_TRUE(u.scales.equal(sb));
  EXPECT_EQ(u.spec.sym, sym);
  QuantizedWeight qb = q;
  qb.scales = sb;
  const at::Tensor w = dequantize_ct_packed(t, bits, g);
  EXPECT_TRUE(w.equal(gptq_dequantize(qb, gi.defined() ? gi : contiguous_gidx(in, g))));
}

INSTANTIATE_TEST_SUITE_P(CtPack, CtPackRoundTrip,
                         ::testing::Combine(::testing::Values<int64_t>(2, 4, 8),
                                            ::testing::Values<int64_t>(32, 128, -1),
                                            ::testing::Bool(), ::testing::Values<int>(0, 1)));

TEST(CtPack, RejectsMalformed) {
  expect_error<UnsupportedError>(
      [] { pack_ct_packed(random_quantized_weight(3, 8, 32, -1, true, 1), at::kHalf); }, "bits");
  expect_error<UnsupportedError>(
      [] { pack_ct_packed(random_quantized_weight(4, 8, 32, -1, true, 1), at::kInt); },
      "weight_scale");
  {
    QuantizedWeight q = random_quantized_weight(4, 8, 32, -1, true, 1);
    q.zeros.index_put_({0, 0}, 3);
    expect_error<InternalError>([&] { pack_ct_packed(q, at::kHalf); }, "zeros");
  }
  const QuantizedWeight q =
      random_quantized_weight(4, 10, 20, 8, false, 2);  // G = 3, 3 words per row, 2 zero-point rows
  const CtPackedTensors good = pack_ct_packed(q, at::kHalf);
  const std::string p = "mlp.down_proj";
  auto unpack = [&](const CtPackedTensors& t) { unpack_ct_packed(t, 4, 8, p); };
  EXPECT_NO_THROW(unpack(good));
  {
    CtPackedTensors t = good;
    t.weight_shape = at::Tensor();
    expect_error<DataError>([&] { unpack(t); }, p + ".weight_shape");
    t.weight_shape = torch::tensor({10, 20, 1}, torch::kInt);
    expect_error<DataError>([&] { unpack(t); }, p + ".weight_shape");
    t.weight_shape = torch::tensor({10, 0}, torch::kInt);
    expect_error<DataError>([&] { unpack(t); }, p + ".weight_shape");
    t.weight_shape = torch::tensor({10, 20}, torch::kLong);  // int64 is accepted
    EXPECT_NO_THROW(unpack(t));
    t.weight_shape = torch::tensor({10, 40}, torch::kInt);
    expect_error<DataError>([&] { unpack(t); }, p + ".weight_packed");
  }
  {
    CtPackedTensors t = good;
    t.weight_packed = t.weight_packed.narrow(1, 0, 2);
    expect_error<DataError>([&] { unpack(t); }, p + ".weight_packed");
  }
  {
    CtPackedTensors t = good;
    t.weight_scale = t.weight_scale.to(at::kInt);
    expect_error<DataError>([&] { unpack(t); }, p + ".weight_scale");
    t.weight_scale = good.weight_scale.narrow(1, 0, 2);
    expect_error<DataError>([&] { unpack(t); }, p + ".weight_scale");
  }
  {
    CtPackedTensors t = good;
    t.weight_zero_point = t.weight_zero_point.t().contiguous();
    expect_error<DataError>([&] { unpack(t); }, p + ".weight_zero_point");
  }
  {
    CtPackedTensors t = good;
    t.weight_g_idx = torch::full({20}, 3, torch::kInt);
    expect_error<DataError>([&] { unpack(t); }, p + ".weight_g_idx");
    expect_error<DataError>([&] { dequantize_ct_packed(t, 4, 8, p); }, p + ".weight_g_idx");
  }
  expect_error<DataError>([&] { unpack_ct_packed(good, 3, 8, p); }, p + ".bits");
  expect_error<DataError>([&] { unpack_ct_packed(good, 4, -2, p); }, p + ".group_size");
}

TEST(CtPack, Int8RoundTripAndErrors) {
  QuantizedWeight q = random_quantized_weight(8, 6, 10, -1, true, 9);
  q.codes.index_put_({0, 0}, 0);
  q.codes.index_put_({0, 1}, 255);
  const CtIntTensors t = pack_ct_int8(q, at::kHalf);
  EXPECT_EQ(t.weight.scalar_type(), at::kChar);
  EXPECT_EQ(t.weight.sizes(), at::IntArrayRef({6, 10}));
  EXPECT_EQ(t.weight_scale.sizes(), at::IntArrayRef({6, 1}));
  EXPECT_EQ(t.weight[0][0].item<int8_t>(), -128);
  EXPECT_EQ(t.weight[0][1].item<int8_t>(), 127);
  EXPECT_TRUE(t.weight.to(at::kInt).equal(q.codes.to(at::kInt) - 128));
  const QuantizedWeight u = unpack_ct_int8(t);
  EXPECT_TRUE(u.codes.equal(q.codes));
  EXPECT_TRUE(u.zeros.equal(q.zeros));
  QuantizedWeight qh = q;
  qh.scales = q.scales.to(at::kHalf).to(at::kFloat);
  EXPECT_TRUE(u.scales.equal(qh.scales));
  EXPECT_TRUE(dequantize_ct_int8(t).equal(qh.dequantize()));

  expect_error<UnsupportedError>(
      [] { pack_ct_int8(random_quantized_weight(4, 6, 10, -1, true, 1), at::kHalf); }, "bits");
  expect_error<UnsupportedError>(
      [] { pack_ct_int8(random_quantized_weight(8, 6, 10, 5, true, 1), at::kHalf); }, "group_size");
  expect_error<UnsupportedError>(
      [] { pack_ct_int8(random_quantized_weight(8, 6, 10, -1, false, 1), at::kHalf); }, "zeros");
  {
    CtIntTensors b = t;
    b.weight = b.weight.to(at::kByte);
    expect_error<DataError>([&] { unpack_ct_int8(b, "x"); }, "x.weight");
    b.weight = at::Tensor();
    expect_error<DataError>([&] { dequantize_ct_int8(b, "x"); }, "x.weight");
  }
  {
    CtIntTensors b = t;
    b.weight_scale = b.weight_scale.view({6});
    expect_error<DataError>([&] { unpack_ct_int8(b, "x"); }, "x.weight_scale");
  }
}

// --- compressed-tensors sparse-24-bitmask ------------------------------------------------------

// Row 0: {1.5, 0, −2, 0} keeps its two nonzeros; {0, 0, 0, 0} its two lowest zeros; {−0.0, 0, 3, 0}
// its nonzero and the lowest zero (the −0.0, written +0.0). Row 1: {0, 0, 0, 7}, {5, 6, 0, 0},
// {0, 0, 0, −1}. 12 inputs: each row's second byte has 4 padding bits.
at::Tensor sparse24_example() {
  return torch::tensor({{1.5f, 0.f, -2.f, 0.f, 0.f, 0.f, 0.f, 0.f, -0.f, 0.f, 3.f, 0.f},
                        {0.f, 0.f, 0.f, 7.f, 5.f, 6.f, 0.f, 0.f, 0.f, 0.f, 0.f, -1.f}});
}

TEST(CtSparse24, HandBytesAndTheMaskRule) {
  const CtSparse24Tensors t = pack_ct_sparse24(sparse24_example(), "m");
  EXPECT_EQ(t.bitmask.scalar_type(), at::kByte);
  EXPECT_EQ(t.bitmask.sizes(), at::IntArrayRef({2, 2}));
  // LSB first: bit k of byte j is column 8j + k.
  EXPECT_EQ(t.bitmask[0][0].item<int>(), 0x35);  // columns 0, 2 | 4, 5
  EXPECT_EQ(t.bitmask[0][1].item<int>(), 0x05);  // columns 8, 10
  EXPECT_EQ(t.bitmask[1][0].item<int>(), 0x39);  // columns 0, 3 | 4, 5
  EXPECT_EQ(t.bitmask[1][1].item<int>(), 0x09);  // columns 8, 11
  EXPECT_EQ(t.compressed.scalar_type(), at::kFloat);
  EXPECT_TRUE(t.compressed.equal(
      torch::tensor({{1.5f, -2.f, 0.f, 0.f, 0.f, 3.f}, {0.f, 7.f, 5.f, 6.f, 0.f, -1.f}})));
  EXPECT_FALSE(t.compressed[0][4].signbit().item<bool>());  // the kept −0.0 is written +0.0
  EXPECT_EQ(t.shape.scalar_type(), at::kLong);
  EXPECT_TRUE(t.shape.equal(torch::tensor({{int64_t{2}}, {int64_t{12}}})));
  const at::Tensor dense = unpack_ct_sparse24(t, "m");
  const at::Tensor e = sparse24_example();
  const at::Tensor expected = e.masked_fill(e.eq(0), 0.0f);
  EXPECT_TRUE(dense.view(at::kInt).equal(expected.view(at::kInt)));  // bit for bit, +0.0 zeros
}

TEST(CtSparse24, RoundTripsBf16AndInt8) {
  torch::manual_seed(3);
  const at::Tensor w = torch::randn({16, 64});
  // Keep the 2 largest of every group of 4, then zero more at random (groups with 0 or 1 left).
  const at::Tensor top = std::get<1>(w.abs().view({16, 16, 4}).topk(2, -1));
  at::Tensor mask = torch::zeros({16, 16, 4}, torch::kBool).scatter_(-1, top, true);
  mask = mask.logical_and(torch::rand({16, 16, 4}) > 0.2).view({16, 64});
  for (const at::ScalarType dt : {at::kBFloat16, at::kHalf, at::kFloat}) {
    const at::Tensor v = (w * mask).to(dt);
    const CtSparse24Tensors t = pack_ct_sparse24(v, "m");
    EXPECT_EQ(t.compressed.scalar_type(), dt);
    EXPECT_EQ(t.compressed.sizes(), at::IntArrayRef({16, 32}));
    const at::Tensor d = unpack_ct_sparse24(t, "m");
    EXPECT_TRUE(d.equal(v));
    EXPECT_FALSE(d.signbit().logical_and(d.eq(0)).any().item<bool>());
  }
  const at::Tensor i8 = (torch::randint(-128, 128, {16, 64}, torch::kInt) * mask).to(at::kChar);
  const CtSparse24Tensors t = pack_ct_sparse24(i8, "m");
  EXPECT_EQ(t.compressed.scalar_type(), at::kChar);
  EXPECT_TRUE(unpack_ct_sparse24(t, "m").equal(i8));
  // Exactly 2 bits per group of 4.
  const at::Tensor bits = t.bitmask.to(at::kInt)
                              .unsqueeze(-1)
                              .bitwise_right_shift(torch::arange(8, torch::kInt))
                              .bitwise_and(1);
  EXPECT_TRUE(bits.view({16, 16, 4}).sum(-1).eq(2).all().item<bool>());
}

TEST(CtSparse24, PackRefusesWhatIsNot24) {
  at::Tensor w = sparse24_example();
  w.index_put_({1, 6}, 2.0f);  // {5, 6, 2, 0}: 3 nonzeros
  expect_error<UnsupportedError>([&] { pack_ct_sparse24(w, "model.layers.0.mlp.up_proj"); },
                                 "model.layers.0.mlp.up_proj",
                                 "row 1, columns 4-7 hold 3 nonzeros");
  expect_error<UnsupportedError>([] { pack_ct_sparse24(torch::zeros({2, 10}), "m"); }, "m");
  expect_error<UnsupportedError>([] { pack_ct_sparse24(torch::zeros({8}), "m"); }, "m");
  expect_error<UnsupportedError>(
      [] {
        pack_ct_sparse24(torch::zeros({2, 8}, torch::kInt), "m");
      },
      "m");
}

TEST(CtSparse24, UnpackRefusesMalformedTensors) {
  const CtSparse24Tensors good = pack_ct_sparse24(sparse24_example(), "m");
  {
    CtSparse24Tensors t = good;
    t.bitmask = good.bitmask.clone();
    t.bitmask.index_put_({0, 0}, 0x37);  // columns 0, 1, 2 of the first group
    expect_error<DataError>([&] { unpack_ct_sparse24(t, "m"); }, "m.bitmask",
                            "row 0, columns 0-3: 3 bits set");
    t.bitmask.index_put_({0, 0}, 0x34);  // 1 bit in the first group
    expect_error<DataError>([&] { unpack_ct_sparse24(t, "m"); }, "m.bitmask");
  }
  {
    CtSparse24Tensors t = good;
    t.bitmask = good.bitmask.clone();
    t.bitmask.index_put_({1, 1}, 0x09 | 0x80);  // a padding bit (column 15 of 12)
    expect_error<DataError>([&] { unpack_ct_sparse24(t, "m"); }, "m.bitmask", "padding bit");
  }
  auto bad = [&](auto edit, const std::string& field) {
    CtSparse24Tensors t = good;
    edit(t);
    expect_error<DataError>([&] { unpack_ct_sparse24(t, "m"); }, field);
  };
  bad([](CtSparse24Tensors& t) { t.compressed = t.compressed.narrow(1, 0, 4); }, "m.compressed");
  bad([](CtSparse24Tensors& t) { t.compressed = t.compressed.to(at::kDouble); }, "m.compressed");
  bad([](CtSparse24Tensors& t) { t.compressed = at::Tensor(); }, "m.compressed");
  bad([](CtSparse24Tensors& t) { t.bitmask = t.bitmask.narrow(1, 0, 1); }, "m.bitmask");
  bad([](CtSparse24Tensors& t) { t.bitmask = t.bitmask.to(at::kChar); }, "m.bitmask");
  bad([](CtSparse24Tensors& t) { t.shape = t.shape.to(at::kFloat); }, "m.shape");
  bad(
      [](CtSparse24Tensors& t) {
        t.shape = torch::tensor({{int64_t{2}}, {int64_t{10}}});
      },
      "m.shape");
  bad(
      [](CtSparse24Tensors& t) {
        t.shape = torch::tensor({{int64_t{3}}, {int64_t{12}}});
      },
      "m.compressed");
  bad(
      [](CtSparse24Tensors& t) {
        t.shape = torch::tensor({int64_t{2}, int64_t{12}, int64_t{1}});
      },
      "m.shape");
  // int32 and 1-d shapes are read too.
  CtSparse24Tensors t = good;
  t.shape = torch::tensor({2, 12}, torch::kInt);
  EXPECT_TRUE(unpack_ct_sparse24(t, "m").equal(unpack_ct_sparse24(good, "m")));
}

}  // namespace
}  // namespace lathe
