// Packing of quantized weights into the tensors of a GPTQ checkpoint (FORMATS.md §3, v1 zero
// points) and of compressed-tensors `pack-quantized` / `int-quantized` (FORMATS.md §4), the 2:4
// `sparse-24-bitmask` storage of compressed-tensors ≤ 0.14 (docs/export.md), and the inverse:
// unpacking and dequantizing such tensors as read from an (untrusted) file. Pure tensor code on
// CPU: nothing here runs a model or touches files.
//
// Bit layout shared by every packed tensor here: the values packed along one axis form a
// little-endian bit stream of 32-bit words, value j occupying stream bits [b·j, b·j + b). For
// b ∈ {2, 4, 8} that is "value j of word k at bits b·(j mod 32/b)"; for b = 3 it is exactly the
// 32-values-in-3-words scheme of FORMATS §3 (value 10 straddles words 0/1, value 21 words 1/2).
//
// Errors. pack_*: lathe's own QuantizedWeight; a layout the format cannot express (bits, a width
// not divisible by the pack width, a scale outside the target dtype's range) is UnsupportedError,
// a broken QuantizedWeight invariant (codes > maxq, zero outside the storable range, mismatched
// shapes) InternalError. unpack_* / dequantize_*: the tensors come from a file, so every dtype,
// shape, packed-width or index problem is DataError with field = the tensor's name (prefixed by
// `where` when given, e.g. the module name) — bits / group size outside what the format allows
// are DataError too (field "bits" / "group_size").
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

#include "compressor/quant/quantizer.h"

