// SparseGPT in GPTQ's sweep (compressor/quant/gptq.h, SparseOptions; ALGORITHMS.md §9) against a
// straightforward, unbatched reference written here, on the real gate and down projections of
// layer 1 of data/models/llama with real calibration inputs.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "compressor/common/errors.h"
#include "compressor/quant/gptq.h"
#include "compressor/quant/quantizer.h"
#include "tests/unit/real_llama_layer.h"

namespace lathe {
namespace {

// ---------------------------------------------------------------------------------------------
// Reference: natural column order, each column's update applied to every later column at once.
// Masks as the SparseGPT reference chooses them: unstructured at each 128-column block start
// (W²/U_jj² over the block, all rows), N:M at each column c with c mod m = 0 (per row).

struct SparseReference {
  at::Tensor value;  // [out, in] f64: the final weight (dequantized when quantizing)
  at::Tensor mask;   // [out, in] bool: pruned
};

SparseReference reference_sparsegpt(const LayerData& l, double ratio, int64_t n, int64_t m,
                                    int64_t bits, int64_t group) {
  at::Tensor W = l.weight.to(at::kDouble).clone();
  at::Tensor H = l.sum.to(at::kDouble) * (2.0 / static_cast<double>(l.tokens));
  const int64_t out = W.size(0), in = W.size(1), block = 128;
  for (int64_t j = 0; j < in; ++j) {
    if (H[j][j].item<double>() == 0) {
      H[j][j] = 1.0;
      W.select(1, j).zero_();
    }
  }
  H.diagonal().add_(H.diagonal().mean() * 0.01);
  const at::Tensor U =
      torch::linalg_cholesky(torch::cholesky_inverse(torch::linalg_cholesky(H)), /*upper=*/true);
  const at::Tensor d2 = U.diagonal().square();
  at::Tensor mask = at::zeros({out, in}, at::kBool), value = at::zeros({out, in}, at::kDouble);
  at::Tensor scale, zero;
  for (int64_t k = 0; k < in; ++k) {
    if (ratio > 0 && k % block == 0) {
      const int64_t k2 = std::min(in, k + block);
      const at::Tensor score = W.slice(1, k, k2).square() / d2.slice(0, k, k2).unsqueeze(0);
      const int64_t count = static_cast<int64_t>(std::floor(ratio * score.numel()));
      const at::Tensor order = std::get<1>(score.reshape({-1}).sort(true, 0, false));
      at::Tensor flat = at::zeros({score.numel()}, at::kBool);
      flat.index_fill_(0, order.slice(0, 0, count), true);
      mask.slice(1, k, k2).copy_(flat.view(score.sizes()));
    }
    if (m > 0 && k % m == 0) {
      const at::Tensor score = W.slice(1, k, k + m).square() / d2.slice(0, k, k + m).unsqueeze(0);
      const at::Tensor order = std::get<1>(score.sort(true, 1, false));
      mask.slice(1, k, k + m).scatter_(1, order.slice(1, 0, n), true);
    }
    if (bits > 0 && k % group == 0) {
      auto [s, z] = quant_params(W.slice(1, k, k + group), bits, /*sym=*/true, at::kDouble);
      scale = s.unsqueeze(1);
      zero = z.to(at::kDouble).unsqueeze(1);
    }
    const at::Tensor w = W.slice(1, k, k + 1);
    const at::Tensor pruned = mask.slice(1, k, k + 1);
    at::Tensor q = bits > 0 ? scale * (quantize_codes(w, scale, zero, bits) - zero) : w.clone();
    q.masked_fill_(pruned, 0.0);
    value.slice(1, k, k + 1).copy_(q);
    W.slice(1, k).sub_(((w - q) / U[k][k]).mm(U.slice(0, k, k + 1).slice(1, k)));
  }
  return {value, mask};
}

GptqOptions natural_order(int64_t bits, int64_t group) {
  GptqOptions o;
  o.bits = bits;
  o.group_size = group;
  o.act_order = GptqOptions::kNone;
  return o;
}

/// ‖X (W − Ŵ)ᵀ‖²_F in fp64 over the calibration tokens.
double output_error(const LayerData& l, const at::Tensor& w) {
  return l.x.to(at::kDouble)
      .mm((l.weight.to(at::kDouble) - w.to(at::kDouble)).t())
      .square()
      .sum()
      .item<double>();
}

#define REQUIRE_REAL_LAYERS()             \
  const RealLayers& real = real_layers(); \
  if (!real.ok) GTEST_SKIP() << "data/models/llama or data/corpora/prose not available"

// fp64 prune-only: the lazy block updates only reorder sums, so the masks are the reference's
// (except at an exact tie of two scores, which the random-free real data does not have) and the
// values agree to rounding.
TEST(SparseGptReal, PruneOnlyEqualsTheUnbatchedReference) {
  REQUIRE_REAL_LAYERS();
  for (const LayerData* l : {&real.gate, &real.down}) {
    for (const auto& [ratio, n, m] : std::vector<std::tuple<double, int64_t, int64_t>>{
             {0.5, 0, 0}, {0.7, 0, 0}, {0, 2, 4}, {0, 4, 8}}) {
      SCOPED_TRACE(l->name + " ratio " + std::to_string(ratio) + " " + std::to_string(n) + ":" +
                   std::to_string(m));
      SparseOptions s;
      s.ratio = ratio;
      s.n = n;
      s.m = m;
      s.quantize = false;
      const GptqResult got =
          gptq_quantize(l->weight.to(at::kDouble), l->sum, l->tokens, natural_order(4, -1), &s);
      const SparseReference ref = reference_sparsegpt(*l, ratio, n, m, 0, 0);
      ASSERT_TRUE(got.values.defined());
      EXPECT_FALSE(got.q.codes.defined());
      const at::Tensor zero = got.values == 0;
      EXPECT_TRUE(zero.equal(ref.mask)) << (zero != ref.mask).sum().item<int64_t>() << " differ";
      EXPECT_LT((got.values - ref.value).abs().max().item<double>(), 1e-9);
      EXPECT_EQ(got.pruned, ref.mask.sum().item<int64_t>());
      const int64_t out = l->weight.size(0), in = l->weight.size(1);
      if (m > 0) {  // exactly n zeros in every group of m consecutive inputs of every row
        const at::Tensor per_group = zero.view({out, in / m, m}).sum(2);
        EXPECT_TRUE((per_group == n).all().item<bool>());
      } else {  // floor(ratio · out · 128) per 128-column block
        EXPECT_EQ(got.pruned, (in / 128) * static_cast<int64_t>(std::floor(ratio * out * 128)));
      }
      // The update compensates: the output error is well below that of the same mask with the
      // remaining weights left alone.
      const at::Tensor masked_only = l->weight.to(at::kDouble).masked_fill(zero, 0.0);
      EXPECT_LT(output_error(*l, got.values), 0.8 * output_error(*l, masked_only));
    }
  }
}

// Joint 2:4 + 4-bit (dynamic groups of 32, natural order) in fp64: pruned weights carry their
// group's zero point and dequantize to exactly 0; everything matches the reference.
TEST(SparseGptReal, JointQuantizationEqualsTheReference) {
  REQUIRE_REAL_LAYERS();
  const LayerData& l = real.gate;
  SparseOptions s;
  s.n = 2;
  s.m = 4;
  const GptqResult got =
      gptq_quantize(l.weight.to(at::kDouble), l.sum, l.tokens, natural_order(4, 32), &s);
  const SparseReference ref = reference_sparsegpt(l, 0, 2, 4, 4, 32);
  ASSERT_TRUE(got.q.codes.defined());
  const at::Tensor deq = gptq_dequantize(got.q, got.g_idx);
  EXPECT_TRUE((deq.masked_select(ref.mask) == 0).all().item<bool>());
  EXPECT_LT((deq.to(at::kDouble) - ref.value).abs().max().item<double>(), 1e-6);
  const at::Tensor zeros_at = got.q.zeros.index_select(1, got.g_idx.to(at::kLong));
  EXPECT_TRUE(
      got.q.codes.to(at::kInt).masked_select(ref.mask).equal(zeros_at.masked_select(ref.mask)));
  EXPECT_EQ(got.pruned, l.weight.numel() / 2);
}

// GPTQ of an already pruned weight with keep_zero (act-order, static groups): the zeros survive
// and the other weights are quantized; without keep_zero the error feedback fills them in.
TEST(SparseGptReal, KeepZeroSurvivesActOrderGptq) {
  REQUIRE_REAL_LAYERS();
  const LayerData& l = real.down;
  const at::Tensor w = l.weight.clone();
  w.view({-1}).index_fill_(0, at::arange(0, w.numel(), 3, at::kLong), 0.0);
  GptqOptions o = natural_order(4, 32);
  o.act_order = GptqOptions::kStatic;
  SparseOptions s;
  s.keep_zero = w == 0;
  const GptqResult kept = gptq_quantize(w, l.sum, l.tokens, o, &s);
  const at::Tensor deq = gptq_dequantize(kept.q, kept.g_idx);
  EXPECT_TRUE((deq.masked_select(s.keep_zero) == 0).all().item<bool>());
  EXPECT_EQ(kept.pruned, s.keep_zero.sum().item<int64_t>());
  const GptqResult plain = gptq_quantize(w, l.sum, l.tokens, o);
  EXPECT_GT(
      (gptq_dequantize(plain.q, plain.g_idx).masked_select(s.keep_zero) != 0).sum().item<int64_t>(),
      s.keep_zero.sum().item<int64_t>() / 20);
}

// fp32 SparseGPT at 50 % beats magnitude pruning (lowest |W| per row) on the layer output.
TEST(SparseGptReal, BeatsMagnitudePruning) {
  REQUIRE_REAL_LAYERS();
  for (const LayerData* l : {&real.gate, &real.down}) {
    SparseOptions s;
    s.ratio = 0.5;
    s.quantize = false;
    const GptqResult got = gptq_quantize(l->weight, l->sum, l->tokens, natural_order(4, -1), &s);
    const int64_t in = l->weight.size(1);
    const at::Tensor order = std::get<1>(l->weight.abs().sort(true, 1, false));
    at::Tensor magnitude = l->weight.clone();
    magnitude.scatter_(1, order.slice(1, 0, in / 2), 0.0);
    const double e_sparsegpt = output_error(*l, got.values), e_mag = output_error(*l, magnitude);
    std::printf("%s: output error sparsegpt %.4g, magnitude %.4g\n", l->name.c_str(), e_sparsegpt,
                e_mag);
    EXPECT_LT(e_sparsegpt, 0.7 * e_mag);
  }
}

// No Hessian: identity U, so the marks are the block's smallest |W| and nothing is fed back.
TEST(SparseGpt, DataFreeIsMagnitudeWithinBlocks) {
  const at::Tensor w = torch::randn({8, 256}, torch::TensorOptions().dtype(at::kDouble));
  SparseOptions s;
  s.n = 2;
  s.m = 4;
  s.quantize = false;
  const GptqResult got = gptq_quantize(w, at::Tensor(), 0, natural_order(4, -1), &s);
  EXPECT_EQ(got.h_source, "none");
  const at::Tensor groups = w.abs().view({8, 64, 4});
  const at::Tensor order = std::get<1>(groups.sort(true, 2, false));
  const at::Tensor want = w.view({8, 64, 4}).scatter(2, order.slice(2, 0, 2), 0.0).view({8, 256});
  EXPECT_TRUE(got.values.equal(want));
}

TEST(SparseGpt, BadOptionsAreConfigErrors) {
  const at::Tensor w = torch::randn({4, 96});
  const at::Tensor h = at::eye(96) * 10;
  auto fails = [&](SparseOptions s, GptqOptions o, const std::string& field) {
    try {
      (void)gptq_quantize(w, h, 10, o, &s);
      ADD_FAILURE() << "accepted; expected a ConfigError on " << field;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  const GptqOptions nat = natural_order(4, -1);
  SparseOptions s;
  s.ratio = 1.0;
  fails(s, nat, "sparsity");
  s.ratio = -0.1;
  fails(s, nat, "sparsity");
  s = {};
  s.n = 4;
  s.m = 4;
  fails(s, nat, "pattern");  // n ≥ m
  s.n = 3;
  s.m = 7;
  fails(s, nat, "pattern");  // 7 does not divide 96
  s.n = 2;
  s.m = 4;
  GptqOptions act = nat;
  act.act_order = GptqOptions::kStatic;
  fails(s, act, "act-order");
  s.ratio = 0.5;
  fails(s, nat, "pattern");  // both
  s = {};
  s.n = 2;
  s.m = 8;
  GptqOptions block = nat;
  block.block_size = 12;
  fails(s, block, "block-size");
}

}  // namespace
}  // namespace lathe
