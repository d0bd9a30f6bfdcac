// CalibrationSet: the token batches every observe stage runs on (DESIGN.md "Core types"; issue 4
// item 1). Text and JSONL sources, each document labelled with a task; a fixed number of samples
// per task; packed windows or one document per sample; a seeded, machine-independent choice of
// samples; and a fingerprint of everything the batches were made from. Torch-free.
//
// How samples are made (docs/calibrate.md has the user-facing version):
//   1. Documents. A plain-text source (any extension but .jsonl, in any case) is one document per
//      paragraph: runs of lines separated by one or more blank lines (a line holding only spaces,
//      tabs or '\r' is blank); the paragraph's text is its lines' bytes exactly as in the file
//      (inner newlines and any '\r' kept) plus one trailing "\n". A .jsonl source is one document
//      per non-blank line: an object with a string `text` and an optional string `task`
//      (overriding the source's task label); other keys are ignored, duplicate keys are refused.
//   2. Tokens. Every document is encoded on its own with add_special_tokens = true (Llama-style
//      tokenizers add BOS per document, as in pre-training). Documents with empty text are dropped
//      (their task still counts as named).
//   3. Per task (tasks in order of first appearance over sources, then documents: a text source
//      names its task even when it holds no document), with `n` the task's sample count and
//      `T` = seq_len:
//      - packing = kPack: the task's documents are concatenated in source/file order into one
//        stream, cut into floor(len / T) non-overlapping windows of exactly T tokens (a partial
//        tail is dropped); n distinct windows are chosen (see 4) and kept in ascending window
//        order. Every token of a packed sample is valid.
//      - packing = kDocument: each document is a candidate sample, truncated to its first T
//        tokens; n distinct documents are chosen and kept in ascending document order. A sample
//        shorter than T is right-padded with pad id 0 and marked invalid there (lengths[i] < T).
//      Samples are grouped by task in `tasks` order. Too few candidates is a DataError naming the
//      task, the candidates found and n.
//   4. Choice. A partial Fisher–Yates shuffle of the candidate indices 0..m-1 driven by SplitMix64
//      (Steele et al. 2014; the constants of Vigna's splitmix64.c) seeded with
//      SHA-256("lathe.calibration.sample/1" ‖ seed as u64 LE ‖ task UTF-8), first 8 bytes
//      little-endian; for i = 0..n-1, j ∈ [i, m) is drawn as i + (next() mod (m − i)) and
//      positions i and j are swapped; the first n entries are the choice. Nothing depends on the
//      C++ library's distributions, so every machine gets the same samples. Adding or removing
//      another task never changes a task's samples (the modulo bias, < m / 2^64, is accepted).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lathe {

class Tokenizer;

/// One calibration file.
struct CalibrationSource {
  std::string path;  ///< a text file, or a .jsonl file
  /// Task label of its documents: required for text; for JSONL the default of records without
  /// `task` (empty: every record must name its task).
  std::string task;
  /// Samples for this source's task(s); default: CalibrationOptions::samples.
  std::optional<int64_t> samples;
};

enum class Packing { kPack, kDocument };

/// "pack" / "document".
const char* packing_name(Packing packing);
/// Parses "pack" / "document"; ConfigError(where = "calibration", field = "packing") otherwise.
Packing parse_packing(const std::string& text);

struct CalibrationOptions {
  std::vector<CalibrationSource> sources;
  int64_t seq_len = 2048;  ///< tokens per sample (ALGORITHMS.md §0 default)
  int64_t samples = 128;   ///< samples per task unless a source says otherwise
  Packing packing = Packing::kPack;
  uint64_t seed = 0;
};

