// The MoE block of kernels/qlinear.h: host routing that follows compressor/model/decoder_layer.cpp
// DecoderLayer::route step by step (fp32 values; router logits accumulated in double, then
// rounded), and the expert loop of DecoderLayer::moe on quantized experts.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/qlinear.h"
#include "kernels/qlinear_cuda.h"

namespace lathe::kernels {
namespace {

void check_block(const MoeBlockView& b) {
  const auto bad = [](const std::string& what) { throw KernelError("moe block: " + what); };
  const MoeRouting& r = b.routing;
  if (b.hidden <= 0 || b.num_experts <= 0) bad("hidden and num_experts must be positive");
  if (!b.router) bad("router is null");
  if (r.scoring == MoeRouting::Scoring::kCmoe && !r.router_up)
    bad("cmoe routing: router_up is null");
  if (r.top_k < 1 || r.top_k > b.num_experts)
    bad("top_k " + std::to_string(r.top_k) + " outside [1, " + std::to_string(b.num_experts) + "]");
  if (r.num_groups < 1 || b.num_experts % r.num_groups != 0)
    bad("num_groups " + std::to_string(r.num_groups) + " must divide " +
        std::to_string(b.num_experts));
  if (r.num_groups > 1 && (r.topk_groups < 1 || r.topk_groups > r.num_groups))
    bad("topk_groups " + std::to_string(r.topk_groups) + " outside [1, num_groups]");
  const auto n = static_cast<size_t>(b.num_experts);
  if (b.gate.size() != n || b.up.size() != n || b.down.size() != n)
    bad("gate/up/down must hold num_experts views");
}

void check_expert(const QuantWeightView& gate, const QuantWeightView& up,
                  const QuantWeightView& down, int64_t hidden) {
  if (gate.in != hidden || up.in != hidden || up.out != gate.out || down.in != gate.out ||
      down.out != hidden)
    throw KernelError("moe block: expert shapes must be gate/up [I, hidden], down [hidden, I]");
}

// Indices of the k largest values, best first; ties go to the lower index (a stable order).
template <typename T>
std::vector<int64_t> top_indices(const std::vector<T>& v, int64_t k) {
  std::vector<int64_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  idx.resize(static_cast<size_t>(k));
  return idx;
}

float sigmoidf(float v) {
  return 1.f / (1.f + std::exp(-v));
}

// Keeps the topk_groups best groups (score per group), sets the others' entries to `fill`.
void mask_groups(std::vector<float>* values, const std::vector<float>& group_score,
                 int64_t topk_groups, float fill) {
  const int64_t per = static_cast<int64_t>(values->size() / group_score.size());
  std::vector<char> keep(group_score.size(), 0);
  for (int64_t g : top_indices(group_score, topk_groups)) keep[g] = 1;
  for (size_t e = 0; e < values->size(); ++e)
    if (!keep[e / per]) (*values)[e] = fill;
}

float silu(float v) {
  return v / (1.f + std::exp(-v));
}

/// A cmoe carve's router on one token x (MoeRouting::Scoring::kCmoe).
void route_cmoe(const MoeBlockView& block, const float* x, int32_t* experts, float* weights) {
  const MoeRouting& r = block.routing;
  const int64_t n = block.num_experts, h = block.hidden;
  std::vector<float> probs(static_cast<size_t>(n));
  std::vector<double> choice(probs.size());  // p + b in fp64, as the engine selects
  for (int64_t e = 0; e < n; ++e) {
    double g = 0, u = 0;
    for (int64_t i = 0; i < h; ++i) {
      g += static_cast<double>(x[i]) * block.router[e * h + i];
      u += static_cast<double>(x[i]) * r.router_up[e * h + i];
    }
    probs[e] = std::fabs(static_cast<float>(u) * silu(static_cast<float>(g)));
  }
  const float top = *std::max_element(probs.begin(), probs.end());
  double sum = 0;
  for (float& p : probs) sum += p = std::exp(p - top);
  for (int64_t e = 0; e < n; ++e) {
    probs[e] /= static_cast<float>(sum);
    choice[e] = static_cast<double>(probs[e]) + (r.selection_bias ? r.selection_bias[e] : 0.0);
  }
  const std::vector<int64_t> pick = top_indices(choice, r.top_k);
  for (int64_t j = 0; j < r.top_k; ++j) {
    experts[j] = static_cast<int32_t>(pick[j]);
    weights[j] = 1.f + probs[pick[j]] * (r.router_scale ? r.router_scale[pick[j]] : 0.f);
  }
}

void route_softmax(const MoeRouting& r, std::vector<float> logits, int32_t* experts,
                   float* weights) {
  const int64_t n = static_cast<int64_t>(logits.size());
  const float top = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  std::vector<float> probs(logits.size());
  for (int64_t e = 0; e < n; ++e) sum += probs[e] = std::exp(logits[e] - top);
  for (float& p : probs) p /= static_cast<float>(sum);
  if (r.num_groups > 1) {  // DeepSeek-V2 group_limited_greedy: a group scores its best expert
    const int64_t per = n / r.num_groups;
    std::vector<float> best(r.num_groups);
    for (int64_t g = 0; g < r.num_groups; ++g)
      best[g] = *std::max_element(probs.begin() + g * per, probs.begin() + (g + 1) * per);
    mask_groups(&probs, best, r.topk_groups, 0.f);
  }
  const std::vector<int64_t> pick = top_indices(probs, r.top_k);
  float total = 0;
  for (int64_t j = 0; j < r.top_k; ++j) total += probs[pick[j]];
  for (int64_t j = 0; j < r.top_k; ++j) {
    float wj = probs[pick[j]];
    if (r.renormalize) wj /= total;
    experts[j] = static_cast<int32_t>(pick[j]);
    weights[j] = wj * static_cast<float>(r.scaling_factor);
  }
}

// DeepSeek-V3: select on sigmoid score + bias within the best groups (a group scores the sum of
// its two best), weight by the raw score.
void route_sigmoid(const MoeRouting& r, const std::vector<float>& logits, int32_t* experts,
                   float* weights) {
  const int64_t n = static_cast<int64_t>(logits.size());
  std::vector<float> scores(logits.size()), choice(logits.size());
  for (int64_t e = 0; e < n; ++e) {
    scores[e] = sigmoidf(logits[e]);
    choice[e] = r.selection_bias ? scores[e] + r.selection_bias[e] : scores[e];
  }
  if (r.num_groups > 1) {
    const int64_t per = n / r.num_groups;
    std::vector<float> group_score(r.num_groups);
    for (int64_t g = 0; g < r.num_groups; ++g) {
      std::vector<float> members(choice.begin() + g * per, choice.begin() + (g + 1) * per);
      const std::vector<int64_t> two = top_indices(members, std::min<int64_t>(2, per));
      group_score[g] = 0.f;
      for (int64_t i : two) group_score[g] += members[i];
    }
    mask_groups(&choice, group_score, r.topk_groups, -std::numeric_limits<float>::infinity());
  }
  const std::vector<int64_t> pick = top_indices(choice, r.top_k);
  float total = 0;
  for (int64_t j = 0; j < r.top_k; ++j) total += scores[pick[j]];
  for (int64_t j = 0; j < r.top_k; ++j) {
    float wj = scores[pick[j]];
    if (r.renormalize) wj /= total + 1e-20f;
    experts[j] = static_cast<int32_t>(pick[j]);
    weights[j] = wj * static_cast<float>(r.scaling_factor);
  }
}

// SiLU(gate(x)) * up(x) → down, for x[n, hidden]: out[n, hidden].
void swiglu(Backend backend, const QuantWeightView& gate, const QuantWeightView& up,
            const QuantWeightView& down, const float* x, int64_t n, float* out) {
  const int64_t inter = gate.out;
  std::vector<float> g(static_cast<size_t>(n * inter)), u(g.size());
  qlinear(backend, gate, x, n, g.data());
  qlinear(backend, up, x, n, u.data());
  for (size_t i = 0; i < g.size(); ++i) g[i] = silu(g[i]) * u[i];
  qlinear(backend, down, g.data(), n, out);
}

}  // namespace

void moe_route(const MoeBlockView& block, const float* x, int64_t m, int32_t* experts,
               float* weights) {
  check_block(block);
  if (m > 0 && (!x || !experts || !weights)) throw KernelError("moe_route: null argument");
  const int64_t e_count = block.num_experts, h = block.hidden, k = block.routing.top_k;
  std::vector<float> logits(static_cast<size_t>(e_count));
  for (int64_t t = 0; t < m; ++t) {
    if (block.routing.scoring == MoeRouting::Scoring::kCmoe) {
      route_cmoe(block, x + t * h, experts + t * k, weights + t * k);
      continue;
    }
    for (int64_t e = 0; e < e_count; ++e) {
      double acc = 0;
      for (int64_t i = 0; i < h; ++i)
        acc += static_cast<double>(x[t * h + i]) * block.router[e * h + i];
      logits[e] = static_cast<float>(acc);
    }
    if (block.routing.scoring == MoeRouting::Scoring::kSoftmax)
      route_softmax(block.routing, logits, experts + t * k, weights + t * k);
    else
      route_sigmoid(block.routing, logits, experts + t * k, weights + t * k);
  }
}

void moe_block(Backend backend, const MoeBlockView& block, const float* x, int64_t m, float* y) {
  check_block(block);
  for (int64_t e = 0; e < block.num_experts; ++e)
    check_expert(block.gate[e], block.up[e], block.down[e], block.hidden);
  if (block.has_shared)
    check_expert(block.shared_gate, block.shared_up, block.shared_down, block.hidden);
  if (m <= 0) return;
  if (!x || !y) throw KernelError("moe_block: x or y is null");
  const int64_t h = block.hidden, k = block.routing.top_k;
  std::vector<int32_t> experts(static_cast<size_t>(m * k));
  std::vector<float> weights(experts.size());
  moe_route(block, x, m, experts.data(), weights.data());
  if (backend == Backend::kCuda) {
    cuda_moe_block(block, x, m, experts.data(), weights.data(), y);
    return;
  }
  std::fill(y, y + m * h, 0.f);
  // As the engine: experts in index order, each on the tokens routed to it, added with its weight.
  std::vector<float> xe, ye;
  for (int64_t e = 0; e < block.num_experts; ++e) {
    std::vector<int64_t> tokens;
    std::vector<float> wts;
    for (int64_t t = 0; t < m; ++t)
      for (int64_t j = 0; j < k; ++j)
        if (experts[t * k + j] == e) {
          tokens.push_back(t);
          wts.push_back(weights[t * k + j]);
        }
    if (tokens.empty()) continue;
    const int64_t n = static_cast<int64_t>(tokens.size());
    xe.resize(static_cast<size_t>(n * h));
    ye.resize(xe.size());
    for (int64_t r = 0; r < n; ++r)
      std::copy(x + tokens[r] * h, x + (tokens[r] + 1) * h, &xe[r * h]);
    swiglu(backend, block.gate[e], block.up[e], block.down[e], xe.data(), n, ye.data());
    for (int64_t r = 0; r < n; ++r)
      for (int64_t i = 0; i < h; ++i) y[tokens[r] * h + i] += ye[r * h + i] * wts[r];
  }
  if (!block.has_shared) return;
  std::vector<float> shared(static_cast<size_t>(m * h));
  swiglu(backend, block.shared_gate, block.shared_up, block.shared_down, x, m, shared.data());
  for (int64_t t = 0; t < m; ++t) {
    float gate = 1.f;
    if (block.shared_expert_gate) {
      double acc = 0;
      for (int64_t i = 0; i < h; ++i)
        acc += static_cast<double>(x[t * h + i]) * block.shared_expert_gate[i];
      gate = sigmoidf(static_cast<float>(acc));
    }
    for (int64_t i = 0; i < h; ++i) y[t * h + i] += gate * shared[t * h + i];
  }
}

}  // namespace lathe::kernels
