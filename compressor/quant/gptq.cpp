#include "compressor/quant/gptq.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "compressor/common/errors.h"

namespace lathe {
namespace {

void validate(const at::Tensor& weight, const GptqOptions& o) {
  if (o.bits < 2 || o.bits > 8)
    throw ConfigError("", "bits", "expected 2..8, found " + std::to_string(o.bits));
  if (!weight.defined() || weight.dim() != 2)
    throw InternalError("", "weight", "gptq_quantize needs a 2-d weight");
  if (!at::isFloatingType(weight.scalar_type()))
    throw InternalError("", "weight", "gptq_quantize needs a float weight");
  const int64_t in = weight.size(1);
  if (o.group_size == 0 || o.group_size < -1 || (o.group_size > 0 && in % o.group_size != 0)) {
    throw ConfigError("", "group-size",
                      "expected -1 or a positive divisor of the input width " + std::to_string(in) +
                          ", found " + std::to_string(o.group_size));
  }
  if (!(o.damp >= 0))
    throw ConfigError("", "damp", "expected ≥ 0, found " + std::to_string(o.damp));
  if (!(o.damp_step > 0))
    throw ConfigError("", "damp-step", "expected > 0, found " + std::to_string(o.damp_step));
  if (!(o.damp_max >= o.damp)) {
    throw ConfigError(
        "", "damp-max",
        "expected ≥ damp (" + std::to_string(o.damp) + "), found " + std::to_string(o.damp_max));
  }
  if (o.block_size < 1)
    throw ConfigError("", "block-size", "expected ≥ 1, found " + std::to_string(o.block_size));
}

void validate_sparse(const at::Tensor& weight, const GptqOptions& o, const SparseOptions& s) {
  const int64_t in = weight.size(1);
  if (!(s.ratio >= 0 && s.ratio < 1))
    throw ConfigError("", "sparsity",
                      fmt::format("expected a fraction in [0, 1), found {}", s.ratio));
  if (s.m != 0 || s.n != 0) {
    if (!(s.n > 0 && s.n < s.m))
      throw ConfigError("", "pattern", fmt::format("{}:{}: expected N:M with 0 < N < M", s.n, s.m));
    if (s.ratio > 0)
      throw ConfigError("", "pattern", "both an unstructured ratio and an N:M pattern");
    if (in % s.m != 0)
      throw ConfigError("", "pattern",
                        fmt::format("{}:{}: M does not divide the input width {}", s.n, s.m, in));
    if (o.block_size % s.m != 0)
      throw ConfigError("", "block-size",
                        fmt::format("{} is not a multiple of M = {}", o.block_size, s.m));
    if (o.act_order != GptqOptions::kNone)
      throw ConfigError("", "act-order", "N:M sparsity needs the natural column order (none)");
  }
  if (s.keep_zero.defined() && (s.keep_zero.dim() != 2 || s.keep_zero.size(0) != weight.size(0) ||
                                s.keep_zero.size(1) != in))
    throw InternalError("", "keep_zero", "expected the weight's shape");
}

std::pair<at::Tensor, at::Tensor> group_params(const at::Tensor& x, const GptqOptions& o) {
  return o.mse ? quant_params_mse(x, o.bits, o.sym, 100, 0.8, 2.4, o.scale_dtype)
               : quant_params(x, o.bits, o.sym, o.scale_dtype);
}

/// tr(A H Aᵀ) = Σ (A H) ⊙ A: the GEMM in fp32, the sum in fp64 (a scalar over out·in terms).
double quad_trace(const at::Tensor& a, const at::Tensor& h) {
  return (a.mm(h) * a).sum(at::kDouble).item<double>();
}

/// One segment of a block's column loop on the CPU (§1.3), row by row: every row of W1 is
/// independent once the group parameters are known, so each row runs columns [c0, c1) to the end
/// of the block without per-column tensor ops. The arithmetic is the tensor path's, operation by
/// operation: code = clamp(round_half_even(w / s) + z, 0, maxq), diff = w − s·(code − z),
/// err = diff / d, then w_j −= err·U_cj as a rounded product and a rounded difference (this file is
/// built without fused multiply-add, like the single-column product the tensor path computes).
/// `scale`/`zero` give row r's parameters for column c: scale[r * s_row + s_col[c]].
///
/// Sparsity (§9): `m1` (uint8 [out, count], may be null) marks pruned weights; with prune_m, the
/// marks of columns c … c+m−1 are chosen at each c with (i1 + c) mod m = 0 from the row's updated
/// weights. A pruned weight gets the code z (dequantizing to 0) or, prune-only, the value 0: diff
/// is then w itself. Prune-only keeps every other weight as it is (diff 0, no update).
template <typename T>
struct Segment {
  T *w1, *q1, *err1;
  const T* u1;
  uint8_t* m1;
  int64_t out, count, c0, c1, i1;
  const T *scale, *zero;
  int64_t s_row;
  const int64_t* s_col;
  double maxq;
  int64_t prune_n, prune_m;
  bool quantize;
};

/// The N:M marks of row `w` (block-local) for columns c … c+m−1: the n smallest w_j²/U_jj², ties
/// to the lower column. `score` is scratch of m entries (reused: this runs once per M columns of
/// every row).
template <typename T>
void nm_marks(const Segment<T>& a, const T* w, uint8_t* marks, int64_t c,
              std::vector<std::pair<T, int64_t>>& score) {
  for (int64_t j = 0; j < a.prune_m; ++j) {
    const T d = a.u1[(c + j) * a.count + c + j];
    score[j] = {w[c + j] * w[c + j] / (d * d), j};
  }
  std::stable_sort(score.begin(), score.end(),
                   [](const auto& x, const auto& y) { return x.first < y.first; });
  for (int64_t j = 0; j < a.prune_m; ++j) marks[c + j] = 0;
  for (int64_t j = 0; j < a.prune_n; ++j) marks[c + score[j].second] = 1;
}

template <typename T>
void column_segment(const Segment<T>& a, std::vector<double>& row_loss) {
  at::parallel_for(0, a.out, 16, [&](int64_t r0, int64_t r1) {
    std::vector<std::pair<T, int64_t>> nm_scratch(static_cast<size_t>(a.prune_m));
    for (int64_t r = r0; r < r1; ++r) {
      T* w = a.w1 + r * a.count;
      uint8_t* marks = a.m1 ? a.m1 + r * a.count : nullptr;
      double loss = 0;
      for (int64_t c = a.c0; c < a.c1; ++c) {
        if (a.prune_m > 0 && (a.i1 + c) % a.prune_m == 0) nm_marks(a, w, marks, c, nm_scratch);
        const bool pruned = marks && marks[c];
        const T d = a.u1[c * a.count + c];
        T code, diff;
        if (a.quantize) {
          const T s = a.scale[r * a.s_row + a.s_col[c]], z = a.zero[r * a.s_row + a.s_col[c]];
          if (pruned) {
            code = z;
            diff = w[c];
          } else {
            code = std::nearbyint(w[c] / s) + z;
            code = std::min(std::max(code, T(0)), static_cast<T>(a.maxq));
            const T scaled = s * (code - z);
            diff = w[c] - scaled;
          }
        } else {
          code = pruned ? T(0) : w[c];
          diff = pruned ? w[c] : T(0);
        }
        a.q1[r * a.count + c] = code;
        const T sq = diff * diff, dd = d * d;
        loss += static_cast<double>(sq / dd);
        const T err = diff / d;
        a.err1[r * a.count + c] = err;
        if (!a.quantize && err == T(0)) continue;  // prune-only, kept weight: nothing to feed back
        const T* u = a.u1 + c * a.count;
        for (int64_t j = c + 1; j < a.count; ++j) {
          const T p = err * u[j];
          w[j] = w[j] - p;
        }
      }
      row_loss[r] += loss;
    }
  });
}

/// §1.2.3–4: the upper Cholesky factor U of (H + λ·mean(diag H)·I)⁻¹ with the smallest
/// λ = damp + k·damp_step (k = 0, 1, … up to damp_max) for which both factorisations succeed and U
/// is finite; undefined when none does (or H is not finite or its mean diagonal is not positive).
/// `lambda` and `retries` get the last λ tried and k.
at::Tensor damped_inverse_factor(const at::Tensor& H, const GptqOptions& o, double* lambda,
                                 int* retries) {
  const bool finite = H.isfinite().all().item<bool>();
  const at::Tensor mean_diag =
      H.diagonal().mean();  // working precision, as the reference implementations
  *lambda = o.damp;
  *retries = 0;
  if (!finite || !(mean_diag.item<double>() > 0)) return at::Tensor();
  for (;;) {
    *lambda = o.damp + *retries * o.damp_step;  // not accumulated: no drift over hundreds of steps
    at::Tensor hd = H.clone();
    hd.diagonal().add_(mean_diag * *lambda);
    auto [lower, info] = at::linalg_cholesky_ex(hd, /*upper=*/false, /*check_errors=*/false);
    if (info.item<int64_t>() == 0) {
      auto [upper, info2] = at::linalg_cholesky_ex(at::cholesky_inverse(lower), /*upper=*/true,
                                                   /*check_errors=*/false);
      if (info2.item<int64_t>() == 0 && upper.isfinite().all().item<bool>()) return upper;
    }
    if (o.damp + (*retries + 1) * o.damp_step > o.damp_max * (1 + 1e-12)) return at::Tensor();
    ++*retries;
  }
}

/// One block of §1.3's column loop: columns [i1, i2) of W as they are being quantized.
struct Block {
  int64_t i1 = 0, i2 = 0, count = 0;
  at::Tensor W1, Q1, Err1, U1;
  at::Tensor M1;  ///< uint8 [out, count]: pruned weights (undefined without sparsity)
};

/// The sparsity side of one sweep (undefined / zero without sparsity).
struct Sparsity {
  at::Tensor mask;  ///< uint8 [out, in], loop order: fixed marks (keep_zero), then the chosen ones
  double ratio = 0;
  int64_t n = 0, m = 0;
  bool quantize = true;
  bool active() const { return mask.defined(); }
};

/// Dynamic group parameters at block column i (k = i1 + i, k % g == 0), from the fully updated
/// columns k..k+g: inside the block they are W1's; past it they still lack this block's updates,
/// applied here explicitly. *Note:* the reference codes read W (not W1) here, so a group that
/// starts inside a block misses the updates of the block's earlier columns; lathe follows the
/// unbatched algorithm. Stores them in column k / g of scales / zeros and returns them as [out, 1]
/// columns.
void dynamic_params(const at::Tensor& W, const at::Tensor& U, const Block& b, int64_t i, int64_t g,
                    const GptqOptions& o, at::Tensor& scales, at::Tensor& zeros, at::Tensor* scale,
                    at::Tensor* zero) {
  const int64_t k = b.i1 + i;
  at::Tensor cols;
  if (k + g <= b.i2) {
    cols = b.W1.slice(1, i, i + g);
  } else {
    const at::Tensor tail = W.slice(1, b.i2, k + g) -
                            b.Err1.slice(1, 0, i).mm(U.slice(0, b.i1, k).slice(1, b.i2, k + g));
    cols = at::cat({b.W1.slice(1, i), tail}, 1);
  }
  auto [s, z] = group_params(cols, o);
  scales.select(1, k / g).copy_(s);
  zeros.select(1, k / g).copy_(z);
  *scale = s.unsqueeze(1);
  *zero = z.to(W.scalar_type()).unsqueeze(1);
}

/// The block on the CPU: segments of columns that share group parameters (static groups: the whole
/// block; dynamic: from one group start to the next) run row by row (column_segment). `scale` /
/// `zero` carry the current dynamic group's parameters from block to block.
void cpu_block(Block& b, const at::Tensor& W, const at::Tensor& U, const GptqOptions& o, int64_t g,
               bool static_groups, const std::vector<int64_t>& perm_host, at::Tensor& scales,
               at::Tensor& zeros, const at::Tensor& static_scales, const at::Tensor& static_zeros,
               at::Tensor& scale, at::Tensor& zero, const Sparsity& sp,
               std::vector<double>& row_loss) {
  const int64_t out = W.size(0), groups = scales.size(1);
  const double maxq = static_cast<double>((1 << o.bits) - 1);
  const at::Tensor U1c = b.U1.contiguous();
  std::vector<int64_t> s_col(static_cast<size_t>(b.count), 0);
  int64_t i = 0;
  while (i < b.count) {
    int64_t end = b.count;
    at::Tensor seg_scale, seg_zero;
    int64_t s_row = 1;
    if (!sp.quantize) {  // prune only: no groups, one segment
      seg_scale = seg_zero = at::zeros({1}, W.options());
      s_row = 0;
    } else if (static_groups) {
      for (int64_t c = 0; c < b.count; ++c) s_col[c] = perm_host[b.i1 + c] / g;
      seg_scale = static_scales;
      seg_zero = static_zeros;
      s_row = groups;
    } else {
      if ((b.i1 + i) % g == 0) dynamic_params(W, U, b, i, g, o, scales, zeros, &scale, &zero);
      end = std::min(b.count, i + (g - (b.i1 + i) % g));
      seg_scale = scale.contiguous();
      seg_zero = zero.contiguous();
    }
    AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "gptq_column_segment", [&] {
      const Segment<scalar_t> a{b.W1.data_ptr<scalar_t>(),
                                b.Q1.data_ptr<scalar_t>(),
                                b.Err1.data_ptr<scalar_t>(),
                                U1c.data_ptr<scalar_t>(),
                                sp.active() ? b.M1.data_ptr<uint8_t>() : nullptr,
                                out,
                                b.count,
                                i,
                                end,
                                b.i1,
                                seg_scale.data_ptr<scalar_t>(),
                                seg_zero.data_ptr<scalar_t>(),
                                s_row,
                                s_col.data(),
                                maxq,
                                sp.n,
                                sp.m,
                                sp.quantize};
      column_segment<scalar_t>(a, row_loss);
    });
    i = end;
  }
}

/// The block with tensor operations, one column at a time (devices other than the CPU). Returns
/// the block's loss terms summed (fp64, on the device: no sync per block). Sparsity as on the CPU.
at::Tensor tensor_block(Block& b, const at::Tensor& W, const at::Tensor& U, const GptqOptions& o,
                        int64_t g, bool static_groups, const std::vector<int64_t>& perm_host,
                        at::Tensor& scales, at::Tensor& zeros, at::Tensor& scale, at::Tensor& zero,
                        const Sparsity& sp) {
  at::Tensor losses = at::empty_like(b.W1);
  for (int64_t i = 0; i < b.count; ++i) {
    const int64_t k = b.i1 + i;
    if (sp.quantize && static_groups) {
      const int64_t j = perm_host[k] / g;
      scale = scales.slice(1, j, j + 1);
      zero = zeros.slice(1, j, j + 1).to(W.scalar_type());
    } else if (sp.quantize && k % g == 0) {
      dynamic_params(W, U, b, i, g, o, scales, zeros, &scale, &zero);
    }
    if (sp.m > 0 && k % sp.m == 0) {
      const at::Tensor d = b.U1.diagonal().slice(0, i, i + sp.m);
      const at::Tensor score = b.W1.slice(1, i, i + sp.m).square() / d.square().unsqueeze(0);
      const at::Tensor order =
          std::get<1>(score.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false));
      at::Tensor marks = at::zeros_like(b.M1.slice(1, i, i + sp.m));
      marks.scatter_(1, order.slice(1, 0, sp.n), 1);
      b.M1.slice(1, i, i + sp.m).copy_(marks);
    }
    const at::Tensor w = b.W1.slice(1, i, i + 1);  // [out, 1]
    const at::Tensor d = b.U1[i][i];
    at::Tensor qc, value;
    if (sp.quantize) {
      qc = quantize_codes(w, scale, zero, o.bits);
      if (sp.active()) qc = at::where(b.M1.slice(1, i, i + 1).to(at::kBool), zero, qc);
      value = scale * (qc - zero);
    } else {
      value = w.masked_fill(b.M1.slice(1, i, i + 1).to(at::kBool), 0.0);
      qc = value;
    }
    const at::Tensor diff = w - value;
    b.Q1.slice(1, i, i + 1).copy_(qc);
    losses.slice(1, i, i + 1).copy_(diff.square() / d.square());
    const at::Tensor err = diff / d;
    b.W1.slice(1, i).sub_(err.mm(b.U1.slice(0, i, i + 1).slice(1, i)));
    b.Err1.slice(1, i, i + 1).copy_(err);
  }
  return losses.sum(at::kDouble);
}

