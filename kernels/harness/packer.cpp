// The harness's packer (FORMATS.md §3 GPTQ v1, §4 compressed-tensors), see packer.h.
#include "kernels/harness/packer.h"

#include <algorithm>
#include <numeric>

#include "kernels/qlinear_internal.h"

namespace lathe::kernels::harness {

void put_stream_value(int32_t* words, int64_t stride, int64_t j, int64_t bits, uint32_t v) {
  const int64_t bit = j * bits, k = bit >> 5, s = bit & 31;
  auto* w0 = reinterpret_cast<uint32_t*>(&words[k * stride]);
  *w0 |= v << s;
  if (s + bits > 32) *reinterpret_cast<uint32_t*>(&words[(k + 1) * stride]) |= v >> (32 - s);
}

PackedWeight::PackedWeight(const WeightParams& p, std::mt19937_64& rng) : p_(p) {
  view_.format = p.format;
  view_.out = p.out;
  view_.in = p.in;
  view_.bits = p.format == WeightFormat::kDense    ? 16
               : p.format == WeightFormat::kCtInt8 ? 8
                                                   : p.bits;
  view_.group_size =
      p.format == WeightFormat::kDense || p.format == WeightFormat::kCtInt8 ? -1 : p.group_size;
  view_.scale_type = p.scale_type;
  view_.act_bits = p.act_bits;
  std::uniform_real_distribution<float> unit(-1.f, 1.f);
  if (p.bias) {
    bias_.resize(p.out);
    for (float& b : bias_) b = 0.5f * unit(rng);
    view_.bias = bias_.data();
  }
  if (p.format == WeightFormat::kDense) {
    dense_.resize(p.out * p.in);
    for (float& v : dense_) v = 0.125f * unit(rng);
    view_.dense = dense_.data();
    return;
  }
  const int64_t b = view_.bits, groups = view_.groups();
  const uint32_t maxq = (1u << b) - 1, half = 1u << (b - 1);
  std::uniform_int_distribution<uint32_t> code(0, maxq);
  std::vector<uint32_t> codes(p.out * p.in), zeros(p.out * groups, half);
  for (uint32_t& c : codes) c = code(rng);
  const bool sym = p.sym || p.format == WeightFormat::kCtInt8;
  if (!sym) {
    std::uniform_int_distribution<uint32_t> zero(p.format == WeightFormat::kGptq ? 1 : 0,
                                                 p.format == WeightFormat::kGptq ? maxq + 1 : maxq);
    for (uint32_t& z : zeros) z = zero(rng);
  }
  std::uniform_real_distribution<float> scale(0.5f, 1.5f);
  std::vector<float> s(p.out * groups);
  for (float& v : s) v = scale(rng) / static_cast<float>(half) / 8.f;
  store_scales(s);
  if (p.act_order && p.group_size > 0 && p.format != WeightFormat::kCtInt8) {
    std::vector<int32_t> perm(p.in);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    g_idx_.resize(p.in);
    for (int64_t i = 0; i < p.in; ++i) g_idx_[i] = static_cast<int32_t>(perm[i] / p.group_size);
    view_.g_idx = g_idx_.data();
  }
  if (p.format == WeightFormat::kCtInt8) {
    int8_.resize(codes.size());
    for (size_t i = 0; i < codes.size(); ++i)
      int8_[i] = static_cast<int8_t>(static_cast<int32_t>(codes[i]) - 128);
    view_.int8_weight = int8_.data();
  } else if (p.format == WeightFormat::kGptq) {
    pack_gptq(codes, zeros);
  } else {
    pack_ct(codes, sym ? std::vector<uint32_t>{} : zeros);
  }
}

// Scales arrive [out, G]; GPTQ stores them [G, out], compressed-tensors [out, G].
void PackedWeight::store_scales(const std::vector<float>& s) {
  const int64_t groups = view_.groups();
  std::vector<float> ordered(s.size());
  for (int64_t o = 0; o < p_.out; ++o)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t dst = p_.format == WeightFormat::kGptq ? g * p_.out + o : o * groups + g;
      ordered[dst] = s[o * groups + g];
    }
  if (p_.scale_type == ScaleType::kF32) {
    scales32_ = ordered;
    view_.scales = scales32_.data();
    return;
  }
  scales16_.resize(ordered.size());
  for (size_t i = 0; i < ordered.size(); ++i)
    scales16_[i] = p_.scale_type == ScaleType::kF16 ? detail::float_to_half(ordered[i])
                                                    : detail::float_to_bf16(ordered[i]);
  view_.scales = scales16_.data();
}

// qweight [in·b/32, out]: column o is the stream of its codes along the input. qzeros
// [G, out·b/32]: row g is the stream of z − 1 along the output (v1).
void PackedWeight::pack_gptq(const std::vector<uint32_t>& codes,
                             const std::vector<uint32_t>& zeros) {
  const int64_t b = view_.bits, groups = view_.groups(), out = p_.out, in = p_.in;
  packed_.assign(in * b / 32 * out, 0);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i)
      put_stream_value(packed_.data() + o, out, i, b, codes[o * in + i]);
  const int64_t zw = out * b / 32;
  zeros_.assign(groups * zw, 0);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t o = 0; o < out; ++o)
      put_stream_value(zeros_.data() + g * zw, 1, o, b, zeros[o * groups + g] - 1);
  view_.packed = packed_.data();
  view_.zeros = zeros_.data();
}

// weight_packed [out, ⌈in/pf⌉]: row o is the stream of its codes along the input.
// weight_zero_point [⌈out/pf⌉, G]: column g is the stream of the zeros along the output.
void PackedWeight::pack_ct(const std::vector<uint32_t>& codes, const std::vector<uint32_t>& zeros) {
  const int64_t b = view_.bits, groups = view_.groups(), out = p_.out, in = p_.in;
  const int64_t row_words = (in * b + 31) / 32;
  packed_.assign(out * row_words, 0);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i)
      put_stream_value(packed_.data() + o * row_words, 1, i, b, codes[o * in + i]);
  view_.packed = packed_.data();
  if (zeros.empty()) return;
  zeros_.assign((out * b + 31) / 32 * groups, 0);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t o = 0; o < out; ++o)
      put_stream_value(zeros_.data() + g, groups, o, b, zeros[o * groups + g]);
  view_.zeros = zeros_.data();
}

double PackedWeight::weight_bytes() const {
  double bytes =
      4.0 * (dense_.size() + packed_.size() + zeros_.size() + g_idx_.size() + bias_.size());
  bytes += int8_.size() + 2.0 * scales16_.size() + 4.0 * scales32_.size();
  return bytes;
}

}  // namespace lathe::kernels::harness
