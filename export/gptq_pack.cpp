// GPTQ / compressed-tensors packing (FORMATS.md §3, §4). See gptq_pack.h for the layout and errors.
#include "export/gptq_pack.h"

#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "compressor/common/errors.h"

namespace lathe {
namespace {

std::string shape_str(at::IntArrayRef s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

std::string field_name(const std::string& where, const char* name) {
  return where.empty() ? std::string(name) : where + "." + name;
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Packs each row of `vals` (int32 [rows, n], every value in [0, 2^bits)) into a little-endian bit
// stream of ⌈n·bits/32⌉ 32-bit words: value j at stream bits [bits·j, bits·j + bits).
at::Tensor pack_rows(const at::Tensor& vals, int64_t bits) {
  const at::Tensor v = vals.to(at::kCPU, at::kInt).contiguous();
  const int64_t rows = v.size(0), n = v.size(1);
  const int64_t words = ceil_div(n * bits, 32);
  at::Tensor out = at::zeros({rows, words}, at::TensorOptions().dtype(at::kInt));
  auto* o = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  const int32_t* src = v.data_ptr<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* row = o + r * words;
    const int32_t* in = src + r * n;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t bit = j * bits;
      const int64_t w = bit >> 5, s = bit & 31;
      const uint32_t x = static_cast<uint32_t>(in[j]);
      row[w] |= x << s;
      if (s + bits > 32) row[w + 1] |= x >> (32 - s);
    }
  }
  return out;
}

// Inverse of pack_rows: int32 [rows, n] from int32 [rows, ≥ ⌈n·bits/32⌉].
at::Tensor unpack_rows(const at::Tensor& packed, int64_t bits, int64_t n) {
  const at::Tensor p = packed.to(at::kCPU).contiguous();
  const int64_t rows = p.size(0), words = p.size(1);
  at::Tensor out = at::empty({rows, n}, at::TensorOptions().dtype(at::kInt));
  const auto* src = reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>());
  int32_t* o = out.data_ptr<int32_t>();
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  for (int64_t r = 0; r < rows; ++r) {
    const uint32_t* row = src + r * words;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t bit = j * bits;
      const int64_t w = bit >> 5, s = bit & 31;
      uint64_t x = row[w];
      if (s + bits > 32) x |= static_cast<uint64_t>(row[w + 1]) << 32;
      o[r * n + j] = static_cast<int32_t>((x >> s) & mask);
    }
  }
  return out;
}

// ---- validation of lathe's own QuantizedWeight (pack side) ----

struct Dims {
  int64_t out, in, groups;
};

Dims check_quantized(const QuantizedWeight& q, const char* what) {
  if (!q.codes.defined() || q.codes.dim() != 2)
    throw InternalError(what, "codes", "expected a 2-d tensor");
  if (q.codes.scalar_type() != at::kByte) throw InternalError(what, "codes", "expected uint8");
  const int64_t out = q.codes.size(0), in = q.codes.size(1);
  if (!q.scales.defined() || q.scales.dim() != 2 || q.scales.size(0) != out || q.scales.size(1) < 1)
    throw InternalError(what, "scales", "expected [" + std::to_string(out) + ", G]");
  const int64_t groups = q.scales.size(1);
  if (!q.zeros.defined() || q.zeros.dim() != 2 || q.zeros.size(0) != out ||
      q.zeros.size(1) != groups)
    throw InternalError(what, "zeros",
                        "expected " + shape_str({out, groups}) + ", found " +
                            (q.zeros.defined() ? shape_str(q.zeros.sizes()) : "none"));
  const int64_t maxq = (int64_t{1} << q.spec.bits) - 1;
  if (out > 0 && in > 0 && q.codes.max().item<int64_t>() > maxq)
    throw InternalError(what, "codes", "a code exceeds 2^bits - 1 = " + std::to_string(maxq));
  return {out, in, groups};
}

