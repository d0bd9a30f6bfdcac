// CalibrationSet: documents from text and JSONL files, exact token ids of packed and per-document
// samples with real tokenizers, a seeded choice pinned by golden values from an independent
// reference (SplitMix64 + Fisher–Yates, cross-checked with Python `tokenizers`), per-task
// independence, fingerprints that follow content but not paths, change descriptions, and every
// documented rejection with the file and field it names.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "calibrate/calibration_set.h"
#include "calibrate/tokenizer.h"
#include "compressor/common/errors.h"
#include "compressor/common/sha256.h"
#include "compressor/model/fingerprint.h"
#include "tests/unit/safetensors_builder.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::TempDir;
using Ids = std::vector<int32_t>;

const std::string kRepo = LATHE_SOURCE_DIR;

std::string model_dir(const std::string& name) {
  return kRepo + "/data/models/" + name;
}
std::string corpus(const std::string& name, const std::string& split) {
  return kRepo + "/data/corpora/" + name + "/" + split + ".txt";
}

const Tokenizer& llama() {  // byte-fallback BPE, adds BOS = 1
  static const Tokenizer tokenizer = Tokenizer::from_model_dir(model_dir("llama"));
  return tokenizer;
}
const Tokenizer& qwen2() {  // byte-level BPE, no BOS
  static const Tokenizer tokenizer = Tokenizer::from_model_dir(model_dir("qwen2"));
  return tokenizer;
}
const std::string& llama_fingerprint() {
  static const std::string fp = file_fingerprint(model_dir("llama") + "/tokenizer.json");
  return fp;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

CalibrationOptions make_options(std::vector<CalibrationSource> sources, int64_t seq_len,
                                int64_t samples, Packing packing = Packing::kPack,
                                uint64_t seed = 0) {
  CalibrationOptions options;
  options.sources = std::move(sources);
  options.seq_len = seq_len;
  options.samples = samples;
  options.packing = packing;
  options.seed = seed;
  return options;
}

CalibrationSet build(const CalibrationOptions& options, const Tokenizer& tokenizer = llama()) {
  return build_calibration_set(options, tokenizer, llama_fingerprint());
}

Ids row(const CalibrationSet& set, int64_t i) {
  const auto begin = set.ids.begin() + i * set.seq_len;
  return Ids(begin, begin + set.seq_len);
}

// Rows of task `t`, in order.
std::vector<Ids> rows_of(const CalibrationSet& set, int32_t t) {
  std::vector<Ids> rows;
  for (int64_t i = 0; i < set.num_samples(); ++i) {
    if (set.task_of[i] == t) rows.push_back(row(set, i));
  }
  return rows;
}

Ids padded(Ids ids, size_t length) {
  ids.resize(length, 0);
  return ids;
}

// Paragraphs of a text file, written independently of the implementation: lines (without '\n')
// grouped between blank lines, each paragraph the lines joined by "\n" plus "\n".
std::vector<std::string> paragraphs_of(const std::string& bytes) {
  std::vector<std::string> lines;
  std::stringstream in(bytes);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::vector<std::string> paragraphs;
  std::string current;
  for (const std::string& line : lines) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) {
      if (!current.empty()) paragraphs.push_back(current);
      current.clear();
    } else {
      current += line + "\n";
    }
  }
  if (!current.empty()) paragraphs.push_back(current);
  return paragraphs;
}

Ids stream_of(const Tokenizer& tokenizer, const std::vector<std::string>& documents) {
  Ids stream;
  for (const std::string& doc : documents) {
    const Ids ids = tokenizer.encode(doc, true);
    stream.insert(stream.end(), ids.begin(), ids.end());
  }
  return stream;
}

Ids window(const Ids& stream, int64_t w, int64_t T) {
  return Ids(stream.begin() + w * T, stream.begin() + (w + 1) * T);
}

// ---- an independent reference of the choice (calibration_set.h step 4) -------------------------