/// The token batches: N samples × T tokens, each with a task.
struct CalibrationSet {
  std::vector<std::string> tasks;  ///< task labels, in order of first appearance
  int64_t seq_len = 0;             ///< T
  std::vector<int32_t> ids;        ///< [N × T] row-major; padding positions hold 0
  std::vector<int64_t> lengths;    ///< [N] valid tokens of each sample (a prefix; T when packed)
  std::vector<int32_t> task_of;    ///< [N] index into `tasks`
  /// FORMATS.md §7 calibration fingerprint (see calibration_fingerprint below).
  std::string fingerprint;
  /// Canonical description (nlohmann dump, keys sorted, no whitespace):
  /// {"format":"lathe-calibration","version":1,"tokenizer": fp, "seq_len", "packing", "seed",
  /// "sources":[{"path","task","samples","sha256"}], "tasks":[{"name","samples","tokens"}]}, where
  /// a source's "path" is stored as given, "samples" is its count (its own or the default) and
  /// "sha256" is the fingerprint of its bytes (as file_fingerprint); a task's "tokens" is the valid
  /// tokens of its samples. Stored with the statistics so a later refusal can name the input that
  /// changed (describe_calibration_change).
  std::string description_json;

  int64_t num_samples() const { return static_cast<int64_t>(lengths.size()); }
  /// Valid tokens of task `t` (index into `tasks`), or of every task when t < 0.
  int64_t tokens(int32_t t = -1) const;
};

/// Why `label` cannot name a calibration task (it becomes a statistics name part,
/// calibrate/stats_store.h): empty, holding '/' or NUL, "." or "..", or the reserved "all".
/// Empty when it can. Recipes and pipeline strings add their own character rules on top.
std::string task_label_problem(const std::string& label);

/// The checks of build_calibration_set that read no file (the ConfigErrors below), so that a
/// command can refuse bad options before it opens anything.
void check_calibration_options(const CalibrationOptions& options);

/// Builds the set. `tokenizer_fingerprint` is file_fingerprint(tokenizer.json). Each source file is
/// read whole into memory once. Errors, all naming the file (where; "calibration" for options that
/// belong to no file) and what was expected:
///   ConfigError  seq_len ≤ 0 or samples ≤ 0 (field = "seq_len" / "samples"), no sources
///                (field = "sources"), a text source without task (field = "task"), a source's
///                task label that is empty or not a valid statistics name (no '/', not "." / "..",
///                no NUL, not "all"; field = "task"), a source's samples ≤ 0 (field = "samples"),
///                two sources giving different sample counts for one task (where = the later
///                source, field = "samples"; a source without samples gives the default);
///   ResourceError a source that cannot be opened or read;
///   DataError    invalid UTF-8 (field = "byte N", the offset in the file), a JSONL line that is
///                not a JSON object (or holds a key twice), lacks a string `text`, has a
///                non-string `task` (null included) or an invalid task label, or has no task at all
///                (field = "line N", 1-based), a .jsonl source without any record (field empty),
///                a task with too few candidates (where = the task's sources joined by ", ",
///                field = the task).
CalibrationSet build_calibration_set(const CalibrationOptions& options, const Tokenizer& tokenizer,
                                     const std::string& tokenizer_fingerprint);

/// FORMATS.md §7 calibration fingerprint of `set`, recomputed from set.description_json and its
/// samples (build_calibration_set stores it in set.fingerprint). A Fingerprinter
/// ("lathe.calibration/1") over: tokenizer fingerprint, seq_len, packing name, seed (decimal
/// text), then per source in order its content fingerprint ("sha256"), task and sample count, then
/// per sample its task name, length (u32 LE) and its T token ids (u32 LE). Paths are not hashed:
/// moving or copying a file leaves the fingerprint alone, while one changed byte of any source,
/// any changed option, another tokenizer or another order of sources changes it, even where the
/// sampled tokens happen to stay the same. Throws DataError (where = "calibration description")
/// when description_json is not such a description.
std::string calibration_fingerprint(const CalibrationSet& set);

/// Given the stored and the current description_json, one short line per input that differs, e.g.
/// "data/code.txt: content changed (sha256:ab12cd34… → sha256:cd56ef78…)", "seq_len: 2048 → 1024",
/// "tokenizer changed (…)", "source removed: x.txt", "source added: y.txt",
/// "x.txt moved to y.txt (same content)", "x.txt: task a → b", "x.txt: samples 128 → 64",
/// "source order changed". Sources are matched by path, then by content. When the inputs agree but
/// the descriptions do not (samples chosen differently), one line says so. Empty when they are
/// equal. A description that is not JSON gives one line saying which one.
std::vector<std::string> describe_calibration_change(const std::string& stored_json,
                                                     const std::string& current_json);

}  // namespace lathe