// int32 [in] group index: `g_idx` checked, or c / g from the spec when undefined.
at::Tensor group_index(const at::Tensor& g_idx, const Dims& d, int64_t group_size,
                       const char* what) {
  if (!g_idx.defined()) {
    const int64_t g = group_size == -1 ? d.in : group_size;
    if (g <= 0 || ceil_div(d.in, g) != d.groups)
      throw InternalError(what, "g_idx",
                          "no g_idx and group size " + std::to_string(group_size) +
                              " does not give " + std::to_string(d.groups) + " groups");
    return at::arange(d.in, at::TensorOptions().dtype(at::kLong)).div(g, "floor").to(at::kInt);
  }
  if (g_idx.dim() != 1 || g_idx.size(0) != d.in)
    throw InternalError(
        what, "g_idx",
        "expected [" + std::to_string(d.in) + "], found " + shape_str(g_idx.sizes()));
  at::Tensor gi = g_idx.to(at::kCPU, at::kInt).contiguous();
  if (d.in > 0 && (gi.min().item<int64_t>() < 0 || gi.max().item<int64_t>() >= d.groups))
    throw InternalError(what, "g_idx", "values must lie in [0, " + std::to_string(d.groups) + ")");
  return gi.clone();
}

at::Tensor to_scale_dtype(const at::Tensor& scales_rows, at::ScalarType dt, const char* what) {
  at::Tensor s = scales_rows.to(at::kCPU).to(dt).contiguous();
  if (s.numel() > 0 && !at::isfinite(s).all().item<bool>())
    throw UnsupportedError(what, "scales",
                           std::string("a scale is not finite in ") + c10::toString(dt));
  return s;
}

// ---- validation of file tensors (unpack side): DataError naming the tensor ----

void expect(const at::Tensor& t, const std::string& where, const char* name, at::ScalarType dt,
            std::vector<int64_t> shape) {
  const std::string f = field_name(where, name);
  if (!t.defined()) throw DataError("", f, "tensor is missing");
  if (t.scalar_type() != dt)
    throw DataError("", f,
                    std::string("expected dtype ") + c10::toString(dt) + ", found " +
                        c10::toString(t.scalar_type()));
  if (t.sizes() != at::IntArrayRef(shape))
    throw DataError("", f,
                    "expected shape " + shape_str(shape) + ", found " + shape_str(t.sizes()));
}

void expect_float(const at::Tensor& t, const std::string& where, const char* name,
                  std::vector<int64_t> shape) {
  const std::string f = field_name(where, name);
  if (!t.defined()) throw DataError("", f, "tensor is missing");
  const auto dt = t.scalar_type();
  if (dt != at::kHalf && dt != at::kBFloat16 && dt != at::kFloat)
    throw DataError(
        "", f, std::string("expected float16, bfloat16 or float32, found ") + c10::toString(dt));
  if (t.sizes() != at::IntArrayRef(shape))
    throw DataError("", f,
                    "expected shape " + shape_str(shape) + ", found " + shape_str(t.sizes()));
}

at::Tensor finite_f32(const at::Tensor& s, const std::string& where, const char* name) {
  at::Tensor f = s.to(at::kCPU).to(at::kFloat).contiguous();
  if (f.numel() > 0 && !at::isfinite(f).all().item<bool>())
    throw DataError("", field_name(where, name), "a scale is not finite");
  return f;
}

at::Tensor checked_g_idx(const at::Tensor& g_idx, int64_t in, int64_t groups,
                         const std::string& where, const char* name) {
  expect(g_idx, where, name, at::kInt, {in});
  at::Tensor gi = g_idx.to(at::kCPU).contiguous();
  if (in > 0 && (gi.min().item<int64_t>() < 0 || gi.max().item<int64_t>() >= groups))
    throw DataError("", field_name(where, name),
                    "values must lie in [0, " + std::to_string(groups) + ")");
  return gi;
}

int64_t groups_of(int64_t in, int64_t group_size, const std::string& where) {
  if (group_size == 0 || group_size < -1)
    throw DataError("", field_name(where, "group_size"),
                    "expected -1 or > 0, found " + std::to_string(group_size));
  return group_size == -1 ? 1 : ceil_div(in, group_size);
}

void check_gptq_bits_data(int64_t bits, const std::string& where) {
  if (gptq_pack_multiple(bits) == 0)
    throw DataError("", field_name(where, "bits"),
                    "GPTQ packs 2, 3, 4 or 8 bits, found " + std::to_string(bits));
}

