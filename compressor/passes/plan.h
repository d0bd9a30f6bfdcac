// CompressionPlan: the decisions of the decide stage, applied by the apply stage (DESIGN.md "Core
// types"; docs/plan.md). Written as plan.json, plain and hand-editable: a user may change which
// experts stay or which tensor gets 8 bits and run `lathe apply` on it. Torch-free.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace lathe {

struct ModelSpec;

/// How one tensor is stored after apply. Tensors without an entry keep their dtype and values.
struct TensorPlan {
  std::string method = "rtn";  ///< "rtn" (later "gptq")
  int64_t bits = 4;
  int64_t group_size = 128;    ///< -1 = whole row
  bool sym = true;
  bool operator==(const TensorPlan& o) const {
    return method == o.method && bits == o.bits && group_size == o.group_size && sym == o.sym;
  }
};

class CompressionPlan {
 public:
  std::string pipeline;  ///< canonical pipeline string that produced it
  std::string model;     ///< input model directory, as given
  std::string weights_fingerprint;  ///< of the input model
  /// MoE layer → kept ORIGINAL expert ids, ascending (new id i is experts[i]). Absent: all kept.
  std::map<int64_t, std::vector<int64_t>> experts;
  /// ORIGINAL tensor name (input checkpoint) → format. Absent: unchanged.
  std::map<std::string, TensorPlan> tensors;
  /// Which pass decided what, for the report ("experts" → "drop-experts").
  std::map<std::string, std::string> decided_by;

  /// plan.json (docs/plan.md).
  nlohmann::json to_json() const;
  /// Reads plan.json; DataError(where = path, field = JSON path) for anything malformed.
  static CompressionPlan from_json(const nlohmann::json& doc, const std::string& where);
  static CompressionPlan read(const std::string& path);
  /// Checks the plan against the input model: expert ids unique, ascending, in range, at least top_k
  /// per layer, only MoE layers; tensor names exist (per expected_tensors) and are 2-d linears that
  /// may be quantized; group sizes divide the input width. DataError naming the field.
  void validate(const ModelSpec& spec, const std::vector<std::string>& tensor_names,
                const std::map<std::string, std::vector<int64_t>>& shapes, const std::string& where) const;
};

}  // namespace lathe
