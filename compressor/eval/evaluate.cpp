#include "compressor/eval/evaluate.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "compressor/common/errors.h"

namespace lathe {
namespace {

/// Right-padded [N, T] ids and validity of variable-length rows.
std::pair<at::Tensor, at::Tensor> pad_rows(const std::vector<std::vector<int32_t>>& rows) {
  size_t longest = 0;
  for (const auto& r : rows) longest = std::max(longest, r.size());
  at::Tensor ids =
      at::zeros({static_cast<int64_t>(rows.size()), static_cast<int64_t>(longest)}, at::kLong);
  at::Tensor valid = at::zeros_like(ids, at::kBool);
  auto id = ids.accessor<int64_t, 2>();
  auto ok = valid.accessor<bool, 2>();
  for (size_t b = 0; b < rows.size(); ++b) {
    for (size_t t = 0; t < rows[b].size(); ++t) id[b][t] = rows[b][t], ok[b][t] = true;
  }
  return {ids, valid};
}

/// The windows' tokens as right-padded [windows, lead + seq_len] ids and validity, each row
/// starting with the prefix token when there is one.
std::pair<at::Tensor, at::Tensor> window_rows(const std::vector<int32_t>& tokens,
                                              const std::vector<Window>& windows,
                                              const WindowOptions& options) {
  std::vector<std::vector<int32_t>> rows;
  for (const auto& w : windows) {
    std::vector<int32_t> row;
    if (options.prefix_token >= 0) row.push_back(options.prefix_token);
    row.insert(row.end(), tokens.begin() + w.begin, tokens.begin() + w.end);
    rows.push_back(std::move(row));
  }
  return pad_rows(rows);
}

/// The columns [first, last) of a window's log-prob row ([T-1]: column c predicts token c + 1 of
/// the row) that the window predicts; `lead` tokens (the prefix) come before the window's first
/// token.
std::pair<int64_t, int64_t> predicted_columns(const Window& w, int64_t lead) {
  return {w.first_target - w.begin - 1 + lead, w.end - w.begin - 1 + lead};
}

int64_t lead_of(const WindowOptions& options) {
  return options.prefix_token >= 0 ? 1 : 0;
}

/// Calls fn(r0, r1, p0, p1, logp) for chunks of the positions [0, T-1) of the rows of `hidden`
/// [n, T, d], where logp [r1-r0, p1-p0, V] = log p(· | row tokens ≤ t), t in [p0, p1). A chunk
/// holds whole rows when a row's logits fit `budget` floats, otherwise part of one row; the
/// log-softmax and the divergence's temporaries are of the same size.
void for_head_chunks(
    const CausalLM& model, const LmHead& head, const at::Tensor& hidden, int64_t budget,
    const std::function<void(int64_t, int64_t, int64_t, int64_t, const at::Tensor&)>& fn) {
  const int64_t n = hidden.size(0), positions = hidden.size(1) - 1;
  if (positions < 1) return;
  const int64_t per_call = std::max<int64_t>(1, budget / head.weight.size(0));
  if (per_call >= positions) {
    const int64_t rows = per_call / positions;
    for (int64_t r = 0; r < n; r += rows) {
      const int64_t r1 = std::min(n, r + rows);
      fn(r, r1, 0, positions,
         model.head(hidden.slice(0, r, r1).slice(1, 0, positions), head).log_softmax(-1));
    }
    return;
  }
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t p = 0; p < positions; p += per_call) {
      const int64_t p1 = std::min(positions, p + per_call);
      fn(r, r + 1, p, p1,
         model.head(hidden.slice(0, r, r + 1).slice(1, p, p1), head).log_softmax(-1));
    }
  }
}

/// The entries of `logp` [B, P, V] at `targets` [B, P] (int64), on the host in fp64: [B, P].
at::Tensor at_targets(const at::Tensor& logp, const at::Tensor& targets) {
  return logp.gather(-1, targets.to(logp.device()).unsqueeze(-1)).squeeze(-1).cpu().to(at::kDouble);
}

/// log p(ids[t] | ids[<t]) for t ≥ 1 of each row, from final hidden states [B, T, d]: [B, T-1]
/// fp64.
at::Tensor target_log_probs(const CausalLM& model, const LmHead& head, const at::Tensor& hidden,
                            const at::Tensor& ids, int64_t budget) {
  at::Tensor out =
      at::zeros({hidden.size(0), std::max<int64_t>(hidden.size(1) - 1, 0)}, at::kDouble);
  for_head_chunks(model, head, hidden, budget,
                  [&](int64_t r0, int64_t r1, int64_t p0, int64_t p1, const at::Tensor& logp) {
                    out.slice(0, r0, r1).slice(1, p0, p1).copy_(
                        at_targets(logp, ids.slice(0, r0, r1).slice(1, p0 + 1, p1 + 1)));
                  });
  return out;
}