namespace lathe {

// ---------------------------------------------------------------------------------------------
// GPTQ (FORMATS §3), checkpoint_format "gptq" (v1: qzeros hold z − 1).

/// The tensors that replace `<p>.weight` (bias is the caller's).
struct GptqTensors {
  at::Tensor qweight;  ///< int32 [in·b/32, out], codes packed along input
  at::Tensor qzeros;   ///< int32 [G, out·b/32], z − 1 packed along output
  at::Tensor scales;   ///< float16 [G, out]
  at::Tensor g_idx;    ///< int32 [in], group of each input column
};

/// Pack width of a GPTQ tensor: `in` and `out` must be multiples of it (32/b; 32 for b = 3).
/// 0 for bits outside {2, 3, 4, 8}.
int64_t gptq_pack_multiple(int64_t bits);

/// Whether a [out, in] weight at `bits` can be stored as GPTQ (bits ∈ {2,3,4,8}, in and out
/// multiples of gptq_pack_multiple). Callers keep other modules unquantized (FORMATS §3 DECISION).
bool gptq_packable(int64_t bits, int64_t in_features, int64_t out_features);

/// Packs `q` (codes [out, in] u8, scales [out, G] f32, zeros [out, G] i32) with `g_idx` (int32
/// [in]; undefined = contiguous c / g from q.spec.group_size). Scales are rounded to fp16.
/// UnsupportedError for bits ∉ {2,3,4,8}, widths not divisible by the pack width, or a scale
/// that is not finite in fp16; InternalError for shape mismatches, codes > 2^b − 1, zeros outside
/// [1, 2^b] (v1 stores z − 1 in b bits) or g_idx values outside [0, G).
GptqTensors pack_gptq(const QuantizedWeight& q, const at::Tensor& g_idx);

/// Inverse of pack_gptq: codes [out, in] u8, scales [out, G] f32 (the fp16 values), zeros [out, G]
/// i32 (= qzeros + 1), spec {bits, group_size, sym = every zero is 2^(b−1)}. G = ⌈in/g⌉ (1 for
/// g = −1). The returned q does not carry g_idx: with a non-contiguous t.g_idx dequantize with
/// gptq_dequantize(q, t.g_idx). DataError (naming the tensor) for a wrong dtype or shape, g_idx
/// values outside [0, G), non-finite scales, bits ∉ {2,3,4,8}, bad group size or widths.
QuantizedWeight unpack_gptq(const GptqTensors& t, int64_t bits, int64_t in_features,
                            int64_t out_features, int64_t group_size,
                            const std::string& where = {});

/// W[o, i] = scales[g_idx[i], o] · (q[i, o] − z[g_idx[i], o]) as float32 [out, in] with the fp16
/// scale (converted exactly to f32). in = g_idx.size(0), out = scales.size(1), G = scales.size(0);
/// every other tensor is checked against those (DataError naming it).
at::Tensor dequantize_gptq(const GptqTensors& t, int64_t bits, const std::string& where = {});

// ---------------------------------------------------------------------------------------------
// compressed-tensors (FORMATS §4).

/// `pack-quantized`: signed codes q_ct = q − 2^(b−1) stored as q_ct + 2^(b−1) (= lathe's unsigned
/// code), packed along input into ⌈in/pf⌉ words per row (pf = 32/b; padding bits 0).
struct CtPackedTensors {
  at::Tensor weight_packed;      ///< int32 [out, ⌈in/pf⌉]
  at::Tensor weight_scale;       ///< scale dtype (model dtype) [out, G] ([out, 1] per channel)
  at::Tensor weight_zero_point;  ///< int32 [⌈out/pf⌉, G], zero packed along dim 0; undefined when
                                 ///< symmetric
  at::Tensor weight_shape;  ///< int32 [2] = {out, in}
  at::Tensor weight_g_idx;  ///< int32 [in]; undefined unless given (actorder "group")
};

/// Bits accepted by pack-quantized here: 2, 4 and 8 (pf = 32/b divides 32 exactly). 3 bits is
/// UnsupportedError (compressed-tensors would use pf = 10 with 2 spare bits; FORMATS does not
/// specify it).
bool ct_pack_bits_supported(int64_t bits);

/// Packs `q`; `scale_dtype` is the model dtype (float16, bfloat16 or float32). Symmetric
/// (q.spec.sym) requires every zero = 2^(b−1) and writes no zero point; asymmetric writes
/// weight_zero_point (the zero as CT zp + 2^(b−1), i.e. lathe's zero, in [0, 2^b − 1]).
/// `g_idx` (int32 [in]) is written as weight_g_idx when defined. Errors as pack_gptq.
CtPackedTensors pack_ct_packed(const QuantizedWeight& q, at::ScalarType scale_dtype,
                               const at::Tensor& g_idx = {});

/// Inverse of pack_ct_packed: out, in from weight_shape (int32 or int64), G = ⌈in/g⌉ (1 for g =
/// −1); zeros = unpacked zero point, or 2^(b−1) when absent (spec.sym = absent). DataError as
/// unpack_gptq.
QuantizedWeight unpack_ct_packed(const CtPackedTensors& t, int64_t bits, int64_t group_size,
                                 const std::string& where = {});

/// x = scale · (q_ct − zp_ct) = scale[o, gi] · (code − zero), float32 [out, in], the scale
/// converted exactly to f32; gi = weight_g_idx[c] when present, else c / g.
at::Tensor dequantize_ct_packed(const CtPackedTensors& t, int64_t bits, int64_t group_size,
                                const std::string& where = {});

/// `int-quantized` 8-bit: int8 weight = code − 128, per-channel scale.
struct CtIntTensors {
  at::Tensor weight;        ///< int8 [out, in]
  at::Tensor weight_scale;  ///< scale dtype [out, 1]
};

/// Needs bits 8, one group per row (group_size −1) and every zero = 128 (symmetric);
/// UnsupportedError otherwise (InternalError for broken invariants as pack_gptq).
CtIntTensors pack_ct_int8(const QuantizedWeight& q, at::ScalarType scale_dtype);

/// codes = weight + 128, zeros 128, scales f32 [out, 1], spec {8, −1, sym}. DataError naming the
/// tensor.
QuantizedWeight unpack_ct_int8(const CtIntTensors& t, const std::string& where = {});

/// scale[o] · weight[o, i], float32 [out, in].
at::Tensor dequantize_ct_int8(const CtIntTensors& t, const std::string& where = {});

/// `sparse-24-bitmask` (compressed-tensors ≤ 0.14; docs/export.md): a 2:4-sparse weight [out, in]
/// (in a multiple of 4) as the two values kept from every group of 4 consecutive inputs of a row
/// and a bitmask of where they were. Replaces `<m>.weight` by `<m>.compressed`, `<m>.bitmask` and
/// `<m>.shape`.
struct CtSparse24Tensors {
  at::Tensor
      compressed;      ///< the weight's dtype (float or int8) [out, in/2]: kept values, row-major
  at::Tensor bitmask;  ///< uint8 [out, ⌈in/8⌉]: bit k (LSB = 0) of byte j = column 8j + k is kept;
                       ///< padding bits 0
  at::Tensor shape;  ///< int64 [2, 1] = {{out}, {in}}
};

/// Packs `weight` (2-d, any float dtype or int8, CPU). The mask rule: every nonzero is kept (−0.0
/// counts as zero); a group of 4 with fewer than 2 nonzeros keeps its lowest-index zeros as well,
/// so every group has exactly 2 bits. Kept zeros are written as +0.0, so the weight decodes to
/// +0.0 at every zero. UnsupportedError(what, `where`) for a group with more than 2 nonzeros
/// (naming its row and columns), `in` not a multiple of 4, a non-2-d or empty weight.
CtSparse24Tensors pack_ct_sparse24(const at::Tensor& weight, const std::string& where);

/// Inverse of pack_ct_sparse24: the dense weight [out, in] in `compressed`'s dtype, +0.0 (or 0)
/// where the bitmask is clear. DataError naming the tensor (prefixed by `where`) for a dtype or
/// shape that disagrees with `shape` ({out, in}: int64 or int32, [2, 1] or [2]), `in` not a
/// multiple of 4, a group of 4 without exactly 2 bits set (naming its row and columns), or a
/// padding bit set.
at::Tensor unpack_ct_sparse24(const CtSparse24Tensors& t, const std::string& where = {});

}  // namespace lathe
