// CalibrationSet: documents from text and JSONL files, tokenized per document, packed or kept
// whole, and a seeded choice of samples per task (calibration_set.h has the rules).
#include "calibrate/calibration_set.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <exception>
#include <map>
#include <string_view>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "calibrate/tokenizer.h"
#include "calibrate/tokenizer/unicode.h"
#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/common/sha256.h"
#include "compressor/common/strict_json.h"
#include "compressor/model/fingerprint.h"

namespace lathe {
namespace {

using json = nlohmann::json;

constexpr const char* kOptionsWhere = "calibration";
constexpr const char* kDescriptionWhere = "calibration description";

// ---- reading sources ----------------------------------------------------------------------------

bool is_jsonl(const std::string& path) {
  constexpr std::string_view kExt = ".jsonl";
  if (path.size() < kExt.size()) return false;
  return std::equal(kExt.begin(), kExt.end(), path.end() - kExt.size(), [](char e, char c) {
    return e == std::tolower(static_cast<unsigned char>(c));
  });
}

bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

void check_utf8(std::string_view bytes, const std::string& path) {
  const size_t bad = unicode::find_invalid_utf8(bytes);
  if (bad == std::string_view::npos) return;
  const auto line =
      1 + std::count(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(bad), '\n');
  throw DataError(
      path, "byte " + std::to_string(bad),
      "invalid UTF-8 at byte " + std::to_string(bad) + " (line " + std::to_string(line) + ")");
}

// One document: a view into its source's bytes, or text it owns (JSONL, or a final paragraph
// that needs its trailing newline).
struct Document {
  std::string_view view;
  std::string owned;
  bool uses_owned = false;
  int32_t task = 0;

