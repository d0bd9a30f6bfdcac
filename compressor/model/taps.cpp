#include "compressor/model/taps.h"

namespace lathe {

const char* tap_name(Tap tap) {
  switch (tap) {
    case Tap::kAttnIn: return "attn.in";
    case Tap::kMlpIn: return "mlp.in";
    case Tap::kRouterLogits: return "router.logits";
    case Tap::kExpertIn: return "expert.in";
    case Tap::kExpertAct: return "expert.act";
    case Tap::kLayerOut: return "layer.out";
    case Tap::kRouterTopK: return "router.topk";
    case Tap::kAttnOutIn: return "attn.o.in";
    case Tap::kMlpAct: return "mlp.act";
    case Tap::kSharedAct: return "shared.act";
  }
  return "unknown";
}

}  // namespace lathe