void check_gptq_width_data(int64_t n, int64_t bits, const std::string& where, const char* name) {
  const int64_t m = gptq_pack_multiple(bits);
  if (n <= 0 || n % m != 0)
    throw DataError("", field_name(where, name),
                    std::to_string(bits) + "-bit GPTQ needs a positive multiple of " +
                        std::to_string(m) + ", found " + std::to_string(n));
}

// Validates the GPTQ tensors for (bits, in, out, G); returns the checked g_idx.
at::Tensor check_gptq(const GptqTensors& t, int64_t bits, int64_t in, int64_t out, int64_t groups,
                      const std::string& where) {
  check_gptq_bits_data(bits, where);
  check_gptq_width_data(in, bits, where, "in_features");
  check_gptq_width_data(out, bits, where, "out_features");
  expect(t.qweight, where, "qweight", at::kInt, {in * bits / 32, out});
  expect(t.qzeros, where, "qzeros", at::kInt, {groups, out * bits / 32});
  expect(t.scales, where, "scales", at::kHalf, {groups, out});
  return checked_g_idx(t.g_idx, in, groups, where, "g_idx");
}

int64_t ct_pf_data(int64_t bits, const std::string& where) {
  if (!ct_pack_bits_supported(bits))
    throw DataError("", field_name(where, "bits"),
                    "pack-quantized is read for 2, 4 or 8 bits, found " + std::to_string(bits));
  return 32 / bits;
}