  std::string_view text() const { return uses_owned ? std::string_view(owned) : view; }
};

struct TaskTable {
  std::vector<std::string> names;
  std::vector<int64_t> samples;
  std::vector<std::vector<size_t>> sources;  // source indices that contributed, ascending
  std::map<std::string, int32_t> index;
};

struct Loaded {
  const CalibrationOptions& options;
  std::vector<std::string> source_sha;  // content fingerprint per source
  std::vector<int64_t> source_samples;
  std::vector<Document> documents;
  TaskTable tasks;
};

int32_t register_task(Loaded& loaded, const std::string& label, size_t source) {
  TaskTable& table = loaded.tasks;
  const int64_t samples = loaded.source_samples[source];
  auto it = table.index.find(label);
  if (it == table.index.end()) {
    const auto t = static_cast<int32_t>(table.names.size());
    table.index.emplace(label, t);
    table.names.push_back(label);
    table.samples.push_back(samples);
    table.sources.push_back({source});
    return t;
  }
  const int32_t t = it->second;
  if (table.samples[t] != samples) {
    const size_t other = table.sources[t].front();
    throw ConfigError(loaded.options.sources[source].path, "samples",
                      "task '" + label + "' gets " + std::to_string(samples) +
                          " samples from this source but " + std::to_string(table.samples[t]) +
                          " from " + loaded.options.sources[other].path +
                          " (a source without samples gives the default)");
  }
  if (table.sources[t].back() != source) table.sources[t].push_back(source);
  return t;
}

void add_text_documents(Loaded& loaded, const std::string& bytes, size_t source) {
  const int32_t task = register_task(loaded, loaded.options.sources[source].task, source);
  size_t start = std::string::npos;  // first byte of the open paragraph
  size_t end = 0;                    // one past its last non-blank line's content
  auto emit = [&] {
    Document doc;
    doc.task = task;
    if (end < bytes.size()) {  // the '\n' after the last line is in the file
      doc.view = std::string_view(bytes).substr(start, end + 1 - start);
    } else {
      doc.owned = bytes.substr(start, end - start) + "\n";
      doc.uses_owned = true;
    }
    loaded.documents.push_back(std::move(doc));
    start = std::string::npos;
  };
  for (size_t pos = 0; pos < bytes.size();) {
    size_t line_end = bytes.find('\n', pos);
    if (line_end == std::string::npos) line_end = bytes.size();
    if (is_blank(std::string_view(bytes).substr(pos, line_end - pos))) {
      if (start != std::string::npos) emit();
    } else {
      if (start == std::string::npos) start = pos;
      end = line_end;
    }
    pos = line_end + 1;
  }
  if (start != std::string::npos) emit();
}

// The task of JSONL record `record` on `field` (= "line N").
int32_t record_task(Loaded& loaded, const json& record, size_t source, const std::string& field) {
  const CalibrationSource& spec = loaded.options.sources[source];
  std::string label = spec.task;
  if (const auto it = record.find("task"); it != record.end()) {
    if (!it->is_string()) {
      throw DataError(spec.path, field,
                      std::string("`task` must be a string, found ") + it->type_name());
    }
    label = it->get<std::string>();
  } else if (label.empty()) {
    throw DataError(spec.path, field,
                    "the record has no `task` and the source gives no default task");
  }
  if (const std::string problem = task_label_problem(label); !problem.empty()) {
    throw DataError(spec.path, field, problem);
  }
  return register_task(loaded, label, source);
}

void add_jsonl_documents(Loaded& loaded, const std::string& bytes, size_t source) {
  const std::string& path = loaded.options.sources[source].path;
  int64_t line_number = 0;
  bool any_record = false;
  for (size_t pos = 0; pos < bytes.size();) {
    size_t line_end = bytes.find('\n', pos);
    if (line_end == std::string::npos) line_end = bytes.size();
    const std::string_view line = std::string_view(bytes).substr(pos, line_end - pos);
    pos = line_end + 1;
    ++line_number;
    if (is_blank(line)) continue;
    any_record = true;
    const std::string field = "line " + std::to_string(line_number);
    json record;
    try {
      record = parse_json_strict(line, path, field);
    } catch (const DataError& e) {  // a duplicate key names the key; we name the line
      throw DataError(path, field, e.message());
    }
    if (!record.is_object()) {
      throw DataError(path, field,
                      std::string("expected a JSON object, found ") + record.type_name());
    }
    const auto text = record.find("text");
    if (text == record.end() || !text->is_string()) {
      throw DataError(path, field,
                      std::string("expected a string `text`, found ") +
                          (text == record.end() ? "none" : text->type_name()));
    }
    const int32_t task = record_task(loaded, record, source, field);
    if (text->get_ref<const std::string&>().empty()) continue;
    Document doc;
    doc.owned = std::move(text->get_ref<std::string&>());
    doc.uses_owned = true;
    doc.task = task;
    loaded.documents.push_back(std::move(doc));
  }
  if (!any_record) throw DataError(path, "", "the .jsonl file holds no records");
}

}  // namespace

void check_calibration_options(const CalibrationOptions& options) {
  if (options.seq_len <= 0) {
    throw ConfigError(kOptionsWhere, "seq_len",
                      "seq_len must be positive, got " + std::to_string(options.seq_len));
  }
  if (options.samples <= 0) {
    throw ConfigError(kOptionsWhere, "samples",
                      "samples must be positive, got " + std::to_string(options.samples));
  }
  if (options.sources.empty())
    throw ConfigError(kOptionsWhere, "sources", "no calibration sources");
  for (const CalibrationSource& source : options.sources) {
    if (source.samples && *source.samples <= 0) {
      throw ConfigError(source.path, "samples",
                        "samples must be positive, got " + std::to_string(*source.samples));
    }
    if (source.task.empty() && !is_jsonl(source.path)) {
      throw ConfigError(source.path, "task", "a text source needs a task label");
    }
    if (!source.task.empty()) {
      if (const std::string problem = task_label_problem(source.task); !problem.empty()) {
        throw ConfigError(source.path, "task", problem);
      }
    }
  }
}

namespace {

// Source bytes must stay alive while documents view them: they are kept in `buffers`.
void load_sources(Loaded& loaded, std::vector<std::string>& buffers) {
  const auto& sources = loaded.options.sources;
  buffers.reserve(sources.size());
  for (size_t s = 0; s < sources.size(); ++s) {
    buffers.push_back(read_file(sources[s].path));
    const std::string& bytes = buffers.back();
    Sha256 sha;
    sha.update(bytes);
    loaded.source_sha.push_back(fingerprint_from_digest(sha.finish()));
    loaded.source_samples.push_back(sources[s].samples.value_or(loaded.options.samples));
    check_utf8(bytes, sources[s].path);
    if (is_jsonl(sources[s].path)) {
      add_jsonl_documents(loaded, bytes, s);
    } else {
      add_text_documents(loaded, bytes, s);
    }
  }
}

// ---- tokens and choice --------------------------------------------------------------------------

// Tokens of every document (documents are independent; the tokenizer is thread-safe).
std::vector<std::vector<int32_t>> encode_documents(const std::vector<Document>& documents,
                                                   const Tokenizer& tokenizer) {
  const auto count = static_cast<int64_t>(documents.size());
  std::vector<std::vector<int32_t>> tokens(documents.size());
  std::vector<std::exception_ptr> errors(documents.size());
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t d = 0; d < count; ++d) {
    try {
      tokens[d] = tokenizer.encode(documents[d].text(), true);
    } catch (...) {
      errors[d] = std::current_exception();
    }
  }
  for (const auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
  return tokens;
}

// SplitMix64 (Steele, Lea, Flood 2014; constants of Vigna's splitmix64.c).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t state) : state_(state) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

