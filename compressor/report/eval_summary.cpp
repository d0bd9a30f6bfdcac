#include "compressor/report/eval_summary.h"

#include <fstream>
#include <limits>
#include <sstream>

#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/strict_json.h"
#include "compressor/report/field_reader.h"

namespace lathe {
namespace {

using report_detail::describe;
using report_detail::FieldReader;

/// The optional object under `key` ({} when absent or null).
const nlohmann::json& object_or_empty(const FieldReader& fields, const std::string& key) {
  static const nlohmann::json empty = nlohmann::json::object();
  const nlohmann::json* value = fields.find(key);
  if (!value || value->is_null()) return empty;
  if (!value->is_object())
    fields.fail(key, "expected an object {file name: value}, found " + describe(*value));
  return *value;
}

std::optional<int64_t> count_in(const FieldReader& eval, const std::string& key,
                                const std::string& name) {
  const nlohmann::json& counts = object_or_empty(eval, key);
  if (!counts.contains(name)) return std::nullopt;
  return FieldReader(counts, eval.where(), eval.field(key)).nullable_integer(name);
}

void read_perplexity(const FieldReader& eval, EvalSummary& out) {
  const nlohmann::json& ppl = object_or_empty(eval, "perplexity");
  const FieldReader values(ppl, eval.where(), eval.field("perplexity"));
  for (const auto& [name, value] : ppl.items()) {
    PerplexityEntry entry;
    // A null perplexity is what nlohmann writes for exp(huge) = inf: a diverged model.
    entry.perplexity = value.is_null() ? std::numeric_limits<double>::infinity() : 0.0;
    if (!value.is_null()) {
      entry.perplexity = values.number(name, 0.0);
      if (entry.perplexity <= 0)
        values.fail(name, "perplexity must be positive, found " + value.dump());
    }
    entry.tokens = count_in(eval, "tokens", name);
    entry.predicted = count_in(eval, "predicted", name);
    out.perplexity.emplace(name, entry);
  }
}

void read_tasks(const FieldReader& eval, EvalSummary& out) {
  const nlohmann::json& tasks = object_or_empty(eval, "tasks");
  for (const auto& [name, value] : tasks.items()) {
    const FieldReader task(value, eval.where(), eval.field("tasks") + "." + name);
    TaskEntry entry;
    entry.accuracy = task.number("accuracy", 0.0);
    if (entry.accuracy > 1.0)
      task.fail("accuracy", "accuracy is a fraction in [0, 1], found " + value["accuracy"].dump());
    if (task.find("n")) entry.n = task.nullable_integer("n");
    if (task.find("correct")) entry.correct = task.nullable_integer("correct");
    out.tasks.emplace(name, entry);
  }
}

}  // namespace

EvalSummary parse_eval_summary(const nlohmann::json& eval, const std::string& where,
                               const std::string& prefix) {
  const FieldReader fields(eval, where, prefix);
  if (!fields.find("perplexity") && !fields.find("tasks")) {
    throw DataError(where, prefix,
                    "not a lathe eval JSON: neither \"perplexity\" nor \"tasks\" is present");
  }
  EvalSummary out;
  if (const nlohmann::json* model = fields.find("model"); model && !model->is_null())
    out.model = fields.string("model");
  if (fields.find("seq_len")) out.seq_len = fields.nullable_integer("seq_len");
  if (fields.find("stride")) out.stride = fields.nullable_integer("stride");
  read_perplexity(fields, out);
  read_tasks(fields, out);
  out.raw = eval;
  return out;
}

EvalSummary read_eval_file(const std::string& path) {
  return parse_eval_summary(parse_json_strict(read_file(path), path, ""), path);
}

}  // namespace lathe
