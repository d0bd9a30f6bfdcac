// libFuzzer target: gguf::parse on arbitrary bytes must either succeed with tensors whose data lies
// inside the file, aligned and not overlapping, or throw a lathe::Error; and every tensor of a
// parsed file must dequantize (or be refused as unsupported) without reading outside its bytes.
// Anything else (a crash, a sanitizer report, another exception type, a broken invariant) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "compressor/common/errors.h"
#include "export/gguf.h"
#include "export/gguf_quants.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const lathe::gguf::Header h = lathe::gguf::parse(data, size, "fuzz.gguf");
    uint64_t last_end = 0;
    std::vector<const lathe::gguf::TensorInfo*> order;
    for (const auto& t : h.tensors) {
      if (t.begin < h.data_begin || t.begin > size || t.nbytes > size - t.begin || t.name.empty() ||
          (t.begin - h.data_begin) % h.alignment != 0) {
        std::abort();
      }
      // Dequantize small tensors into an exactly sized buffer (ASan catches a write past it).
      if (t.numel() <= (1u << 16)) {
        std::vector<float> out(static_cast<size_t>(t.numel()));
        try {
          lathe::gguf::dequantize(t.type, data + t.begin, t.numel(), out.data(), "fuzz.gguf",
                                  t.name);
        } catch (const lathe::UnsupportedError&) {
        }
      }
      last_end = t.begin + t.nbytes > last_end ? t.begin + t.nbytes : last_end;
    }
    if (last_end > size) std::abort();
  } catch (const lathe::Error&) {
    // Rejected input: the expected outcome for almost every mutation.
  }
  return 0;
}