uint64_t reference_splitmix(uint64_t& state) {
  state += 0x9E3779B97F4A7C15ULL;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

std::vector<int64_t> reference_choice(int64_t m, int64_t n, uint64_t seed,
                                      const std::string& task) {
  std::string message = "lathe.calibration.sample/1";
  for (int i = 0; i < 8; ++i) message.push_back(static_cast<char>(seed >> (8 * i)));
  message += task;
  Sha256 sha;
  sha.update(message);
  const Sha256::Digest digest = sha.finish();
  uint64_t state = 0;
  for (int i = 7; i >= 0; --i) state = (state << 8) | digest[i];
  std::vector<int64_t> order(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) order[i] = i;
  for (int64_t i = 0; i < n; ++i) {
    const auto j =
        i + static_cast<int64_t>(reference_splitmix(state) % static_cast<uint64_t>(m - i));
    std::swap(order[i], order[j]);
  }
  std::vector<int64_t> chosen(order.begin(), order.begin() + n);
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

// Expects `action` to throw an Error of `kind` with exactly `where` and `field`, and a message
// holding `message_part`.
template <typename Action>
void expect_failure(Action&& action, ErrorKind kind, const std::string& where,
                    const std::string& field, const std::string& message_part) {
  try {
    action();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(kind_name(e.kind())), kind_name(kind)) << e.what();
    EXPECT_EQ(e.where(), where) << e.what();
    EXPECT_EQ(e.field(), field) << e.what();
    EXPECT_NE(e.message().find(message_part), std::string::npos)
        << "message lacks '" << message_part << "': " << e.what();
    return;
  }
  ADD_FAILURE() << "no lathe::Error thrown (expected " << where << ": " << field << ")";
}

const std::string kThreeParagraphs =
    "The cat sat.\n\nA dog ran far away.\nIt was late.\n\n\nEnd.\n";
// Python tokenizers 0.23 on data/models/llama/tokenizer.json, add_special_tokens=True.
const Ids kCat = {1, 677, 444, 422, 2311, 273, 13};
const Ids kDog = {1, 456, 747, 330, 3115, 2362, 1993, 273, 13, 3634, 585, 475, 561, 273, 13};
const Ids kEnd = {1, 4080, 273, 13};

// ---- the choice
// ----------------------------------------------------------------------------------

TEST(CalibrationSetChoice, ReferenceSplitMix64MatchesPublishedOutputs) {
  uint64_t state = 0;  // Vigna's splitmix64.c seeded with 0
  EXPECT_EQ(reference_splitmix(state), 0xE220A8397B1DCDAFULL);
  EXPECT_EQ(reference_splitmix(state), 0x6E789E6AA1B965F4ULL);
  EXPECT_EQ(reference_splitmix(state), 0x06C45D188009454FULL);
}

TEST(CalibrationSetChoice, ReferenceMatchesGoldenValues) {
  // Golden values from a separate Python implementation of calibration_set.h step 4.
  EXPECT_EQ(reference_choice(50, 6, 1234, "prose"), (std::vector<int64_t>{0, 7, 16, 20, 33, 48}));
  EXPECT_EQ(reference_choice(50, 6, 1234, "code"), (std::vector<int64_t>{1, 6, 11, 12, 26, 34}));
  EXPECT_EQ(reference_choice(1000, 8, 0, "math"),
            (std::vector<int64_t>{19, 169, 367, 720, 808, 821, 885, 932}));
  EXPECT_EQ(reference_choice(6, 3, 0, "prose"), (std::vector<int64_t>{3, 4, 5}));
  EXPECT_EQ(reference_choice(6, 3, 1, "prose"), (std::vector<int64_t>{1, 3, 5}));
  EXPECT_EQ(reference_choice(6, 3, 0, "code"), (std::vector<int64_t>{0, 3, 5}));
  EXPECT_EQ(reference_choice(6, 3, UINT64_MAX, "prose"), (std::vector<int64_t>{1, 2, 3}));
}

// ---- documents and packing ----------------------------------------------------------------------

TEST(CalibrationSet, PackedWindowsHaveExactIdsWithBosPerDocument) {
  TempDir dir;
  const std::string path = dir.write("small.txt", kThreeParagraphs);
  ASSERT_EQ(llama().encode("The cat sat.\n", true), kCat);
  ASSERT_EQ(llama().encode("A dog ran far away.\nIt was late.\n", true), kDog);
  ASSERT_EQ(llama().encode("End.\n", true), kEnd);

  // 7 + 15 + 4 = 26 tokens: six windows of 4, the last two tokens dropped; all six chosen.
  const CalibrationSet set = build(make_options({{path, "prose", std::nullopt}}, 4, 6));
  const Ids expected = {1,    677,  444, 422, 2311, 273, 13,  1,   456, 747, 330, 3115,
                        2362, 1993, 273, 13,  3634, 585, 475, 561, 273, 13,  1,   4080};
  EXPECT_EQ(set.ids, expected);
  EXPECT_EQ(set.seq_len, 4);
  EXPECT_EQ(set.tasks, std::vector<std::string>{"prose"});
  EXPECT_EQ(set.lengths, std::vector<int64_t>(6, 4));
  EXPECT_EQ(set.task_of, std::vector<int32_t>(6, 0));
  EXPECT_EQ(set.num_samples(), 6);
  EXPECT_EQ(set.tokens(), 24);
  EXPECT_EQ(set.tokens(0), 24);
  EXPECT_EQ(set.tokens(1), 0);
  // The same from the tokenizer itself: the stream is the documents' ids, BOS at each start.
  const Ids stream =
      stream_of(llama(), {"The cat sat.\n", "A dog ran far away.\nIt was late.\n", "End.\n"});
  EXPECT_EQ(set.ids, Ids(stream.begin(), stream.begin() + 24));
}

TEST(CalibrationSet, PackedChoiceFollowsTheSeed) {
  TempDir dir;
  const std::string path = dir.write("small.txt", kThreeParagraphs);
  const Ids stream =
      stream_of(llama(), {"The cat sat.\n", "A dog ran far away.\nIt was late.\n", "End.\n"});
  // Three of the six windows; golden choices {3,4,5} for seed 0, {1,3,5} for seed 1.
  const CalibrationSet seed0 = build(make_options({{path, "prose", 3}}, 4, 128));
  EXPECT_EQ(seed0.ids, (Ids{2362, 1993, 273, 13, 3634, 585, 475, 561, 273, 13, 1, 4080}));
  const CalibrationSet seed1 = build(make_options({{path, "prose", 3}}, 4, 128, Packing::kPack, 1));
  Ids expected;
  for (int64_t w : {1, 3, 5}) {
    const Ids ids = window(stream, w, 4);
    expected.insert(expected.end(), ids.begin(), ids.end());
  }
  EXPECT_EQ(seed1.ids, expected);
  // The same options give the same set.
  const CalibrationSet again = build(make_options({{path, "prose", 3}}, 4, 128, Packing::kPack, 1));
  EXPECT_EQ(again.ids, seed1.ids);
  EXPECT_EQ(again.fingerprint, seed1.fingerprint);
  EXPECT_EQ(again.description_json, seed1.description_json);
}

TEST(CalibrationSet, GoldenWindowsOfARealCorpus) {
  // data/corpora/prose/heldout.txt with the llama tokenizer: 275 paragraphs, 38165 tokens, so 596
  // windows of 64; seed 42 chooses windows 160, 205, 210, 368, 449 (Python tokenizers + a
  // separate Python implementation of the choice).
  const std::string path = corpus("prose", "heldout");
  const std::vector<std::string> paragraphs = paragraphs_of(read_bytes(path));
  ASSERT_EQ(paragraphs.size(), 275u);
  const Ids stream = stream_of(llama(), paragraphs);
  ASSERT_EQ(stream.size(), 38165u);
  const std::vector<int64_t> golden = {160, 205, 210, 368, 449};
  EXPECT_EQ(reference_choice(596, 5, 42, "prose"), golden);

  const CalibrationSet set =
      build(make_options({{path, "prose", std::nullopt}}, 64, 5, Packing::kPack, 42));
  ASSERT_EQ(set.num_samples(), 5);
  for (size_t k = 0; k < golden.size(); ++k) {
    EXPECT_EQ(row(set, static_cast<int64_t>(k)), window(stream, golden[k], 64)) << "sample " << k;
  }
  EXPECT_EQ(Ids(set.ids.begin(), set.ids.begin() + 6), (Ids{592, 1098, 707, 983, 2915, 472}));
  EXPECT_EQ(set.tokens(), 5 * 64);
}

TEST(CalibrationSet, ByteLevelTokenizerWithoutBosPacksTheSameWay) {
  // data/corpora/code/heldout.txt with qwen2: 434 paragraphs, 40406 tokens, 315 windows of 128;
  // seed 7 chooses 59, 126, 188, 199.
  const std::string path = corpus("code", "heldout");
  const Ids stream = stream_of(qwen2(), paragraphs_of(read_bytes(path)));
  ASSERT_EQ(stream.size(), 40406u);
  const CalibrationSet set =
      build(make_options({{path, "code", 4}}, 128, 99, Packing::kPack, 7), qwen2());
  const std::vector<int64_t> golden = {59, 126, 188, 199};
  EXPECT_EQ(reference_choice(315, 4, 7, "code"), golden);
  ASSERT_EQ(set.num_samples(), 4);
  for (size_t k = 0; k < golden.size(); ++k) {
    EXPECT_EQ(row(set, static_cast<int64_t>(k)), window(stream, golden[k], 128));
  }
  EXPECT_EQ(Ids(set.ids.begin(), set.ids.begin() + 6), (Ids{198, 279, 3873, 3350, 344, 292}));
}

TEST(CalibrationSet, ParagraphsSplitOnBlankLinesKeepingTheirBytes) {
  TempDir dir;
  // Leading blank lines, CRLF lines, a blank line of spaces/tabs/'\r', several blank lines and a
  // last paragraph without a newline.
  const std::string path = dir.write("crlf.txt",
                                     "\n \n"
                                     "a b\r\nc d\r\n \t\r\n\r\ne\n\n\n\nx");
  const CalibrationSet set =
      build(make_options({{path, "t", std::nullopt}}, 16, 3, Packing::kDocument), qwen2());
  // Python tokenizers on qwen2: "a b\r\nc d\r\n", "e\n", "x\n".
  ASSERT_EQ(set.num_samples(), 3);
  EXPECT_EQ(row(set, 0), padded({64, 275, 201, 198, 66, 270, 201, 198}, 16));
  EXPECT_EQ(row(set, 1), padded({68, 198}, 16));
  EXPECT_EQ(row(set, 2), padded({87, 198}, 16));
  EXPECT_EQ(set.lengths, (std::vector<int64_t>{8, 2, 2}));
  // Exactly three documents: a fourth sample cannot be had.
  expect_failure(
      [&] {
        build(make_options({{path, "t", std::nullopt}}, 16, 4, Packing::kDocument), qwen2());
      },
      ErrorKind::kData, path, "t", "3 documents");
}

TEST(CalibrationSet, DocumentModePadsAndTruncates) {
  TempDir dir;
  const std::string path = dir.write("small.txt", kThreeParagraphs);
  const CalibrationSet set =
      build(make_options({{path, "prose", std::nullopt}}, 8, 3, Packing::kDocument));
  ASSERT_EQ(set.num_samples(), 3);
  EXPECT_EQ(row(set, 0), (Ids{1, 677, 444, 422, 2311, 273, 13, 0}));       // 7 valid
  EXPECT_EQ(row(set, 1), (Ids{1, 456, 747, 330, 3115, 2362, 1993, 273}));  // first 8 of 15
  EXPECT_EQ(row(set, 2), (Ids{1, 4080, 273, 13, 0, 0, 0, 0}));             // 4 valid
  EXPECT_EQ(set.lengths, (std::vector<int64_t>{7, 8, 4}));
  EXPECT_EQ(set.tokens(), 19);

  // Two of three documents with seed 0 on task "prose": reference choice of (3, 2).
  const CalibrationSet two = build(make_options({{path, "prose", 2}}, 8, 3, Packing::kDocument));
  const std::vector<Ids> all = {row(set, 0), row(set, 1), row(set, 2)};
  const std::vector<int64_t> chosen = reference_choice(3, 2, 0, "prose");
  ASSERT_EQ(two.num_samples(), 2);
  EXPECT_EQ(row(two, 0), all[chosen[0]]);
  EXPECT_EQ(row(two, 1), all[chosen[1]]);
  EXPECT_EQ(two.lengths[0], set.lengths[chosen[0]]);
}

TEST(CalibrationSet, JsonlRecordsOverrideTheSourceTask) {
  TempDir dir;
  const std::string path =
      dir.write("mixed.JSONL",  // the extension is matched in any case
                "{\"text\": \"The cat sat.\\n\", \"id\": 7, \"meta\": {\"text\": 1}}\n"
                "{\"text\": \"End.\\n\", \"task\": \"code\"}\n"
                "   \r\n"
                "{\"text\": \"e\\n\"}\n"
                "{\"text\": \"\", \"task\": \"code\"}\n"
                "{\"task\": \"code\", \"text\": \"A dog ran far away.\\nIt was late.\\n\"}");
  const CalibrationSet set =
      build(make_options({{path, "prose", 2}}, 16, 5, Packing::kDocument), qwen2());
  EXPECT_EQ(set.tasks, (std::vector<std::string>{"prose", "code"}));
  EXPECT_EQ(set.task_of, (std::vector<int32_t>{0, 0, 1, 1}));
  EXPECT_EQ(row(set, 0), padded({928, 292, 269, 2102, 308}, 16));
  EXPECT_EQ(row(set, 1), padded({68, 198}, 16));
  EXPECT_EQ(row(set, 2), padded({36, 277, 308}, 16));
  EXPECT_EQ(row(set, 3),
            padded({32, 598, 70, 2834, 2087, 1789, 308, 2942, 434, 323, 409, 308}, 16));
  EXPECT_EQ(set.lengths, (std::vector<int64_t>{5, 2, 3, 12}));
  EXPECT_EQ(set.tokens(0), 7);
  EXPECT_EQ(set.tokens(1), 15);

  // A JSONL source without a default task: every record names its own; a text source may add
  // documents to a task the JSONL file named (same sample count).
  const std::string named = dir.write("named.jsonl",
                                      "{\"text\": \"x\", \"task\": \"b\"}\n"
                                      "{\"text\": \"e\\n\", \"task\": \"a\"}\n");
  const std::string extra = dir.write("extra.txt", "End.\n");
  const CalibrationSet both =
      build(make_options({{named, "", 1}, {extra, "b", 1}}, 4, 9, Packing::kDocument), qwen2());
  ASSERT_EQ(both.tasks, (std::vector<std::string>{"b", "a"}));
  const std::vector<Ids> b_documents = {padded({87}, 4), padded({36, 277, 308}, 4)};
  EXPECT_EQ(rows_of(both, 0), std::vector<Ids>{b_documents[reference_choice(2, 1, 0, "b")[0]]});
  EXPECT_EQ(rows_of(both, 1), std::vector<Ids>{padded({68, 198}, 4)});
  // Two samples each: "a" has a single document, and the error names its file and the task.
  expect_failure(
      [&] {
        build(make_options({{named, "", 2}, {extra, "b", 2}}, 4, 9, Packing::kDocument), qwen2());
      },
      ErrorKind::kData, named, "a", "task 'a' has 1 document, 2 samples needed");
}

TEST(CalibrationSet, AddingATaskLeavesOtherTasksSamplesAlone) {
  const std::string prose = corpus("prose", "heldout");
  const std::string code = corpus("code", "heldout");
  const CalibrationSet alone =
      build(make_options({{prose, "prose", std::nullopt}}, 64, 5, Packing::kPack, 42));
  // "code" first, so prose becomes task 1 and its rows move, but they stay the same rows.
  const CalibrationSet both = build(
      make_options({{code, "code", 3}, {prose, "prose", std::nullopt}}, 64, 5, Packing::kPack, 42));
  EXPECT_EQ(both.tasks, (std::vector<std::string>{"code", "prose"}));
  EXPECT_EQ(both.task_of, (std::vector<int32_t>{0, 0, 0, 1, 1, 1, 1, 1}));
  EXPECT_EQ(rows_of(both, 1), rows_of(alone, 0));
  EXPECT_EQ(both.tokens(1), alone.tokens());
  EXPECT_EQ(both.tokens(0), 3 * 64);
  EXPECT_NE(both.fingerprint, alone.fingerprint);
  // Another seed chooses other prose windows.
  const CalibrationSet other =
      build(make_options({{prose, "prose", std::nullopt}}, 64, 5, Packing::kPack, 43));
  EXPECT_NE(other.ids, alone.ids);
}

TEST(CalibrationSet, DescriptionIsCanonicalAndStoresPathsAsGiven) {
  TempDir dir;
  const std::string text = dir.write("small.txt", kThreeParagraphs);
  const std::string jsonl = dir.write("more.jsonl", "{\"text\": \"x y z\", \"task\": \"code\"}\n");
  const CalibrationSet set =
      build(make_options({{text, "prose", 2}, {jsonl, "", std::nullopt}}, 4, 1, Packing::kPack, 9));
  const json expected = {
      {"format", "lathe-calibration"},
      {"version", 1},
      {"tokenizer", llama_fingerprint()},
      {"seq_len", 4},
      {"packing", "pack"},
      {"seed", 9},
      {"sources",
       {{{"path", text}, {"task", "prose"}, {"samples", 2}, {"sha256", file_fingerprint(text)}},
        {{"path", jsonl}, {"task", ""}, {"samples", 1}, {"sha256", file_fingerprint(jsonl)}}}},
      {"tasks",
       {{{"name", "prose"}, {"samples", 2}, {"tokens", 8}},
        {{"name", "code"}, {"samples", 1}, {"tokens", 4}}}}};
  EXPECT_EQ(set.description_json, expected.dump());
  EXPECT_EQ(set.tasks, (std::vector<std::string>{"prose", "code"}));
  EXPECT_TRUE(is_fingerprint(set.fingerprint));
  EXPECT_EQ(calibration_fingerprint(set), set.fingerprint);
}

TEST(CalibrationSet, FingerprintFollowsContentOptionsAndSamplesButNotPaths) {
  TempDir dir;
  const std::string path = dir.write("small.txt", kThreeParagraphs);
  const std::string second = dir.write("second.txt", "x y z w v u t s r q p o n\n");
  const CalibrationOptions base =
      make_options({{path, "prose", std::nullopt}, {second, "other", 1}}, 4, 3);
  const CalibrationSet reference = build(base);
  std::vector<std::string> seen = {reference.fingerprint};
  auto expect_new = [&](const CalibrationSet& set, const std::string& what) {
    EXPECT_TRUE(std::find(seen.begin(), seen.end(), set.fingerprint) == seen.end()) << what;
    EXPECT_EQ(calibration_fingerprint(set), set.fingerprint) << what;
    seen.push_back(set.fingerprint);
  };
  CalibrationOptions options = base;
  options.seq_len = 5;
  expect_new(build(options), "seq_len");
  options = base;
  options.seed = 1;
  expect_new(build(options), "seed");
  options = base;
  options.samples = 2;
  expect_new(build(options), "samples");
  options = base;
  options.packing = Packing::kDocument;
  expect_new(build(options), "packing");
  expect_new(build_calibration_set(base, llama(),
                                   file_fingerprint(model_dir("qwen2") + "/tokenizer.json")),
             "tokenizer");
  options = base;
  std::swap(options.sources[0], options.sources[1]);
  expect_new(build(options), "source order");

  // One changed byte ("sat" → "sit"): a new fingerprint.
  const std::string changed = dir.write("changed.txt",
                                        "The cat sit.\n\nA dog ran far away.\n"
                                        "It was late.\n\n\nEnd.\n");
  options = base;
  options.sources[0].path = changed;
  expect_new(build(options), "one byte");

  // The same bytes under another path, even another directory: same fingerprint.
  TempDir elsewhere;
  const std::string copy = elsewhere.file("renamed-copy.txt");
  fs::copy_file(path, copy);
  options = base;
  options.sources[0].path = copy;
  const CalibrationSet moved = build(options);
  EXPECT_EQ(moved.fingerprint, reference.fingerprint);
  EXPECT_EQ(moved.ids, reference.ids);
  EXPECT_NE(moved.description_json, reference.description_json);  // the path is recorded

  // A changed byte the samples never see (past the first 2 tokens of each document) still
  // changes the fingerprint.
  const std::string cut = dir.write("cut.txt", "The cat sat.\n\nA dog ran far away.\n");
  const std::string cut_changed = dir.write("cut2.txt", "The cat sat!\n\nA dog ran far away!\n");
  const CalibrationSet before = build(make_options({{cut, "t", 2}}, 2, 2, Packing::kDocument));
  const CalibrationSet after =
      build(make_options({{cut_changed, "t", 2}}, 2, 2, Packing::kDocument));
  EXPECT_EQ(before.ids, after.ids);
  EXPECT_EQ(before.ids, (Ids{1, 677, 1, 456}));
  EXPECT_NE(before.fingerprint, after.fingerprint);

  // A tampered sample no longer matches the stored fingerprint.
  CalibrationSet tampered = reference;
  tampered.ids[0] += 1;
  EXPECT_NE(calibration_fingerprint(tampered), reference.fingerprint);
  tampered = reference;
  tampered.lengths[0] -= 1;
  EXPECT_NE(calibration_fingerprint(tampered), reference.fingerprint);
}

TEST(CalibrationSet, FingerprintIsTheDocumentedFingerprinterSequence) {
  TempDir dir;
  const std::string path = dir.write("small.txt", kThreeParagraphs);
  const CalibrationSet set = build(make_options({{path, "prose", 2}}, 4, 9, Packing::kPack, 5));
  Fingerprinter fp("lathe.calibration/1");
  fp.add("tokenizer", llama_fingerprint());
  fp.add("seq_len", int64_t{4});
  fp.add("packing", "pack");
  fp.add("seed", "5");
  fp.add("source.sha256", file_fingerprint(path));
  fp.add("source.task", "prose");
  fp.add("source.samples", int64_t{2});
  for (int64_t i = 0; i < 2; ++i) {
    fp.add("sample.task", "prose");
    const uint8_t length[4] = {4, 0, 0, 0};
    fp.add_bytes("sample.length", length, 4);
    std::vector<uint8_t> ids;
    for (int32_t id : row(set, i)) {
      for (int b = 0; b < 4; ++b)
        ids.push_back(static_cast<uint8_t>(static_cast<uint32_t>(id) >> (8 * b)));
    }
    fp.add_bytes("sample.ids", ids.data(), ids.size());
  }
  EXPECT_EQ(set.fingerprint, fp.finish());

  CalibrationSet broken = set;
  broken.description_json = "{\"seq_len\": 4";
  expect_failure([&] { calibration_fingerprint(broken); }, ErrorKind::kData,
                 "calibration description", "", "not valid JSON");
  broken.description_json = "{\"seq_len\": 4}";
  expect_failure([&] { calibration_fingerprint(broken); }, ErrorKind::kData,
                 "calibration description", "tokenizer", "missing");
}

TEST(CalibrationSet, DescribesWhatChanged) {
  TempDir dir;
  const std::string a = dir.write("a.txt", kThreeParagraphs);
  const std::string b = dir.write("b.txt", "x y z w v u t s r q p o n\n");
  const CalibrationSet stored = build(make_options({{a, "prose", 1}, {b, "other", 1}}, 4, 1));
  EXPECT_TRUE(
      describe_calibration_change(stored.description_json, stored.description_json).empty());

  auto short_fp = [](const std::string& fp) { return fp.substr(0, 15) + "…"; };
  const std::string a_before = file_fingerprint(a);
  dir.write("a.txt", "The cat sat.\n");
  CalibrationOptions options = make_options({{a, "prose", 1}, {b, "other", 1}}, 4, 1);
  EXPECT_EQ(describe_calibration_change(stored.description_json, build(options).description_json),
            std::vector<std::string>{a + ": content changed (" + short_fp(a_before) + " → " +
                                     short_fp(file_fingerprint(a)) + ")"});
  dir.write("a.txt", kThreeParagraphs);

  options.seq_len = 2;
  options.seed = 3;
  options.packing = Packing::kDocument;
  EXPECT_EQ(describe_calibration_change(
                stored.description_json,
                build_calibration_set(options, llama(), "sha256:x").description_json),
            (std::vector<std::string>{
                "tokenizer changed (" + short_fp(llama_fingerprint()) + " → sha256:x)",
                "seq_len: 4 → 2", "packing: pack → document", "seed: 0 → 3"}));

  // Removed, added, moved, retasked, resampled, reordered.
  const std::string c = dir.write("c.txt", "End.\n");
  TempDir elsewhere;
  const std::string b_moved = elsewhere.file("b-moved.txt");
  fs::copy_file(b, b_moved);
  options = make_options({{c, "code", 1}, {a, "prose", 2}}, 4, 1);
  EXPECT_EQ(describe_calibration_change(stored.description_json, build(options).description_json),
            (std::vector<std::string>{a + ": samples 1 → 2", "source removed: " + b,
                                      "source added: " + c}));
  options = make_options({{b_moved, "third", 1}, {a, "prose", 1}}, 4, 1);
  EXPECT_EQ(describe_calibration_change(stored.description_json, build(options).description_json),
            (std::vector<std::string>{b + " moved to " + b_moved + " (same content)",
                                      b_moved + ": task other → third", "source order changed"}));

  // Same inputs, different samples (another implementation); unreadable descriptions.
  json edited = json::parse(stored.description_json);
  edited["tasks"][0]["tokens"] = 5;
  EXPECT_EQ(describe_calibration_change(stored.description_json, edited.dump()),
            std::vector<std::string>{
                "same inputs but different samples (made by another lathe version?)"});
  EXPECT_EQ(describe_calibration_change("{", stored.description_json),
            std::vector<std::string>{"the stored calibration description is not a JSON object"});
  EXPECT_EQ(describe_calibration_change(stored.description_json, "[]"),
            std::vector<std::string>{"the current calibration description is not a JSON object"});
}

TEST(CalibrationSet, PackingNames) {
  EXPECT_STREQ(packing_name(Packing::kPack), "pack");
  EXPECT_STREQ(packing_name(Packing::kDocument), "document");
  EXPECT_EQ(parse_packing("pack"), Packing::kPack);
  EXPECT_EQ(parse_packing("document"), Packing::kDocument);
  expect_failure([] { parse_packing("Pack"); }, ErrorKind::kConfig, "calibration", "packing",
                 "unknown packing 'Pack'");
}

// ---- rejections
// ------------------------------------------------------------------------------------

TEST(CalibrationSetErrors, Options) {
  TempDir dir;
  const std::string path = dir.write("small.txt", kThreeParagraphs);
  const std::vector<CalibrationSource> one = {{path, "prose", std::nullopt}};
  expect_failure([&] { build(make_options(one, 0, 1)); }, ErrorKind::kConfig, "calibration",
                 "seq_len", "got 0");
  expect_failure([&] { build(make_options(one, 4, -1)); }, ErrorKind::kConfig, "calibration",
                 "samples", "got -1");
  expect_failure([&] { build(make_options({}, 4, 1)); }, ErrorKind::kConfig, "calibration",
                 "sources", "no calibration sources");
  expect_failure(
      [&] {
        build(make_options({{path, "prose", 0}}, 4, 1));
      },
      ErrorKind::kConfig, path, "samples", "got 0");
  expect_failure(
      [&] {
        build(make_options({{path, "", std::nullopt}}, 4, 1));
      },
      ErrorKind::kConfig, path, "task", "a text source needs a task label");
  for (const std::string& label :
       {std::string("a/b"), std::string("."), std::string(".."), std::string("x\0y", 3)}) {
    expect_failure(
        [&] {
          build(make_options({{path, label, std::nullopt}}, 4, 1));
        },
        ErrorKind::kConfig, path, "task", "not a valid statistics name");
  }
  expect_failure(
      [&] {
        build(make_options({{path, "all", std::nullopt}}, 4, 1));
      },
      ErrorKind::kConfig, path, "task", "reserved");
  // Two sources of one task with different counts (a missing count is the default).
  const std::string other = dir.write("other.txt", "End.\n");
  expect_failure(
      [&] {
        build(make_options({{path, "prose", 2}, {other, "prose", std::nullopt}}, 4, 1));
      },
      ErrorKind::kConfig, other, "samples",
      "task 'prose' gets 1 samples from this source but 2 from " + path);
}

TEST(CalibrationSetErrors, UnreadableSources) {
  TempDir dir;
  const std::string missing = dir.file("missing.txt");
  expect_failure(
      [&] {
        build(make_options({{missing, "prose", std::nullopt}}, 4, 1));
      },
      ErrorKind::kResource, missing, "", "cannot open");
  expect_failure(
      [&] {
        build(make_options({{dir.path(), "prose", std::nullopt}}, 4, 1));
      },
      ErrorKind::kResource, dir.path(), "", "is a directory");
}

TEST(CalibrationSetErrors, InvalidUtf8NamesTheByte) {
  TempDir dir;
  const std::string text = dir.write("bad.txt", std::string("ok line\n\nbad \xC3\x28 here\n"));
  expect_failure(
      [&] {
        build(make_options({{text, "prose", std::nullopt}}, 4, 1));
      },
      ErrorKind::kData, text, "byte 13", "line 3");
  const std::string jsonl =
      dir.write("bad.jsonl", std::string("{\"text\": \"a\"}\n{\"text\": \"\xED\xA0\x80\"}\n"));
  expect_failure(
      [&] {
        build(make_options({{jsonl, "prose", std::nullopt}}, 4, 1));
      },
      ErrorKind::kData, jsonl, "byte 24", "line 2");
}

TEST(CalibrationSetErrors, MalformedJsonlLines) {
  TempDir dir;
  struct Case {
    std::string line2;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"{\"text\": ", "not valid JSON"},
      {"[\"text\"]", "expected a JSON object, found array"},
      {"\"just text\"", "expected a JSON object, found string"},
      {"{\"body\": \"x\"}", "expected a string `text`, found none"},
      {"{\"text\": 5}", "expected a string `text`, found number"},
      {"{\"text\": null}", "expected a string `text`, found null"},
      {"{\"text\": \"x\", \"task\": 3}", "`task` must be a string, found number"},
      {"{\"text\": \"x\", \"task\": null}", "`task` must be a string, found null"},
      {"{\"text\": \"x\", \"text\": \"y\"}", "duplicate key 'text'"},
      {"{\"text\": \"x\", \"task\": \"all\"}", "reserved"},
      {"{\"text\": \"x\", \"task\": \"a/b\"}", "not a valid statistics name"},
      {"{\"text\": \"x\", \"task\": \"\"}", "must not be empty"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.line2);
    const std::string path = dir.write("bad.jsonl", "{\"text\": \"fine\"}\n" + c.line2 + "\n");
    expect_failure(
        [&] {
          build(make_options({{path, "prose", std::nullopt}}, 1, 1));
        },
        ErrorKind::kData, path, "line 2", c.message);
  }
  // Blank lines count: the record without a task is on line 3.
  const std::string untasked =
      dir.write("untasked.jsonl", "{\"text\": \"a\", \"task\": \"t\"}\n\n{\"text\": \"b\"}\n");
  expect_failure(
      [&] {
        build(make_options({{untasked, "", std::nullopt}}, 1, 1));
      },
      ErrorKind::kData, untasked, "line 3", "no `task`");
  const std::string empty = dir.write("empty.jsonl", "\n  \n");
  expect_failure(
      [&] {
        build(make_options({{empty, "prose", std::nullopt}}, 1, 1));
      },
      ErrorKind::kData, empty, "", "no records");
}

