// libFuzzer target: parse_safetensors_header on arbitrary bytes must either succeed with a header
// whose tensors tile the file exactly, or throw a lathe::Error; anything else (a crash, a
// sanitizer report, another exception type, a broken invariant) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "compressor/common/errors.h"
#include "compressor/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const lathe::SafetensorsHeader header =
        lathe::parse_safetensors_header(data, size, "fuzz.safetensors");
    uint64_t covered = 0;
    for (const auto& tensor : header.tensors) {
      if (tensor.begin < header.data_begin || tensor.end > size || tensor.begin > tensor.end ||
          tensor.name.empty()) {
        std::abort();
      }
      covered += tensor.nbytes();
    }
    if (covered != header.data_bytes || header.data_begin + header.data_bytes != size) std::abort();
  } catch (const lathe::Error&) {
    // Rejected input: the expected outcome for almost every mutation.
  }
  return 0;
}
