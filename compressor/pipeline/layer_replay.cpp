#include "compressor/pipeline/layer_replay.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <map>
#include <set>

#include "compressor/common/errors.h"
#include "compressor/model/layer_weights.h"

namespace lathe {

/// The values of every calibration sequence at one resume point, and what they were computed from.
struct LayerReplay::Cache {
  LayerPoint point = LayerPoint::kInput;
  std::vector<std::pair<std::string, at::Tensor>>
      upstream;  ///< holding them keeps their identity unique
  std::vector<int64_t> versions;
  int64_t act_bits = 0;
  std::shared_ptr<ActivationBuffer> heads, h, mlp_in,
      act;  ///< those `point` needs (h is shared by kMlpIn and kMlpAct)

  /// RAM its buffers hold (those that did not spill to disk).
  uint64_t ram_bytes() const {
    uint64_t bytes = 0;
    for (const auto* b : {&heads, &h, &mlp_in, &act}) {
      if (*b && !(*b)->spilled()) bytes += (*b)->bytes();
    }
    return bytes;
  }
};

namespace {

/// The MLP block's tensors: dense MLP, router, routed and shared experts (architecture.h's
/// categories).
bool is_mlp_role(TensorRole r) {
  switch (category_of(r)) {
    case Category::kDenseMlp:
    case Category::kRouter:
    case Category::kRoutedExperts:
    case Category::kSharedExperts: return true;
    default: return false;
  }
}

/// Whether a change of a tensor of role `r` leaves the values at `point` unchanged. Roles not named
/// here count as upstream of every point (a new role is safe before it is classified).
bool downstream_of(TensorRole r, LayerPoint point) {
  switch (point) {
    case LayerPoint::kInput: return true;
    case LayerPoint::kHeads:
      return is_mlp_role(r) || r == TensorRole::kO || r == TensorRole::kOBias ||
             r == TensorRole::kPostAttnNorm || r == TensorRole::kMlpNorm ||
             r == TensorRole::kPostMlpNorm;
    case LayerPoint::kMlpIn: return is_mlp_role(r) || r == TensorRole::kPostMlpNorm;
    case LayerPoint::kMlpAct: return r == TensorRole::kDenseDown || r == TensorRole::kPostMlpNorm;
  }
  return false;
}

}  // namespace

LayerWeights layer_weights_of(const ModelSpec& spec, ExpertLayout layout, int64_t layer,
                              const std::vector<LayerTensor>& tensors,
                              const at::TensorOptions& options, int64_t act_bits) {
  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& t : tensors) by_name[t.name] = &t.value;
  return make_layer_weights(
      spec, layout, layer,
      [&](const std::string& name) {
        auto it = by_name.find(name);
        return it == by_name.end() ? at::Tensor() : *it->second;
      },
      options, act_bits);
}

LayerReplay::LayerReplay(const ModelSpec& spec, ExpertLayout layout, int64_t layer,
                         const ActivationBuffer& input, const at::Tensor& valid,
                         const StreamingOptions& streaming, const at::TensorOptions& work,
                         const ModelSpec* before)
    : spec_(spec),
      before_(before),
      layout_(layout),
      layer_(layer),
      input_(input),
      valid_(valid),
      streaming_(streaming),
      work_(work),
      dense_(!spec.layers.at(layer).is_moe) {}

LayerReplay::~LayerReplay() = default;

const ModelSpec& LayerReplay::spec_for(const std::vector<LayerTensor>& tensors) const {
  if (!before_ || !spec_.layers.at(layer_).is_moe) return spec_;
  for (const LayerTensor& t : tensors) {
    if (t.role == TensorRole::kDenseGate) return *before_;
  }
  return spec_;
}

std::vector<std::pair<std::string, at::Tensor>> LayerReplay::upstream(
    LayerPoint point, const std::vector<LayerTensor>& tensors) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const LayerTensor& t : tensors) {
    if (!downstream_of(t.role, point)) out.emplace_back(t.name, t.value);
  }
  return out;
}

bool LayerReplay::valid(const Cache& c, const std::vector<LayerTensor>& tensors,
                        int64_t act_bits) const {
  if (c.act_bits != act_bits) return false;
  const auto now = upstream(c.point, tensors);
  if (now.size() != c.upstream.size()) return false;
  for (size_t i = 0; i < now.size(); ++i) {
    const at::Tensor& a = now[i].second;
    const at::Tensor& b = c.upstream[i].second;
    if (now[i].first != c.upstream[i].first || a.unsafeGetTensorImpl() != b.unsafeGetTensorImpl() ||
        a._version() != c.versions[i]) {
      return false;
    }
  }
  return true;
}

LayerPoint LayerReplay::latest_start(const TapObserver* observer) const {
  const LayerPoint deepest = dense_ ? LayerPoint::kMlpAct : LayerPoint::kMlpIn;
  if (!observer) return deepest;
  if (observer->wants(Tap::kAttnIn, layer_)) return LayerPoint::kInput;
  if (observer->wants(Tap::kAttnOutIn, layer_)) return LayerPoint::kHeads;
  if (observer->wants(Tap::kMlpIn, layer_)) return LayerPoint::kMlpIn;
  return deepest;  // MoE taps come from the MLP input; a dense layer's kMlpAct is the deepest point
}