void stream(const CausalLM& model, const at::Tensor& ids, const at::Tensor& valid,
            const StreamingOptions& streaming, int64_t head_logits, const Progress& progress,
            const std::function<void(int64_t, const at::Tensor&)>& on_rows) {
  std::optional<LmHead> head;  // prepared at the first micro-batch out of the last layer
  stream_forward(
      model, ids, valid, streaming, nullptr,
      [&](int64_t begin, const at::Tensor& hidden, const at::Tensor&) {
        if (!head) head = model.lm_head();
        on_rows(begin, target_log_probs(model, *head, hidden,
                                        ids.slice(0, begin, begin + hidden.size(0)), head_logits));
      },
      [&](int64_t layer) {
        if (progress) progress(layer + 1, model.spec().num_layers);
      });
}

}  // namespace

std::vector<Window> perplexity_windows(int64_t num_tokens, const WindowOptions& options) {
  const int64_t lead = lead_of(options);
  if (options.seq_len < 2)
    throw ConfigError("", "seq-len",
                      "must be at least 2, found " + std::to_string(options.seq_len));
  const int64_t len = options.seq_len - lead;  // stream tokens per window
  const int64_t stride = options.stride == 0 ? len : options.stride;
  if (stride < 1 || stride > len) {
    throw ConfigError("", "stride",
                      "must lie in [1, " + std::to_string(len) + "] (seq-len" +
                          (lead ? " - 1 for the prefix token" : "") + "), found " +
                          std::to_string(stride));
  }
  std::vector<Window> windows;
  int64_t predicted_until = 0;  // tokens before this index have been predicted (or are the first)
  for (int64_t begin = 0; begin < num_tokens; begin += stride) {
    const int64_t end = std::min(begin + len, num_tokens);
    // With a prefix token the window's first token is predicted (from the prefix) too.
    const int64_t first = std::max(predicted_until, begin + 1 - lead);
    if (end - begin + lead >= 2 && first < end) windows.push_back({begin, end, first});
    predicted_until = end;
    if (end == num_tokens) break;
  }
  return windows;
}

double PerplexityResult::perplexity() const {
  return predicted ? std::exp(nll / static_cast<double>(predicted)) : std::nan("");
}

DivergenceResult evaluate_divergence(const CausalLM& model, const CausalLM& reference,
                                     const std::vector<int32_t>& tokens,
                                     const WindowOptions& options,
                                     const StreamingOptions& streaming, const Progress& progress) {
  if (model.spec().vocab_size != reference.spec().vocab_size) {
    throw ConfigError("", "--reference",
                      "the reference's vocabulary has " +
                          std::to_string(reference.spec().vocab_size) + " tokens, the model's " +
                          std::to_string(model.spec().vocab_size) + ": not the same model family");
  }
  DivergenceResult result;
  result.tokens = static_cast<int64_t>(tokens.size());
  const std::vector<Window> windows = perplexity_windows(result.tokens, options);
  if (windows.empty()) return result;
  const auto [ids, valid] = window_rows(tokens, windows, options);
  const int64_t lead = lead_of(options);
  const int64_t layers = model.spec().num_layers + reference.spec().num_layers;
  // Pass 1: the reference's final hidden states, kept on the host.
  at::Tensor ref_hidden;
  stream_forward(
      reference, ids, valid, streaming, nullptr,
      [&](int64_t begin, const at::Tensor& hidden, const at::Tensor&) {
        if (!ref_hidden.defined()) {
          ref_hidden = at::empty({ids.size(0), ids.size(1), hidden.size(-1)},
                                 hidden.options().device(at::kCPU));
        }
        ref_hidden.slice(0, begin, begin + hidden.size(0)).copy_(hidden);
      },
      [&](int64_t layer) {
        if (progress) progress(layer + 1, layers);
      });
  // Pass 2: the model; both heads per chunk of positions.
  std::optional<LmHead> head, ref_head;
  stream_forward(
      model, ids, valid, streaming, nullptr,
      [&](int64_t begin, const at::Tensor& hidden, const at::Tensor&) {
        if (!head) head = model.lm_head(), ref_head = reference.lm_head();
        const int64_t n = hidden.size(0), positions = hidden.size(1) - 1;
        const at::Tensor ref = ref_hidden.slice(0, begin, begin + n).to(hidden.device());
        const at::Tensor rows = ids.slice(0, begin, begin + n);
        // Per position [n, T-1], in fp64 on the host for the sums.
        const auto per_position = at::TensorOptions().dtype(at::kDouble);
        at::Tensor kl = at::zeros({n, positions}, per_position),
                   nll = at::zeros({n, positions}, per_position);
        at::Tensor ref_nll = at::zeros({n, positions}, per_position),
                   agree = at::zeros({n, positions}, at::kBool);
        for_head_chunks(
            model, *head, hidden, options.head_logits,
            [&](int64_t r0, int64_t r1, int64_t p0, int64_t p1, const at::Tensor& lp) {
              const at::Tensor lr =
                  reference.head(ref.slice(0, r0, r1).slice(1, p0, p1), *ref_head).log_softmax(-1);
              const at::Tensor targets = rows.slice(0, r0, r1).slice(1, p0 + 1, p1 + 1);
              kl.slice(0, r0, r1).slice(1, p0, p1).copy_(
                  (lr.exp() * (lr - lp)).sum(-1).cpu().to(at::kDouble));
              agree.slice(0, r0, r1).slice(1, p0, p1).copy_((lr.argmax(-1) == lp.argmax(-1)).cpu());
              nll.slice(0, r0, r1).slice(1, p0, p1).copy_(at_targets(lp, targets).neg());
              ref_nll.slice(0, r0, r1).slice(1, p0, p1).copy_(at_targets(lr, targets).neg());
            });
        for (int64_t r = 0; r < n; ++r) {
          const auto [a, b] = predicted_columns(windows[begin + r], lead);
          const at::Tensor k = kl[r].slice(0, a, b);
          result.kl += k.sum().item<double>();
          result.max_kl = std::max(result.max_kl, k.max().item<double>());
          result.top1_agree += agree[r].slice(0, a, b).sum().item<int64_t>();
          result.nll += nll[r].slice(0, a, b).sum().item<double>();
          result.reference_nll += ref_nll[r].slice(0, a, b).sum().item<double>();
          result.predicted += b - a;
        }
      },
      [&](int64_t layer) {
        if (progress) progress(reference.spec().num_layers + layer + 1, layers);
      });
  return result;
}