 private:
  uint64_t state_;
};

uint64_t task_seed(uint64_t seed, const std::string& task) {
  Sha256 sha;
  sha.update("lathe.calibration.sample/1");
  uint8_t le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<uint8_t>(seed >> (8 * i));
  sha.update(le, sizeof(le));
  sha.update(task);
  const Sha256::Digest digest = sha.finish();
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= static_cast<uint64_t>(digest[i]) << (8 * i);
  return value;
}

// The first n entries of a partial Fisher–Yates shuffle of 0..m-1, ascending. Only the displaced
// entries are stored, so memory is O(n) however many candidates there are.
std::vector<int64_t> choose(int64_t m, int64_t n, uint64_t seed) {
  SplitMix64 rng(seed);
  std::unordered_map<int64_t, int64_t> displaced;
  auto at = [&](int64_t k) {
    const auto it = displaced.find(k);
    return it == displaced.end() ? k : it->second;
  };
  std::vector<int64_t> chosen;
  chosen.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = i + static_cast<int64_t>(rng.next() % static_cast<uint64_t>(m - i));
    const int64_t value_j = at(j);
    displaced[j] = at(i);  // position i is never read again
    chosen.push_back(value_j);
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

std::string joined_sources(const Loaded& loaded, int32_t t) {
  std::string out;
  for (size_t s : loaded.tasks.sources[t]) {
    out += (out.empty() ? "" : ", ") + loaded.options.sources[s].path;
  }
  return out;
}

void append_sample(CalibrationSet& set, const int32_t* ids, int64_t length, int32_t task) {
  const int64_t T = set.seq_len;
  set.ids.insert(set.ids.end(), ids, ids + length);
  set.ids.insert(set.ids.end(), static_cast<size_t>(T - length), 0);
  set.lengths.push_back(length);
  set.task_of.push_back(task);
}

// Appends task t's samples to `set`.
void sample_task(CalibrationSet& set, const Loaded& loaded, int32_t t,
                 const std::vector<std::vector<int32_t>>& tokens) {
  const int64_t T = set.seq_len;
  const int64_t n = loaded.tasks.samples[t];
  const std::string& name = loaded.tasks.names[t];
  const bool pack = loaded.options.packing == Packing::kPack;
  std::vector<int32_t> stream;                    // packing: the task's tokens, in order
  std::vector<const std::vector<int32_t>*> docs;  // document mode: the task's documents
  int64_t total = 0;
  for (size_t d = 0; d < loaded.documents.size(); ++d) {
    if (loaded.documents[d].task != t || tokens[d].empty()) continue;
    total += static_cast<int64_t>(tokens[d].size());
    if (pack) {
      stream.insert(stream.end(), tokens[d].begin(), tokens[d].end());
    } else {
      docs.push_back(&tokens[d]);
    }
  }
  const int64_t m = pack ? total / T : static_cast<int64_t>(docs.size());
  if (m < n) {
    const std::string plural = m == 1 ? "" : "s";
    const std::string found = pack ? std::to_string(m) + " window" + plural + " of " +
                                         std::to_string(T) + " tokens (" + std::to_string(total) +
                                         " tokens in all)"
                                   : std::to_string(m) + " document" + plural;
    throw DataError(
        joined_sources(loaded, t), name,
        "task '" + name + "' has " + found + ", " + std::to_string(n) + " samples needed");
  }
  for (int64_t c : choose(m, n, task_seed(loaded.options.seed, name))) {
    if (pack) {
      append_sample(set, stream.data() + c * T, T, t);
    } else {
      const auto& doc = *docs[static_cast<size_t>(c)];
      append_sample(set, doc.data(), std::min<int64_t>(T, static_cast<int64_t>(doc.size())), t);
    }
  }
}

json describe(const CalibrationSet& set, const Loaded& loaded,
              const std::string& tokenizer_fingerprint) {
  const CalibrationOptions& options = loaded.options;
  json sources = json::array();
  for (size_t s = 0; s < options.sources.size(); ++s) {
    sources.push_back({{"path", options.sources[s].path},
                       {"task", options.sources[s].task},
                       {"samples", loaded.source_samples[s]},
                       {"sha256", loaded.source_sha[s]}});
  }
  json tasks = json::array();
  for (size_t t = 0; t < set.tasks.size(); ++t) {
    tasks.push_back({{"name", set.tasks[t]},
                     {"samples", loaded.tasks.samples[t]},
                     {"tokens", set.tokens(static_cast<int32_t>(t))}});
  }
  return {{"format", "lathe-calibration"},
          {"version", 1},
          {"tokenizer", tokenizer_fingerprint},
          {"seq_len", options.seq_len},
          {"packing", packing_name(options.packing)},
          {"seed", options.seed},
          {"sources", std::move(sources)},
          {"tasks", std::move(tasks)}};
}

// ---- fingerprint helpers ------------------------------------------------------------------------

const json& described(const json& description, const char* key, json::value_t type) {
  const auto it = description.find(key);
  const bool number = type == json::value_t::number_integer;
  if (it == description.end() || (number ? !it->is_number_integer() : it->type() != type)) {
    throw DataError(kDescriptionWhere, key, std::string("missing or of the wrong type"));
  }
  return *it;
}

void append_u32(std::vector<uint8_t>& out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
}

// ---- change description -------------------------------------------------------------------------

std::string shown(const json& value) {
  return value.is_string() ? value.get<std::string>() : value.dump();
}

// "sha256:ab12cd34…": enough to tell two fingerprints apart in a message.
std::string short_fingerprint(const json& value) {
  const std::string text = shown(value);
  return text.size() > 15 ? text.substr(0, 15) + "…" : text;
}

json field_of(const json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  return it == object.end() ? json(nullptr) : *it;
}

void compare_sources(const json& stored, const json& current, std::vector<std::string>& lines) {
  const json none = json::array();
  const json& before = stored.is_array() ? stored : none;
  const json& after = current.is_array() ? current : none;
  std::vector<int> match(before.size(), -1);  // index in `after`
  std::vector<bool> taken(after.size(), false);
  auto pair_by = [&](const char* key) {
    for (size_t i = 0; i < before.size(); ++i) {
      for (size_t j = 0; j < after.size() && match[i] < 0; ++j) {
        if (!taken[j] && field_of(before[i], key) == field_of(after[j], key)) {
          match[i] = static_cast<int>(j);
          taken[j] = true;
        }
      }
    }
  };
  pair_by("path");
  pair_by("sha256");
  int last = -1;
  bool reordered = false;
  for (size_t i = 0; i < before.size(); ++i) {
    const std::string path = shown(field_of(before[i], "path"));
    if (match[i] < 0) {
      lines.push_back("source removed: " + path);
      continue;
    }
    const json& now = after[static_cast<size_t>(match[i])];
    reordered = reordered || match[i] < last;
    last = match[i];
    const std::string new_path = shown(field_of(now, "path"));
    if (new_path != path) lines.push_back(path + " moved to " + new_path + " (same content)");
    if (field_of(before[i], "sha256") != field_of(now, "sha256")) {
      lines.push_back(path + ": content changed (" +
                      short_fingerprint(field_of(before[i], "sha256")) + " → " +
                      short_fingerprint(field_of(now, "sha256")) + ")");
    }
    for (const char* key : {"task", "samples"}) {
      if (field_of(before[i], key) != field_of(now, key)) {
        lines.push_back(new_path + ": " + key + " " + shown(field_of(before[i], key)) + " → " +
                        shown(field_of(now, key)));
      }
    }
  }
  for (size_t j = 0; j < after.size(); ++j) {
    if (!taken[j]) lines.push_back("source added: " + shown(field_of(after[j], "path")));
  }
  if (reordered) lines.push_back("source order changed");
}

}  // namespace

const char* packing_name(Packing packing) {
  return packing == Packing::kPack ? "pack" : "document";
}

Packing parse_packing(const std::string& text) {
  if (text == "pack") return Packing::kPack;
  if (text == "document") return Packing::kDocument;
  throw ConfigError(kOptionsWhere, "packing",
                    "unknown packing '" + text + "': expected 'pack' or 'document'");
}

int64_t CalibrationSet::tokens(int32_t t) const {
  int64_t total = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    if (t < 0 || task_of[i] == t) total += lengths[i];
  }
  return total;
}