uint64_t LayerReplay::ram_in_use() const {
  return (input_.spilled() ? 0 : input_.bytes()) + (cache_ ? cache_->ram_bytes() : 0);
}

void LayerReplay::run(const std::vector<LayerTensor>& tensors, int64_t act_bits,
                      TapObserver* observer, ActivationBuffer* next) {
  at::NoGradGuard no_grad;
  const ModelSpec& spec = spec_for(tensors);
  dense_ = !spec.layers.at(layer_).is_moe;
  const LayerWeights w = layer_weights_of(spec, layout_, layer_, tensors, work_, act_bits);
  const DecoderLayer layer(spec, w);

  if (cache_ && !valid(*cache_, tensors, act_bits)) cache_.reset();
  const LayerPoint start =
      cache_ && cache_->point <= latest_start(observer) ? cache_->point : LayerPoint::kInput;
  const int64_t n = input_.all().size(0), t = input_.all().size(1);
  std::unique_ptr<Cache> fresh;
  bool caching =
      next == nullptr;  // the forward that makes the next layer's inputs is the layer's last
  for (int64_t b = 0; b < n; b += streaming_.micro_batch) {
    const int64_t e = std::min(n, b + streaming_.micro_batch);
    LayerState s;
    auto rows = [&](const std::shared_ptr<ActivationBuffer>& buf) {
      return buf->rows(b, e).to(work_);
    };
    switch (start) {
      case LayerPoint::kInput: s.hidden = input_.rows(b, e).to(work_); break;
      case LayerPoint::kHeads:
        s.hidden = input_.rows(b, e).to(work_);
        s.heads = rows(cache_->heads);
        break;
      case LayerPoint::kMlpIn:
        s.h = rows(cache_->h);
        s.mlp_in = rows(cache_->mlp_in);
        break;
      case LayerPoint::kMlpAct:
        s.h = rows(cache_->h);
        s.act = rows(cache_->act);
        break;
    }
    ForwardContext fctx =
        make_forward_context(spec, valid_.slice(0, b, e).to(work_.device()), work_, observer);
    fctx.sequence_begin = b;
    starts_[static_cast<size_t>(start)] += 1;
    if (next) {
      next->write(b, layer.run(start, s, fctx).cpu());
      continue;
    }
    try {
      layer.run(start, s, fctx);
    } catch (const StopForward&) {
    }
    if (!caching) continue;
    // The deepest point this forward computed (an input of the start point is not "computed").
    const LayerPoint reached =
        dense_ && start < LayerPoint::kMlpAct && s.act.defined() ? LayerPoint::kMlpAct
        : start < LayerPoint::kMlpIn && s.mlp_in.defined()       ? LayerPoint::kMlpIn
        : start < LayerPoint::kHeads && s.heads.defined()        ? LayerPoint::kHeads
                                                                 : LayerPoint::kInput;
    if (b == 0) {
      if (reached == LayerPoint::kInput) {
        caching = false;
        continue;
      }
      fresh = std::make_unique<Cache>();
      fresh->point = reached;
      fresh->upstream = upstream(reached, tensors);
      for (const auto& [name, v] : fresh->upstream) fresh->versions.push_back(v._version());
      fresh->act_bits = act_bits;
      // Stored in the working dtype: resuming must compute exactly what the full replay computes.
      auto buffer = [&](const at::Tensor& like) {
        const uint64_t limit = streaming_.memory_limit_bytes;
        const uint64_t used = ram_in_use() + fresh->ram_bytes();
        return std::make_shared<ActivationBuffer>(n, t, like.size(-1), work_.dtype().toScalarType(),
                                                  used >= limit ? 0 : limit - used,
                                                  streaming_.spill_dir);
      };
      if (reached == LayerPoint::kHeads) fresh->heads = buffer(s.heads);
      if (reached == LayerPoint::kMlpIn) {
        fresh->h = buffer(s.h);
        fresh->mlp_in = buffer(s.mlp_in);
      }
      if (reached == LayerPoint::kMlpAct) {
        fresh->h = start == LayerPoint::kMlpIn ? cache_->h
                                               : buffer(s.h);  // unchanged from the start point's
        fresh->act = buffer(s.act);
      }
    }
    if (reached != fresh->point) {  // an observer stopped this batch elsewhere: cache nothing
      fresh.reset();
      caching = false;
      continue;
    }
    switch (reached) {
      case LayerPoint::kHeads: fresh->heads->write(b, s.heads.cpu()); break;
      case LayerPoint::kMlpIn:
        fresh->h->write(b, s.h.cpu());
        fresh->mlp_in->write(b, s.mlp_in.cpu());
        break;
      case LayerPoint::kMlpAct:
        if (start != LayerPoint::kMlpIn) fresh->h->write(b, s.h.cpu());
        fresh->act->write(b, s.act.cpu());
        break;
      case LayerPoint::kInput: break;
    }
  }
  if (caching && fresh) cache_ = std::move(fresh);
}

}  // namespace lathe