TEST(CalibrationSetErrors, TooFewCandidates) {
  TempDir dir;
  const std::string path = dir.write("small.txt", kThreeParagraphs);
  // 26 tokens: 3 windows of 8.
  expect_failure(
      [&] {
        build(make_options({{path, "prose", std::nullopt}}, 8, 4));
      },
      ErrorKind::kData, path, "prose",
      "task 'prose' has 3 windows of 8 tokens (26 tokens in all), 4 samples needed");
  const std::string more = dir.write("more.txt", "End.\n");
  expect_failure(
      [&] {
        build(make_options({{path, "prose", 5}, {more, "prose", 5}}, 8, 1, Packing::kDocument));
      },
      ErrorKind::kData, path + ", " + more, "prose",
      "task 'prose' has 4 documents, 5 samples needed");
  // An empty text file still names its task, which then has nothing.
  const std::string blank = dir.write("blank.txt", "\n \n");
  expect_failure(
      [&] {
        build(make_options({{blank, "empty", std::nullopt}}, 8, 1));
      },
      ErrorKind::kData, blank, "empty", "0 windows");
  // A JSONL record with empty text names its task but is no document.
  const std::string hollow = dir.write("hollow.jsonl", "{\"text\": \"\", \"task\": \"t\"}\n");
  expect_failure(
      [&] {
        build(make_options({{hollow, "", std::nullopt}}, 8, 1, Packing::kDocument));
      },
      ErrorKind::kData, hollow, "t", "0 documents");
}

}  // namespace
}  // namespace lathe