std::string task_label_problem(const std::string& label) {
  if (label.empty()) return "a task label must not be empty";
  if (label == "." || label == ".." || label.find('/') != std::string::npos ||
      label.find('\0') != std::string::npos) {
    return "task label '" + label +
           "' is not a valid statistics name (no '/' or NUL, not '.' or '..')";
  }
  if (label == "all") return "task label 'all' is reserved for statistics over every task";
  return "";
}

CalibrationSet build_calibration_set(const CalibrationOptions& options, const Tokenizer& tokenizer,
                                     const std::string& tokenizer_fingerprint) {
  check_calibration_options(options);
  Loaded loaded{options, {}, {}, {}, {}};
  std::vector<std::string> buffers;
  load_sources(loaded, buffers);
  const std::vector<std::vector<int32_t>> tokens = encode_documents(loaded.documents, tokenizer);

  CalibrationSet set;
  set.tasks = loaded.tasks.names;
  set.seq_len = options.seq_len;
  for (int32_t t = 0; t < static_cast<int32_t>(set.tasks.size()); ++t) {
    sample_task(set, loaded, t, tokens);
  }
  set.description_json = describe(set, loaded, tokenizer_fingerprint).dump();
  set.fingerprint = calibration_fingerprint(set);
  return set;
}

std::string calibration_fingerprint(const CalibrationSet& set) {
  json description;
  try {
    description = json::parse(set.description_json);
  } catch (const json::exception& e) {
    throw DataError(kDescriptionWhere, "", std::string("not valid JSON: ") + e.what());
  }
  if (!description.is_object()) throw DataError(kDescriptionWhere, "", "not a JSON object");
  const int64_t T = set.seq_len;
  const auto N = static_cast<size_t>(set.num_samples());
  if (described(description, "seq_len", json::value_t::number_integer).get<int64_t>() != T ||
      set.task_of.size() != N ||
      set.ids.size() != N * static_cast<size_t>(std::max<int64_t>(T, 0))) {
    throw DataError(kDescriptionWhere, "seq_len", "the set's shapes do not match its description");
  }
  Fingerprinter fp("lathe.calibration/1");
  fp.add("tokenizer",
         described(description, "tokenizer", json::value_t::string).get<std::string>());
  fp.add("seq_len", T);
  fp.add("packing", described(description, "packing", json::value_t::string).get<std::string>());
  fp.add("seed", described(description, "seed", json::value_t::number_integer).dump());
  for (const json& source : described(description, "sources", json::value_t::array)) {
    if (!source.is_object()) throw DataError(kDescriptionWhere, "sources", "not an object");
    fp.add("source.sha256", described(source, "sha256", json::value_t::string).get<std::string>());
    fp.add("source.task", described(source, "task", json::value_t::string).get<std::string>());
    fp.add("source.samples",
           described(source, "samples", json::value_t::number_integer).get<int64_t>());
  }
  std::vector<uint8_t> bytes;
  for (size_t i = 0; i < N; ++i) {
    const int32_t t = set.task_of[i];
    if (t < 0 || static_cast<size_t>(t) >= set.tasks.size()) {
      throw DataError(kDescriptionWhere, "tasks", "sample " + std::to_string(i) + " has no task");
    }
    fp.add("sample.task", set.tasks[static_cast<size_t>(t)]);
    bytes.clear();
    append_u32(bytes, static_cast<uint32_t>(set.lengths[i]));
    fp.add_bytes("sample.length", bytes.data(), bytes.size());
    bytes.clear();
    for (int64_t k = 0; k < T; ++k) {
      append_u32(bytes, static_cast<uint32_t>(set.ids[i * static_cast<size_t>(T) + k]));
    }
    fp.add_bytes("sample.ids", bytes.data(), bytes.size());
  }
  return fp.finish();
}

