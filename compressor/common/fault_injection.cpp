#include "compressor/common/fault_injection.h"

#include <csignal>
#include <cstdlib>

namespace lathe {

std::function<void(int64_t)> fault_injection_from_env() {
  const char* env = std::getenv("LATHE_FAULT_KILL_AFTER_LAYER");
  if (!env || !*env) return {};
  const int64_t target = std::strtoll(env, nullptr, 10);
  return [target](int64_t layer) {
    if (layer == target) ::raise(SIGKILL);
  };
}

}  // namespace lathe