// {out, in} from weight_shape (int32 or int64 [2], positive).
std::pair<int64_t, int64_t> ct_shape(const at::Tensor& ws, const std::string& where) {
  const std::string f = field_name(where, "weight_shape");
  if (!ws.defined()) throw DataError("", f, "tensor is missing");
  if (ws.scalar_type() != at::kInt && ws.scalar_type() != at::kLong)
    throw DataError(
        "", f, std::string("expected int32 or int64, found ") + c10::toString(ws.scalar_type()));
  if (ws.dim() != 1 || ws.size(0) != 2)
    throw DataError("", f, "expected shape [2], found " + shape_str(ws.sizes()));
  const at::Tensor v = ws.to(at::kCPU, at::kLong);
  const int64_t out = v[0].item<int64_t>(), in = v[1].item<int64_t>();
  if (out <= 0 || in <= 0) throw DataError("", f, "dimensions must be positive");
  return {out, in};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// GPTQ

int64_t gptq_pack_multiple(int64_t bits) {
  switch (bits) {
    case 2: return 16;
    case 3: return 32;
    case 4: return 8;
    case 8: return 4;
    default: return 0;
  }
}

bool gptq_packable(int64_t bits, int64_t in_features, int64_t out_features) {
  const int64_t m = gptq_pack_multiple(bits);
  return m != 0 && in_features > 0 && out_features > 0 && in_features % m == 0 &&
         out_features % m == 0;
}

GptqTensors pack_gptq(const QuantizedWeight& q, const at::Tensor& g_idx) {
  const char* what = "gptq pack";
  const int64_t bits = q.spec.bits;
  const int64_t m = gptq_pack_multiple(bits);
  if (m == 0)
    throw UnsupportedError(what, "bits",
                           "GPTQ packs 2, 3, 4 or 8 bits, found " + std::to_string(bits));
  const Dims d = check_quantized(q, what);
  if (d.in <= 0 || d.in % m != 0)
    throw UnsupportedError(what, "in_features",
                           std::to_string(bits) + "-bit GPTQ needs a multiple of " +
                               std::to_string(m) + ", found " + std::to_string(d.in));
  if (d.out <= 0 || d.out % m != 0)
    throw UnsupportedError(what, "out_features",
                           std::to_string(bits) + "-bit GPTQ needs a multiple of " +
                               std::to_string(m) + ", found " + std::to_string(d.out));
  const at::Tensor z = q.zeros.to(at::kCPU, at::kInt);
  if (z.min().item<int64_t>() < 1 || z.max().item<int64_t>() > (int64_t{1} << bits))
    throw InternalError(what, "zeros",
                        "v1 stores z - 1 in " + std::to_string(bits) +
                            " bits: zeros must lie in [1, " + std::to_string(int64_t{1} << bits) +
                            "]");
  GptqTensors t;
  t.g_idx = group_index(g_idx, d, q.spec.group_size, what);
  t.qweight = pack_rows(q.codes.to(at::kCPU, at::kInt), bits).t().contiguous();  // [in·b/32, out]
  t.qzeros = pack_rows((z - 1).t().contiguous(), bits);                          // [G, out·b/32]
  t.scales = to_scale_dtype(q.scales.t(), at::kHalf, what);                      // [G, out]
  return t;
}

QuantizedWeight unpack_gptq(const GptqTensors& t, int64_t bits, int64_t in_features,
                            int64_t out_features, int64_t group_size, const std::string& where) {
  const int64_t groups = groups_of(in_features, group_size, where);
  check_gptq(t, bits, in_features, out_features, groups, where);
  QuantizedWeight q;
  q.codes = unpack_rows(t.qweight.t().contiguous(), bits, in_features).to(at::kByte);  // [out, in]
  q.zeros = (unpack_rows(t.qzeros, bits, out_features) + 1).t().contiguous();          // [out, G]
  q.scales = finite_f32(t.scales, where, "scales").t().contiguous();
  const bool sym = q.zeros.eq(int64_t{1} << (bits - 1)).all().item<bool>();
  q.spec = QuantSpec{bits, group_size, sym};
  return q;
}

at::Tensor dequantize_gptq(const GptqTensors& t, int64_t bits, const std::string& where) {
  check_gptq_bits_data(bits, where);
  if (!t.g_idx.defined() || t.g_idx.dim() != 1)
    throw DataError("", field_name(where, "g_idx"), "expected a 1-d tensor");
  if (!t.scales.defined() || t.scales.dim() != 2)
    throw DataError("", field_name(where, "scales"), "expected a 2-d tensor");
  const int64_t in = t.g_idx.size(0), out = t.scales.size(1), groups = t.scales.size(0);
  if (groups < 1) throw DataError("", field_name(where, "scales"), "expected at least one group");
  const at::Tensor gi = check_gptq(t, bits, in, out, groups, where).to(at::kLong);
  const at::Tensor q = unpack_rows(t.qweight.t().contiguous(), bits, in).t();  // [in, out]
  const at::Tensor z = unpack_rows(t.qzeros, bits, out) + 1;                   // [G, out]
  const at::Tensor s = finite_f32(t.scales, where, "scales");                  // [G, out]
  const at::Tensor w = s.index_select(0, gi) * (q - z.index_select(0, gi)).to(at::kFloat);
  return w.t().contiguous();
}

// ---------------------------------------------------------------------------------------------
// compressed-tensors

bool ct_pack_bits_supported(int64_t bits) {
  return bits == 2 || bits == 4 || bits == 8;
}

CtPackedTensors pack_ct_packed(const QuantizedWeight& q, at::ScalarType scale_dtype,
                               const at::Tensor& g_idx) {
  const char* what = "compressed-tensors pack";
  const int64_t bits = q.spec.bits;
  if (!ct_pack_bits_supported(bits))
    throw UnsupportedError(
        what, "bits",
        "pack-quantized is written for 2, 4 or 8 bits, found " + std::to_string(bits));
  if (scale_dtype != at::kHalf && scale_dtype != at::kBFloat16 && scale_dtype != at::kFloat)
    throw UnsupportedError(what, "weight_scale",
                           std::string("scale dtype ") + c10::toString(scale_dtype));
  const Dims d = check_quantized(q, what);
  if (d.out <= 0 || d.in <= 0) throw UnsupportedError(what, "weight_shape", "empty weight");
  const at::Tensor z = q.zeros.to(at::kCPU, at::kInt).contiguous();
  const int64_t maxq = (int64_t{1} << bits) - 1, half = int64_t{1} << (bits - 1);
  CtPackedTensors t;
  if (q.spec.sym) {
    if (!z.eq(half).all().item<bool>())
      throw InternalError(what, "zeros",
                          "symmetric weight with a zero other than " + std::to_string(half));
  } else {
    if (z.min().item<int64_t>() < 0 || z.max().item<int64_t>() > maxq)
      throw InternalError(what, "zeros", "zeros must lie in [0, " + std::to_string(maxq) + "]");
    t.weight_zero_point = pack_rows(z.t().contiguous(), bits).t().contiguous();  // [⌈out/pf⌉, G]
  }
  if (g_idx.defined()) t.weight_g_idx = group_index(g_idx, d, q.spec.group_size, what);
  t.weight_packed = pack_rows(q.codes.to(at::kCPU, at::kInt), bits);  // [out, ⌈in/pf⌉]
  t.weight_scale = to_scale_dtype(q.scales, scale_dtype, what);       // [out, G]
  t.weight_shape =
      at::tensor(std::vector<int32_t>{static_cast<int32_t>(d.out), static_cast<int32_t>(d.in)},
                 at::TensorOptions().dtype(at::kInt));
  return t;
}

namespace {

struct CtDecoded {
  at::Tensor codes, zeros, scales,
      g_idx;  // int32 [out,in], int32 [out,G], f32 [out,G], int64 [in] or undefined
  int64_t out, in, groups;
};

CtDecoded decode_ct(const CtPackedTensors& t, int64_t bits, int64_t group_size,
                    const std::string& where) {
  const int64_t pf = ct_pf_data(bits, where);
  CtDecoded r;
  std::tie(r.out, r.in) = ct_shape(t.weight_shape, where);
  r.groups = groups_of(r.in, group_size, where);
  expect(t.weight_packed, where, "weight_packed", at::kInt, {r.out, ceil_div(r.in, pf)});
  expect_float(t.weight_scale, where, "weight_scale", {r.out, r.groups});
  if (t.weight_zero_point.defined()) {
    expect(t.weight_zero_point, where, "weight_zero_point", at::kInt,
           {ceil_div(r.out, pf), r.groups});
    r.zeros = unpack_rows(t.weight_zero_point.t().contiguous(), bits, r.out).t().contiguous();
  } else {
    r.zeros =
        at::full({r.out, r.groups}, int64_t{1} << (bits - 1), at::TensorOptions().dtype(at::kInt));
  }
  if (t.weight_g_idx.defined())
    r.g_idx = checked_g_idx(t.weight_g_idx, r.in, r.groups, where, "weight_g_idx");
  r.codes = unpack_rows(t.weight_packed, bits, r.in);
  r.scales = finite_f32(t.weight_scale, where, "weight_scale");
  return r;
}

}  // namespace

QuantizedWeight unpack_ct_packed(const CtPackedTensors& t, int64_t bits, int64_t group_size,
                                 const std::string& where) {
  CtDecoded r = decode_ct(t, bits, group_size, where);
  QuantizedWeight q;
  q.codes = r.codes.to(at::kByte);
  q.zeros = r.zeros;
  q.scales = r.scales;
  q.spec = QuantSpec{bits, group_size, !t.weight_zero_point.defined()};
  return q;
}

at::Tensor dequantize_ct_packed(const CtPackedTensors& t, int64_t bits, int64_t group_size,
                                const std::string& where) {
  CtDecoded r = decode_ct(t, bits, group_size, where);
  at::Tensor gi;
  if (r.g_idx.defined()) {
    gi = r.g_idx.to(at::kLong);
  } else {
    const int64_t g = group_size == -1 ? r.in : group_size;
    gi = at::arange(r.in, at::TensorOptions().dtype(at::kLong)).div(g, "floor");
  }
  return r.scales.index_select(1, gi) * (r.codes - r.zeros.index_select(1, gi)).to(at::kFloat);
}

CtIntTensors pack_ct_int8(const QuantizedWeight& q, at::ScalarType scale_dtype) {
  const char* what = "compressed-tensors int8";
  if (q.spec.bits != 8)
    throw UnsupportedError(what, "bits",
                           "int-quantized is 8-bit, found " + std::to_string(q.spec.bits));
  if (scale_dtype != at::kHalf && scale_dtype != at::kBFloat16 && scale_dtype != at::kFloat)
    throw UnsupportedError(what, "weight_scale",
                           std::string("scale dtype ") + c10::toString(scale_dtype));
  const Dims d = check_quantized(q, what);
  if (d.groups != 1)
    throw UnsupportedError(what, "group_size", "int-quantized is per channel (one group per row)");
  if (!q.zeros.eq(128).all().item<bool>())
    throw UnsupportedError(what, "zeros", "int-quantized is symmetric: every zero must be 128");
  CtIntTensors t;
  t.weight = (q.codes.to(at::kCPU, at::kInt) - 128).to(at::kChar).contiguous();
  t.weight_scale = to_scale_dtype(q.scales, scale_dtype, what);
  return t;
}

QuantizedWeight unpack_ct_int8(const CtIntTensors& t, const std::string& where) {
  const std::string f = field_name(where, "weight");
  if (!t.weight.defined()) throw DataError("", f, "tensor is missing");
  if (t.weight.scalar_type() != at::kChar)
    throw DataError(
        "", f,
        std::string("expected dtype Char (int8), found ") + c10::toString(t.weight.scalar_type()));
  if (t.weight.dim() != 2 || t.weight.size(0) <= 0 || t.weight.size(1) <= 0)
    throw DataError("", f,
                    "expected a non-empty [out, in] tensor, found " + shape_str(t.weight.sizes()));
  const int64_t out = t.weight.size(0);
  expect_float(t.weight_scale, where, "weight_scale", {out, 1});
  QuantizedWeight q;
  q.codes = (t.weight.to(at::kCPU, at::kInt) + 128).to(at::kByte).contiguous();
  q.scales = finite_f32(t.weight_scale, where, "weight_scale");
  q.zeros = at::full({out, 1}, 128, at::TensorOptions().dtype(at::kInt));
  q.spec = QuantSpec{8, -1, true};
  return q;
}

at::Tensor dequantize_ct_int8(const CtIntTensors& t, const std::string& where) {
  const QuantizedWeight q = unpack_ct_int8(t, where);
  return q.scales * t.weight.to(at::kCPU, at::kFloat);
}

// ---------------------------------------------------------------------------------------------
// sparse-24-bitmask

namespace {

/// {row, first column} of the first group of 4 in `bad` ([out, in/4] bool), which has a true.
std::pair<int64_t, int64_t> first_group(const at::Tensor& bad) {
  const int64_t flat = bad.reshape(-1).to(at::kByte).argmax().item<int64_t>();
  return {flat / bad.size(1), 4 * (flat % bad.size(1))};
}

bool is_sparse24_dtype(at::ScalarType dt) {
  return dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat || dt == at::kChar;
}

}  // namespace

CtSparse24Tensors pack_ct_sparse24(const at::Tensor& weight, const std::string& where) {
  const char* what = "compressed-tensors sparse-24-bitmask";
  if (!weight.defined() || weight.dim() != 2 || weight.numel() == 0)
    throw UnsupportedError(what, where, "expected a non-empty 2-d weight");
  if (!is_sparse24_dtype(weight.scalar_type()))
    throw UnsupportedError(what, where,
                           std::string("dtype ") + c10::toString(weight.scalar_type()));
  const int64_t out = weight.size(0), in = weight.size(1);
  if (in % 4 != 0)
    throw UnsupportedError(
        what, where,
        "2:4 needs the input width to be a multiple of 4, found " + std::to_string(in));
  const at::Tensor w = weight.to(at::kCPU).contiguous();
  const at::Tensor nonzero = w.ne(0).view({out, in / 4, 4});
  const at::Tensor count = nonzero.sum(-1);  // [out, in/4]
  const at::Tensor over = count.gt(2);
  if (over.any().item<bool>()) {
    const auto [r, c] = first_group(over);
    throw UnsupportedError(what, where,
                           "row " + std::to_string(r) + ", columns " + std::to_string(c) + "-" +
                               std::to_string(c + 3) + " hold " +
                               std::to_string(count[r][c / 4].item<int64_t>()) +
                               " nonzeros: not 2:4 sparse (at most 2 in every group of 4 inputs)");
  }
  // Keep the nonzeros, then the lowest-index zeros up to 2 per group: the k-th zero of a group
  // (k = 1, 2, …) is kept when k ≤ 2 − count.
  const at::Tensor zero = nonzero.logical_not();
  const at::Tensor rank = zero.to(at::kInt).cumsum(-1);
  const at::Tensor keep =
      nonzero.logical_or(zero.logical_and(rank.le((2 - count).unsqueeze(-1)))).view({out, in});
  CtSparse24Tensors t;
  t.compressed = w.masked_select(keep).view({out, in / 2});
  if (t.compressed.is_floating_point())
    t.compressed = t.compressed.masked_fill(t.compressed.eq(0), 0.0);  // −0.0 → +0.0
  const int64_t bytes = ceil_div(in, 8);
  const at::Tensor padded =
      at::constant_pad_nd(keep.to(at::kInt), {0, bytes * 8 - in}).view({out, bytes, 8});
  const at::Tensor weights = at::tensor(std::vector<int32_t>{1, 2, 4, 8, 16, 32, 64, 128},
                                        at::TensorOptions().dtype(at::kInt));
  t.bitmask = (padded * weights).sum(-1).to(at::kByte).contiguous();
  t.shape =
      at::tensor(std::vector<int64_t>{out, in}, at::TensorOptions().dtype(at::kLong)).view({2, 1});
  return t;
}

at::Tensor unpack_ct_sparse24(const CtSparse24Tensors& t, const std::string& where) {
  const std::string sf = field_name(where, "shape");
  if (!t.shape.defined()) throw DataError("", sf, "tensor is missing");
  if (t.shape.scalar_type() != at::kLong && t.shape.scalar_type() != at::kInt)
    throw DataError("", sf,
                    std::string("expected int64, found ") + c10::toString(t.shape.scalar_type()));
  if (t.shape.numel() != 2 || !(t.shape.dim() == 1 || (t.shape.dim() == 2 && t.shape.size(1) == 1)))
    throw DataError("", sf, "expected shape [2, 1], found " + shape_str(t.shape.sizes()));
  const at::Tensor dims = t.shape.to(at::kCPU, at::kLong).reshape(-1);
  const int64_t out = dims[0].item<int64_t>(), in = dims[1].item<int64_t>();
  if (out <= 0 || in <= 0 || in % 4 != 0)
    throw DataError("", sf,
                    "expected positive dimensions with the input width a multiple of 4, found [" +
                        std::to_string(out) + ", " + std::to_string(in) + "]");
  const std::string cf = field_name(where, "compressed");
  if (!t.compressed.defined()) throw DataError("", cf, "tensor is missing");
  if (!is_sparse24_dtype(t.compressed.scalar_type()))
    throw DataError("", cf,
                    std::string("expected float16, bfloat16, float32 or int8, found ") +
                        c10::toString(t.compressed.scalar_type()));
  if (t.compressed.sizes() != at::IntArrayRef({out, in / 2}))
    throw DataError("", cf,
                    "expected shape " + shape_str({out, in / 2}) + " (from shape), found " +
                        shape_str(t.compressed.sizes()));
  expect(t.bitmask, where, "bitmask", at::kByte, {out, ceil_div(in, 8)});
  const at::Tensor bytes = t.bitmask.to(at::kCPU).to(at::kInt).unsqueeze(-1);
  const at::Tensor bits =
      bytes.bitwise_right_shift(at::arange(8, at::TensorOptions().dtype(at::kInt)))
          .bitwise_and(1)
          .view({out, -1});  // [out, 8·⌈in/8⌉]
  const std::string bf = field_name(where, "bitmask");
  if (bits.size(1) > in && bits.narrow(1, in, bits.size(1) - in).any().item<bool>())
    throw DataError("", bf, "a padding bit (beyond column " + std::to_string(in - 1) + ") is set");
  const at::Tensor mask = bits.narrow(1, 0, in).to(at::kBool);
  const at::Tensor bad = mask.view({out, in / 4, 4}).sum(-1).ne(2);
  if (bad.any().item<bool>()) {
    const auto [r, c] = first_group(bad);
    throw DataError("", bf,
                    "row " + std::to_string(r) + ", columns " + std::to_string(c) + "-" +
                        std::to_string(c + 3) + ": " +
                        std::to_string(mask[r].narrow(0, c, 4).sum().item<int64_t>()) +
                        " bits set, 2:4 needs exactly 2 in every group of 4");
  }
  at::Tensor dense = at::zeros({out, in}, t.compressed.options().device(at::kCPU));
  dense.masked_scatter_(mask, t.compressed.to(at::kCPU).contiguous());
  return dense;
}

}  // namespace lathe