/// Unstructured SparseGPT marks of a block (§9): the floor(ratio·numel) smallest W1²/U_jj² entries
/// (flat order breaks ties), added to the block's fixed marks.
void block_ratio_marks(Block& b, double ratio) {
  const at::Tensor score = b.W1.square() / b.U1.diagonal().square().unsqueeze(0);
  const int64_t k = static_cast<int64_t>(std::floor(ratio * static_cast<double>(score.numel())));
  if (k == 0) return;
  const at::Tensor order =
      std::get<1>(score.reshape({-1}).sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  b.M1.view({-1}).index_fill_(0, order.slice(0, 0, k), 1);
}

/// §1.3: the column loop with lazy block updates, in W's precision. W (permuted, dead columns
/// zeroed) is updated in place; scales / zeros hold static groups' parameters already, dynamic
/// ones are filled here. Returns the codes in loop order; `loss` gets Σ (w − q)² / d².
at::Tensor column_loop(const at::Tensor& W, const at::Tensor& U, const GptqOptions& o, int64_t g,
                       bool static_groups, const std::vector<int64_t>& perm_host,
                       at::Tensor& scales, at::Tensor& zeros, Sparsity& sp, double* loss) {
  const int64_t out = W.size(0), in = W.size(1);
  at::Tensor codes = at::empty({out, in}, W.options());
  at::Tensor scale, zero;  // [out, 1]: the current dynamic group's (a group may span blocks)
  at::Tensor device_loss = at::zeros({}, W.options().dtype(at::kDouble));
  const bool cpu = W.device().is_cpu();
  std::vector<double> row_loss(cpu ? out : 0, 0.0);
  // The CPU path reads static groups' parameters per column from these ([out, groups], W's dtype).
  const at::Tensor static_scales = static_groups && cpu ? scales.contiguous() : at::Tensor();
  const at::Tensor static_zeros =
      static_groups && cpu ? zeros.to(W.scalar_type()).contiguous() : at::Tensor();
  for (int64_t i1 = 0; i1 < in; i1 += o.block_size) {
    Block b;
    b.i1 = i1;
    b.i2 = std::min(i1 + o.block_size, in);
    b.count = b.i2 - i1;
    b.W1 = W.slice(1, i1, b.i2).clone();
    b.Q1 = at::empty_like(b.W1);
    b.Err1 = at::zeros_like(b.W1);
    b.U1 = U.slice(0, i1, b.i2).slice(1, i1, b.i2);
    if (sp.active()) {
      b.M1 = sp.mask.slice(1, i1, b.i2).clone();
      if (sp.ratio > 0) block_ratio_marks(b, sp.ratio);
    }
    if (cpu) {
      cpu_block(b, W, U, o, g, static_groups, perm_host, scales, zeros, static_scales, static_zeros,
                scale, zero, sp, row_loss);
    } else {
      device_loss +=
          tensor_block(b, W, U, o, g, static_groups, perm_host, scales, zeros, scale, zero, sp);
    }
    codes.slice(1, i1, b.i2).copy_(b.Q1);
    if (sp.active()) sp.mask.slice(1, i1, b.i2).copy_(b.M1);
    if (b.i2 < in) W.slice(1, b.i2).sub_(b.Err1.mm(U.slice(0, i1, b.i2).slice(1, b.i2)));
  }
  double total = 0;
  for (double v : row_loss) total += v;
  *loss = total + device_loss.item<double>();
  return codes;
}

/// §1.2.1: an input no token reached (H_jj = 0) gets H_jj = 1 and its weight column 0.
void fix_dead_inputs(at::Tensor& H, at::Tensor& W) {
  const at::Tensor dead = H.diagonal() == 0;
  H.diagonal().masked_fill_(dead, 1.0);
  W.masked_fill_(dead.unsqueeze(0), 0.0);
}

/// InternalError unless `hessian` is [in, in] over a non-negative token count.
void check_hessian(const at::Tensor& hessian, int64_t tokens, int64_t in) {
  if (tokens < 0)
    throw InternalError("", "tokens", "negative token count " + std::to_string(tokens));
  if (hessian.dim() != 2 || hessian.size(0) != in || hessian.size(1) != in) {
    throw InternalError("", "hessian",
                        "expected [" + std::to_string(in) + ", " + std::to_string(in) + "]");
  }
}

/// The sweep's sparsity from the options (inactive without them): keep_zero's marks in loop order.
Sparsity sparsity_of(const SparseOptions* sparse, const at::Tensor& W, const at::Tensor& perm) {
  Sparsity sp;
  if (!sparse) return sp;
  sp.ratio = sparse->ratio;
  sp.n = sparse->n;
  sp.m = sparse->m;
  sp.quantize = sparse->quantize;
  sp.mask = at::zeros(W.sizes(), W.options().dtype(at::kByte));
  if (sparse->keep_zero.defined()) {
    const at::Tensor keep = sparse->keep_zero.to(W.device(), at::kByte);
    sp.mask.copy_(perm.defined() ? keep.index_select(1, perm) : keep);
  }
  return sp;
}

/// Static groups' parameters (§1.4) from the dead-fixed original W, into scales / zeros [out, G].
void static_group_params(const at::Tensor& W, const GptqOptions& o, int64_t g, at::Tensor& scales,
                         at::Tensor& zeros) {
  for (int64_t j = 0; j < scales.size(1); ++j) {
    auto [s, z] = group_params(W.slice(1, j * g, (j + 1) * g), o);
    scales.select(1, j).copy_(s);
    zeros.select(1, j).copy_(z);
  }
}

}  // namespace

