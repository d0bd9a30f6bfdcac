#include "compressor/model/streaming.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "compressor/common/errors.h"
#include "compressor/model/activation_buffer.h"

namespace lathe {

void stream_forward(const CausalLM& model, const at::Tensor& ids, const at::Tensor& valid,
                    const StreamingOptions& options, TapObserver* observer,
                    const FinalHiddenConsumer& consume, const LayerFinished& on_layer) {
  if (options.micro_batch <= 0) throw ConfigError("", "micro-batch", "must be positive");
  at::NoGradGuard no_grad;
  const ModelSpec& spec = model.spec();
  const int64_t n = ids.size(0), t = ids.size(1);
  const auto work = at::TensorOptions().dtype(model.options().dtype).device(model.options().device);
  auto buffer = [&] {
    return ActivationBuffer(n, t, spec.hidden_size, options.buffer_dtype,
                            options.memory_limit_bytes, options.spill_dir);
  };
  ActivationBuffer current = buffer();
  for (int64_t b = 0; b < n; b += options.micro_batch) {
    current.write(b, model.embed(ids.slice(0, b, b + options.micro_batch)).cpu());
  }
  // Mapped pages read so far count in RSS until released (DESIGN.md "Memory model").
  model.release_embedding();
  for (int64_t i = 0; i < spec.num_layers; ++i) {
    const DecoderLayer layer = model.load_layer(i);
    const bool last = i + 1 == spec.num_layers;
    ActivationBuffer next =
        last ? ActivationBuffer(0, 0, 0, options.buffer_dtype, 0, options.spill_dir) : buffer();
    for (int64_t b = 0; b < n; b += options.micro_batch) {
      const int64_t e = std::min(n, b + options.micro_batch);
      const at::Tensor v = valid.slice(0, b, e);
      ForwardContext ctx = make_forward_context(spec, v, work, observer);
      ctx.sequence_begin = b;
      const at::Tensor out = layer.forward(current.rows(b, e).to(work), ctx);
      if (last) {
        consume(b, out, v);
      } else {
        next.write(b, out.cpu());
      }
    }
    if (!last) current = std::move(next);
    if (on_layer) on_layer(i);
    model.release_layer(i);
  }
  model.release_head();  // consumers of the last layer typically ran the head
}

}  // namespace lathe
