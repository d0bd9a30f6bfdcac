#include "compressor/report/eval_summary.h"

#include <fstream>
#include <limits>
#include <sstream>

#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/json_reader.h"
#include "compressor/common/strict_json.h"

namespace lathe {
namespace {

/// The object under `key`, nullopt when absent or null.
std::optional<JsonReader> object_or_none(const JsonReader& eval, const char* key) {
  auto found = eval.find(key);
  if (found && !found->value().is_object())
    found->fail("expected an object {file name: value}, found " + describe_json(found->value()));
  return found;
}

std::optional<int64_t> count_in(const JsonReader& eval, const char* key, const std::string& name) {
  const auto counts = object_or_none(eval, key);
  return counts ? counts->optional_int({name.c_str()}, 0) : std::nullopt;
}

void read_perplexity(const JsonReader& eval, EvalSummary& out) {
  const auto values = object_or_none(eval, "perplexity");
  if (!values) return;
  for (const auto& [name, value] : values->value().items()) {
    PerplexityEntry entry;
    // A null perplexity is what nlohmann writes for exp(huge) = inf: a diverged model.
    entry.perplexity = value.is_null() ? std::numeric_limits<double>::infinity() : 0.0;
    if (!value.is_null()) {
      entry.perplexity = values->number_at({name.c_str()}, 0.0);
      if (entry.perplexity <= 0)
        values->fail(name, "perplexity must be positive, found " + value.dump());
    }
    entry.tokens = count_in(eval, "tokens", name);
    entry.predicted = count_in(eval, "predicted", name);
    out.perplexity.emplace(name, entry);
  }
}

void read_tasks(const JsonReader& eval, EvalSummary& out) {
  const auto tasks = object_or_none(eval, "tasks");
  if (!tasks) return;
  for (const auto& item : tasks->value().items()) {
    const JsonReader task = tasks->at(item.key().c_str());
    TaskEntry entry;
    entry.accuracy = task.number_at({"accuracy"}, 0.0);
    if (entry.accuracy > 1.0)
      task.fail("accuracy",
                "accuracy is a fraction in [0, 1], found " + item.value()["accuracy"].dump());
    entry.n = task.optional_int({"n"}, 0);
    entry.correct = task.optional_int({"correct"}, 0);
    out.tasks.emplace(item.key(), entry);
  }
}

}  // namespace

EvalSummary parse_eval_summary(const nlohmann::json& eval, const std::string& where,
                               const std::string& prefix) {
  const JsonReader fields(eval, where, prefix);
  if (!fields.has("perplexity") && !fields.has("tasks")) {
    throw DataError(where, prefix,
                    "not a lathe eval JSON: neither \"perplexity\" nor \"tasks\" is present");
  }
  EvalSummary out;
  if (const auto model = fields.find("model")) out.model = model->as_string();
  out.seq_len = fields.optional_int({"seq_len"}, 0);
  out.stride = fields.optional_int({"stride"}, 0);
  read_perplexity(fields, out);
  read_tasks(fields, out);
  out.raw = eval;
  return out;
}

EvalSummary read_eval_file(const std::string& path) {
  return parse_eval_summary(parse_json_strict(read_file(path), path, ""), path);
}

}  // namespace lathe
