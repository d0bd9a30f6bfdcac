#include "compressor/quant/quant_record.h"

#include <ATen/ATen.h>

#include "compressor/common/errors.h"
#include "compressor/quant/gptq.h"

namespace lathe {

at::Tensor QuantRecord::dequantize() const {
  at::Tensor g;
  if (codes.dim() == 2) {
    const QuantizedWeight q = slice(-1, &g);
    return gptq_dequantize(q, g);
  }
  std::vector<at::Tensor> parts;
  for (int64_t e = 0; e < codes.size(0); ++e) {
    const QuantizedWeight q = slice(e, &g);
    parts.push_back(gptq_dequantize(q, g));
  }
  return at::stack(parts);
}

QuantizedWeight QuantRecord::slice(int64_t e, at::Tensor* g) const {
  QuantizedWeight q;
  q.spec = QuantSpec{bits, group_size, sym};
  if (e < 0) {
    q.codes = codes;
    q.scales = scales;
    q.zeros = zeros;
    *g = g_idx;
  } else {
    q.codes = codes[e];
    q.scales = scales[e];
    q.zeros = zeros[e];
    *g = g_idx[e];
  }
  return q;
}

QuantRecord make_quant_record(const std::string& name, const QuantizedWeight& q,
                              const at::Tensor& g_idx, int64_t act_bits) {
  QuantRecord r;
  r.name = name;
  r.bits = q.spec.bits;
  r.group_size = q.spec.group_size;
  r.sym = q.spec.sym;
  r.act_bits = act_bits;
  r.codes = q.codes.to(at::kByte).contiguous().cpu();
  r.scales = q.scales.to(at::kFloat).contiguous().cpu();
  r.zeros = q.zeros.to(at::kInt).contiguous().cpu();
  const int64_t in = q.codes.size(1);
  const int64_t gs = q.spec.group_size == -1 ? in : q.spec.group_size;
  r.g_idx = g_idx.defined() ? g_idx.to(at::kInt).contiguous().cpu()
                            : at::arange(in, at::kInt).div(gs, "floor").to(at::kInt);
  return r;
}

QuantRecord stack_quant_records(const std::string& name, const std::vector<QuantRecord>& experts) {
  if (experts.empty()) throw InternalError("", name, "no experts to stack");
  QuantRecord r = experts.front();
  r.name = name;
  std::vector<at::Tensor> c, s, z, g;
  for (const auto& e : experts) {
    if (e.bits != r.bits || e.group_size != r.group_size || e.sym != r.sym ||
        e.act_bits != r.act_bits) {
      throw InternalError(
          "", name,
          "experts of one fused tensor must share bits, group size, sym and activation bits");
    }
    c.push_back(e.codes);
    s.push_back(e.scales);
    z.push_back(e.zeros);
    g.push_back(e.g_idx);
  }
  r.codes = at::stack(c);
  r.scales = at::stack(s);
  r.zeros = at::stack(z);
  r.g_idx = at::stack(g);
  return r;
}

}  // namespace lathe