at::Tensor gptq_dequantize(const QuantizedWeight& q, const at::Tensor& g_idx) {
  const at::Tensor idx = g_idx.to(q.scales.device(), at::kLong);
  const at::Tensor s = q.scales.index_select(1, idx);
  const at::Tensor z = q.zeros.index_select(1, idx).to(at::kFloat);
  return s * (q.codes.to(at::kFloat) - z);
}

GptqResult gptq_quantize(const at::Tensor& weight, const at::Tensor& hessian, int64_t tokens,
                         const GptqOptions& o, const SparseOptions* sparse) {
  validate(weight, o);
  if (sparse) validate_sparse(weight, o, *sparse);
  const int64_t out = weight.size(0), in = weight.size(1);
  const int64_t g = o.group_size == -1 ? in : o.group_size;
  const int64_t groups = in / g;
  const QuantSpec spec{o.bits, o.group_size, o.sym, o.scale_dtype};
  // fp32 like the reference implementations; an fp64 weight keeps fp64 throughout (tests use it to
  // separate rounding from logic).
  const at::ScalarType dt = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor w0 = weight.to(dt);  // may alias `weight`: never written
  const auto long_opts = at::TensorOptions().dtype(at::kLong).device(w0.device());
  const at::Tensor contiguous_gidx = at::arange(in, long_opts).div(g, "floor").to(at::kInt);
  const bool data_free = !hessian.defined() || tokens == 0;

  GptqResult r;
  if (data_free && !sparse) {  // §1.7: no Hessian at all → RTN with MSE clipping
    r.q = quantize_rtn(w0, spec, /*mse=*/true);
    r.g_idx = contiguous_gidx;
    r.rel_err = std::numeric_limits<double>::quiet_NaN();
    r.h_source = "none";
    return r;
  }
  if (!data_free) check_hessian(hessian, tokens, in);
  r.h_source = data_free ? "none" : "hessian";

  // §1.1: H = (2/N)·Σ x xᵀ. H0 stays undamped and untouched for rel_err and the fallback loss.
  // Data-free SparseGPT: the identity (magnitude pruning, RTN).
  const at::Tensor H0 = data_free
                            ? at::eye(in, w0.options())
                            : hessian.to(w0.device(), dt) * (2.0 / static_cast<double>(tokens));
  at::Tensor H = H0.clone();
  at::Tensor W = w0.clone();
  fix_dead_inputs(H, W);
  // The dead-fixed W in the original order (static groups, fallback). Shares storage with W until
  // the permutation replaces W; both uses come before the column loop writes W.
  const at::Tensor W_unperm = W;

  auto finish_metrics = [&](const at::Tensor& deq) {
    if (data_free) {
      r.rel_err = std::numeric_limits<double>::quiet_NaN();
      return;
    }
    const double num = quad_trace(w0 - deq, H0), den = quad_trace(w0, H0);
    r.rel_err = den > 0 ? num / den : (num == 0 ? 0.0 : std::numeric_limits<double>::infinity());
  };

  // §1.5: act-order permutation (stable: ties keep the lower index first).
  const bool act_order = o.act_order != GptqOptions::kNone;
  at::Tensor perm;
  if (act_order) {
    perm = std::get<1>(H.diagonal().sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
  }

  // §1.2.3–4: damping with retries; U = upper Cholesky factor of H_d⁻¹.
  double lambda = o.damp;
  int retries = 0;
  at::Tensor U = damped_inverse_factor(H, o, &lambda, &retries);
  r.damp_used = data_free ? 0 : lambda;
  r.retries = retries;
  H.reset();                     // only U, H0 and W are needed from here on (in² floats each)
  if (!U.defined() && sparse) {  // SparseGPT keeps its sweep: magnitude marks, no feedback
    r.rtn_fallback = true;
    U = at::eye(in, W.options());
  } else if (!U.defined()) {  // DECISION §1.2: RTN with the MSE grid; the pass warns (module, λ)
    r.rtn_fallback = true;
    r.q = quantize_rtn(W_unperm, spec, /*mse=*/true);
    r.g_idx = contiguous_gidx;
    const at::Tensor deq = r.q.dequantize();
    r.loss_sum = 0.5 * quad_trace(W_unperm - deq, H0);
    finish_metrics(deq);
    return r;
  }

  Sparsity sp = sparsity_of(sparse, W, perm);

  // Static groups (§1.4): parameters from the dead-fixed original W, before updates or permutation.
  const bool static_groups = o.act_order == GptqOptions::kStatic;
  at::Tensor scales = at::empty({out, groups}, w0.options());
  at::Tensor zeros = at::empty({out, groups}, w0.options().dtype(at::kInt));
  if (static_groups && sp.quantize) static_group_params(W_unperm, o, g, scales, zeros);
  std::vector<int64_t> perm_host;
  if (act_order) {
    const at::Tensor p = perm.cpu();
    perm_host.assign(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + in);
  }

  // §1.3: column loop with lazy block updates, in working precision.
  double loss = 0;
  const at::Tensor codes =
      column_loop(W, U, o, g, static_groups, perm_host, scales, zeros, sp, &loss);
  auto unpermute = [&](const at::Tensor& t) {
    return act_order ? at::empty_like(t).index_copy_(1, perm, t) : t;
  };
  if (sp.active()) r.pruned = sp.mask.sum(at::kLong).item<int64_t>();
  r.loss_sum = 0.5 * loss;
  if (!sp.quantize) {  // prune only: the loop's "codes" are the values
    r.values = unpermute(codes);
    finish_metrics(r.values);
    return r;
  }

  r.q.spec = spec;
  r.q.scales = scales.to(at::kFloat);
  r.q.zeros = zeros;
  r.q.codes = unpermute(codes).to(at::kByte);
  r.perm = perm;
  // g_idx (§1.5): contiguous unless act-order with dynamic groups scattered them.
  r.g_idx = act_order && !static_groups
                ? at::empty({in}, long_opts.dtype(at::kInt))
                      .index_copy_(0, perm, at::arange(in, long_opts).div(g, "floor").to(at::kInt))
                : contiguous_gidx;
  finish_metrics(gptq_dequantize(r.q, r.g_idx));
  return r;
}

void accumulate_hessian(at::Tensor& h, const at::Tensor& x) {
  const int64_t in = x.size(1);
  constexpr int64_t kBlock = 256;
  if (x.size(0) == 0) return;
  if (in < 2 * kBlock) {
    h.addmm_(x.t(), x);
    return;
  }
  const at::Tensor xt = x.t().contiguous();  // [in, n]: row blocks are contiguous
  for (int64_t i = 0; i < in; i += kBlock) {
    const int64_t i1 = std::min(in, i + kBlock);
    const at::Tensor xi = xt.slice(0, i, i1);
    // Row block i of the upper triangle in one product: [i1 - i, n] x [n, in - i].
    h.slice(0, i, i1).slice(1, i).addmm_(xi, xt.slice(0, i).t());
  }
  // Mirror: every block below the diagonal from its transpose above (the diagonal blocks are
  // whole).
  for (int64_t i = kBlock; i < in; i += kBlock) {
    const int64_t i1 = std::min(in, i + kBlock);
    h.slice(0, i, i1).slice(1, 0, i).copy_(h.slice(0, 0, i).slice(1, i, i1).t());
  }
}

}  // namespace lathe
