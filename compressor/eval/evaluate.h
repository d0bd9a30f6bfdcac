// Perplexity and multiple-choice accuracy on token ids (`lathe eval`), computed with the
// layer-streaming forward so the model is never resident whole.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "compressor/model/causal_lm.h"
#include "compressor/model/streaming.h"

namespace lathe {

/// Perplexity windows over one token stream.
struct WindowOptions {
  int64_t seq_len = 512;  ///< tokens per window
  int64_t stride =
      0;  ///< 0 or the window's stream tokens: non-overlapping windows; smaller: sliding
  /// A token put before every window (the BOS of a model that needs one, e.g. Gemma); -1: none.
  /// A window is then this token and seq_len − 1 stream tokens, all of them predicted.
  int32_t prefix_token = -1;
  /// Logits per head call, at most (floats; 2^24 = 64 MiB): a large vocabulary (Gemma's 262,144
  /// tokens) never yields a [micro-batch, T, V] tensor. Whole windows when one fits, else
  /// positions.
  int64_t head_logits = int64_t{1} << 24;
};

/// One window: tokens [begin, end) of the stream, predicting positions [first_target, end).
struct Window {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t first_target = 0;
};

/// The windows of a stream of `num_tokens` tokens. Non-overlapping: [0, L), [L, 2L)...; the last,
/// shorter window is kept when it has ≥ 2 tokens; each window predicts its tokens 2..n. Sliding
/// (stride < L): windows start every `stride` tokens and predict only tokens no earlier window
/// predicted, as in transformers' perplexity guide. With a prefix token, L = seq_len − 1, a window
/// of one token is kept and every stream token is predicted (the first from the prefix alone).
/// ConfigError for seq_len < 2 or a bad stride.
std::vector<Window> perplexity_windows(int64_t num_tokens, const WindowOptions& options);

/// Summed negative log-likelihood over predicted tokens.
struct PerplexityResult {
  double nll = 0;             ///< Σ −log p(token | prefix), natural log
  int64_t predicted = 0;      ///< tokens predicted
  int64_t tokens = 0;         ///< tokens in the stream
  double perplexity() const;  ///< exp(nll / predicted)
};

/// Called after each layer with (layer, layers): progress reporting.
using Progress = std::function<void(int64_t, int64_t)>;

/// Perplexity of `model` on `tokens` over the windows of `options`.
PerplexityResult evaluate_perplexity(const CausalLM& model, const std::vector<int32_t>& tokens,
                                     const WindowOptions& options,
                                     const StreamingOptions& streaming,
                                     const Progress& progress = {});

/// How far `model`'s next-token distributions are from a reference model's on the same windows
/// (llama.cpp's `--kl-divergence`): KL(p_ref ‖ p_model) summed over predicted positions, the
/// positions where both models' most likely token agree, and both models' NLL.
struct DivergenceResult {
  double kl = 0;             ///< Σ_positions Σ_v p_ref(v) (log p_ref(v) − log p_model(v)), nats
  double max_kl = 0;         ///< the largest single-position KL
  int64_t top1_agree = 0;    ///< positions where argmax p_ref = argmax p_model
  double nll = 0;            ///< the model's Σ −log p(token)
  double reference_nll = 0;  ///< the reference's
  int64_t predicted = 0;
  int64_t tokens = 0;
  double mean_kl() const { return predicted ? kl / static_cast<double>(predicted) : std::nan(""); }
  double top1() const {
    return predicted ? static_cast<double>(top1_agree) / static_cast<double>(predicted)
                     : std::nan("");
  }
};

/// Divergence of `model` from `reference` over the windows of `options`. The reference runs first
/// and keeps only its final hidden states (windows × seq_len × hidden, working dtype); the model
/// then streams and both LM heads are applied one micro-batch at a time, so neither model is
/// resident whole and no [windows, seq_len, vocab] tensor exists. ConfigError when the vocabularies
/// differ.
DivergenceResult evaluate_divergence(const CausalLM& model, const CausalLM& reference,
                                     const std::vector<int32_t>& tokens,
                                     const WindowOptions& options,
                                     const StreamingOptions& streaming,
                                     const Progress& progress = {});

/// One multiple-choice item, tokenized: the log-likelihood of each continuation given the context.
struct ChoiceItem {
  std::vector<int32_t> context;
  std::vector<std::vector<int32_t>> choices;  ///< continuation tokens per choice, each non-empty
  int64_t answer = 0;
};

/// Accuracy on a task: an item is correct when its answer has the highest summed log-likelihood
/// (lm-eval's `acc`; ties go to the lowest index).
struct TaskResult {
  int64_t n = 0;
  int64_t correct = 0;
  double accuracy() const { return n ? static_cast<double>(correct) / n : 0.0; }
};

/// Scores every choice of every item in one streaming pass. Sequences longer than the model's
/// context are cut from the left of the context.
TaskResult evaluate_choices(const CausalLM& model, const std::vector<ChoiceItem>& items,
                            const StreamingOptions& streaming, const Progress& progress = {});

}  // namespace lathe
