#include "export/quant_sidecar.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>

#include <fmt/format.h>

#include "compressor/common/errors.h"
#include "compressor/model/tensor_bridge.h"
#include "compressor/model/weight_store.h"
#include "export/checkpoint_writer.h"

namespace fs = std::filesystem;

namespace lathe {

namespace {

const char* kParts[] = {"codes", "scales", "zeros", "g_idx", "qparams"};

}  // namespace

void append_quant_tensors(const QuantRecord& r, std::vector<TensorBytes>* out,
                          std::vector<at::Tensor>* keep) {
  const at::Tensor params =
      at::tensor({r.bits, r.group_size, static_cast<int64_t>(r.sym), r.act_bits}, at::kInt);
  const at::Tensor parts[] = {r.codes, r.scales, r.zeros, r.g_idx, params};
  for (int i = 0; i < 5; ++i) {
    out->push_back(tensor_bytes(r.name + "." + kParts[i], parts[i], keep));
  }
}

struct QuantSidecar::Impl {
  std::string dir;
  WeightStore store;
  std::vector<std::string> names;
  explicit Impl(const std::string& d) : dir(d), store(d) {
    const std::string suffix = ".qparams";
    for (const auto& n : store.names()) {
      if (n.size() > suffix.size() &&
          n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0) {
        names.push_back(n.substr(0, n.size() - suffix.size()));
      }
    }
  }
};

QuantSidecar::QuantSidecar(const std::string& dir) : impl_(std::make_unique<Impl>(dir)) {}
QuantSidecar::~QuantSidecar() = default;

bool QuantSidecar::has(const std::string& name) const {
  return impl_->store.contains(name + ".qparams");
}

std::vector<std::string> QuantSidecar::names() const {
  return impl_->names;
}

std::string QuantSidecar::describe() const {
  return impl_->dir;
}

QuantRecord QuantSidecar::record(const std::string& name) const {
  const WeightStore& s = impl_->store;
  const std::string& where = impl_->dir;
  auto get = [&](const char* part, at::ScalarType type) {
    const std::string n = name + "." + part;
    if (!s.contains(n))
      throw DataError(where, n,
                      "missing (every quantized tensor has codes, scales, zeros, g_idx, qparams)");
    at::Tensor t = load_tensor(s, n);
    if (t.scalar_type() != type) {
      throw DataError(where, n,
                      fmt::format("expected dtype {}, found {}", c10::toString(type),
                                  c10::toString(t.scalar_type())));
    }
    return t;
  };
  const at::Tensor p = get("qparams", at::kInt);
  if (p.dim() != 1 || p.size(0) != 4)
    throw DataError(where, name + ".qparams", "expected 4 values: bits, group_size, sym, act_bits");
  QuantRecord r;
  r.name = name;
  r.bits = p[0].item<int64_t>();
  r.group_size = p[1].item<int64_t>();
  r.sym = p[2].item<int64_t>() != 0;
  r.act_bits = p[3].item<int64_t>();
  if (r.bits < 2 || r.bits > 8)
    throw DataError(where, name + ".qparams", fmt::format("bits {} outside 2..8", r.bits));
  if (r.act_bits != 0 && r.act_bits != 8)
    throw DataError(where, name + ".qparams",
                    fmt::format("activation bits {} (expected 0 or 8)", r.act_bits));
  r.codes = get("codes", at::kByte);
  r.scales = get("scales", at::kFloat);
  r.zeros = get("zeros", at::kInt);
  r.g_idx = get("g_idx", at::kInt);
  const int64_t rank = r.codes.dim();
  if (rank != 2 && rank != 3) throw DataError(where, name + ".codes", "expected 2 or 3 dimensions");
  const int64_t in = r.codes.size(-1), out = r.codes.size(-2);
  if (r.group_size == 0 || r.group_size < -1 || (r.group_size > 0 && in % r.group_size != 0)) {
    throw DataError(
        where, name + ".qparams",
        fmt::format("group size {} does not divide the input width {}", r.group_size, in));
  }
  const int64_t groups = r.group_size == -1 ? 1 : in / r.group_size;
  std::vector<int64_t> lead;
  if (rank == 3) lead.push_back(r.codes.size(0));
  auto shape = [&](std::vector<int64_t> tail) {
    std::vector<int64_t> v = lead;
    v.insert(v.end(), tail.begin(), tail.end());
    return v;
  };
  if (r.scales.sizes().vec() != shape({out, groups}))
    throw DataError(where, name + ".scales", "shape does not match codes and group size");
  if (r.zeros.sizes().vec() != shape({out, groups}))
    throw DataError(where, name + ".zeros", "shape does not match codes and group size");
  if (r.g_idx.sizes().vec() != shape({in}))
    throw DataError(where, name + ".g_idx", "shape does not match codes");
  const int64_t maxq = (int64_t{1} << r.bits) - 1;
  if (r.codes.numel() && r.codes.max().item<int64_t>() > maxq)
    throw DataError(where, name + ".codes", fmt::format("a code exceeds 2^{} − 1", r.bits));
  if (r.zeros.numel() &&
      (r.zeros.min().item<int64_t>() < 0 || r.zeros.max().item<int64_t>() > maxq + 1)) {
    throw DataError(where, name + ".zeros", "a zero point is outside [0, 2^bits]");
  }
  if (r.g_idx.numel() &&
      (r.g_idx.min().item<int64_t>() < 0 || r.g_idx.max().item<int64_t>() >= groups)) {
    throw DataError(where, name + ".g_idx",
                    fmt::format("a group index is outside [0, {})", groups));
  }
  if (!at::isfinite(r.scales).all().item<bool>())
    throw DataError(where, name + ".scales", "a scale is not finite");
  return r;
}

at::Tensor QuantSidecar::load(const std::string& name) const {
  return record(name).dequantize();
}

int64_t QuantSidecar::activation_bits(const std::string& name) const {
  const at::Tensor p = load_tensor(impl_->store, name + ".qparams");
  return p.numel() == 4 ? p[3].item<int64_t>() : 0;
}

void QuantSidecar::release(const std::vector<std::string>& names) const {
  for (const auto& n : names) {
    if (!has(n)) continue;
    for (const char* part : kParts) impl_->store.release(n + "." + part);
  }
}

std::shared_ptr<const QuantSidecar> open_quant_sidecar(const std::string& out_dir) {
  const fs::path dir = fs::path(out_dir) / "quant";
  if (!fs::exists(dir / "model.safetensors.index.json")) return nullptr;
  return std::make_shared<QuantSidecar>(dir.string());
}

}  // namespace lathe
