// Post-processors of tokenizer.json ("post_processor"): TemplateProcessing, ByteLevel (no change to
// ids), RobertaProcessing, BertProcessing and Sequence, for single sequences.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "calibrate/tokenizer/json_reader.h"

namespace lathe::tok {

/// Adds the special tokens of a template around the ids of one sequence.
class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  /// Rewrites `ids`; without `add_special_tokens` nothing is added.
  virtual void process(std::vector<int32_t>& ids, bool add_special_tokens) const = 0;
};

/// Builds the post-processor described by `json`. DataError for malformed fields, a template
/// naming a special token it does not define, or "$B" in a single-sequence template;
/// UnsupportedError for other types.
std::unique_ptr<PostProcessor> parse_post_processor(const JsonReader& json);

}  // namespace lathe::tok