PerplexityResult evaluate_perplexity(const CausalLM& model, const std::vector<int32_t>& tokens,
                                     const WindowOptions& options,
                                     const StreamingOptions& streaming, const Progress& progress) {
  PerplexityResult result;
  result.tokens = static_cast<int64_t>(tokens.size());
  const std::vector<Window> windows = perplexity_windows(result.tokens, options);
  if (windows.empty()) return result;
  const auto [ids, valid] = window_rows(tokens, windows, options);
  stream(model, ids, valid, streaming, options.head_logits, progress,
         [&](int64_t begin, const at::Tensor& logp) {
           for (int64_t r = 0; r < logp.size(0); ++r) {
             const auto [first, last] = predicted_columns(windows[begin + r], lead_of(options));
             const at::Tensor part = logp[r].slice(0, first, last);
             result.nll -= part.sum().item<double>();
             result.predicted += part.size(0);
           }
         });
  return result;
}

TaskResult evaluate_choices(const CausalLM& model, const std::vector<ChoiceItem>& items,
                            const StreamingOptions& streaming, const Progress& progress) {
  const int64_t max_len =
      model.spec().max_position_embeddings > 0 ? model.spec().max_position_embeddings : INT64_MAX;
  std::vector<std::vector<int32_t>> rows;
  std::vector<std::pair<size_t, size_t>> owner;  // (item, choice) of each row
  std::vector<int64_t> continuation;
  for (size_t i = 0; i < items.size(); ++i) {
    const ChoiceItem& item = items[i];
    if (item.answer < 0 || item.answer >= static_cast<int64_t>(item.choices.size())) {
      throw DataError("", "answer", "item " + std::to_string(i) + ": answer index out of range");
    }
    for (size_t c = 0; c < item.choices.size(); ++c) {
      std::vector<int32_t> row = item.context;
      row.insert(row.end(), item.choices[c].begin(), item.choices[c].end());
      if (item.choices[c].empty() || row.size() < 2) {
        throw DataError("", "choices",
                        "item " + std::to_string(i) + ": choice " + std::to_string(c) +
                            " has no tokens to score");
      }
      if (static_cast<int64_t>(row.size()) > max_len) row.erase(row.begin(), row.end() - max_len);
      rows.push_back(std::move(row));
      owner.emplace_back(i, c);
      continuation.push_back(
          static_cast<int64_t>(std::min(item.choices[c].size(), rows.back().size() - 1)));
    }
  }
  std::vector<std::vector<double>> scores(items.size());
  for (size_t i = 0; i < items.size(); ++i) scores[i].assign(items[i].choices.size(), 0.0);
  if (!rows.empty()) {
    const auto [ids, valid] = pad_rows(rows);
    stream(model, ids, valid, streaming, WindowOptions{}.head_logits, progress,
           [&](int64_t begin, const at::Tensor& logp) {
             for (int64_t r = 0; r < logp.size(0); ++r) {
               const int64_t row = begin + r, len = static_cast<int64_t>(rows[row].size());
               scores[owner[row].first][owner[row].second] =
                   logp[r].slice(0, len - 1 - continuation[row], len - 1).sum().item<double>();
             }
           });
  }
  TaskResult result;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto best = std::max_element(scores[i].begin(), scores[i].end()) - scores[i].begin();
    result.n += 1;
    result.correct += best == items[i].answer ? 1 : 0;
  }
  return result;
}

}  // namespace lathe