std::vector<std::string> describe_calibration_change(const std::string& stored_json,
                                                     const std::string& current_json) {
  const json stored = json::parse(stored_json, nullptr, false);
  const json current = json::parse(current_json, nullptr, false);
  if (stored.is_discarded() || !stored.is_object()) {
    return {"the stored calibration description is not a JSON object"};
  }
  if (current.is_discarded() || !current.is_object()) {
    return {"the current calibration description is not a JSON object"};
  }
  std::vector<std::string> lines;
  for (const char* key : {"format", "version"}) {
    if (field_of(stored, key) != field_of(current, key)) {
      lines.push_back(std::string("description ") + key + ": " + shown(field_of(stored, key)) +
                      " → " + shown(field_of(current, key)));
    }
  }
  if (field_of(stored, "tokenizer") != field_of(current, "tokenizer")) {
    lines.push_back("tokenizer changed (" + short_fingerprint(field_of(stored, "tokenizer")) +
                    " → " + short_fingerprint(field_of(current, "tokenizer")) + ")");
  }
  for (const char* key : {"seq_len", "packing", "seed"}) {
    if (field_of(stored, key) != field_of(current, key)) {
      lines.push_back(std::string(key) + ": " + shown(field_of(stored, key)) + " → " +
                      shown(field_of(current, key)));
    }
  }
  compare_sources(field_of(stored, "sources"), field_of(current, "sources"), lines);
  if (lines.empty() && stored != current) {
    lines.push_back("same inputs but different samples (made by another lathe version?)");
  }
  return lines;
}

}  // namespace lathe
