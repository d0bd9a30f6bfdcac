#include "calibrate/tokenizer/regex.h"

#include <oniguruma.h>

#include <limits>
#include <mutex>

#include "calibrate/tokenizer/unicode.h"
#include "compressor/common/errors.h"

namespace lathe::tok {

/// One pattern compiled by onig_new. Searching only reads the regex_t, so one instance serves every
/// thread (each search has its own OnigRegion).
struct CompiledRegex {
  std::string pattern;
  OnigRegex regex = nullptr;

  CompiledRegex() = default;
  CompiledRegex(const CompiledRegex&) = delete;
  CompiledRegex& operator=(const CompiledRegex&) = delete;
  ~CompiledRegex() {
    if (regex != nullptr) onig_free(regex);
  }
};

namespace {

std::string onig_message(int code, OnigErrorInfo* info) {
  OnigUChar text[ONIG_MAX_ERROR_MESSAGE_LEN];
  const int length = info != nullptr ? onig_error_code_to_str(text, code, info)
                                     : onig_error_code_to_str(text, code);
  return std::string(reinterpret_cast<const char*>(text), static_cast<size_t>(length));
}

// onig_initialize and onig_new share global state (the encoding's tables, initialised on first
// use), so they run under one lock, as the `onig` crate does; onig_search needs none.
std::mutex& onig_compile_mutex() {
  static std::mutex mutex;
  return mutex;
}

void initialize_onig_locked() {
  static bool initialized = false;
  if (initialized) return;
  OnigEncoding encodings[] = {ONIG_ENCODING_UTF8};
  const int code = onig_initialize(encodings, 1);
  if (code != ONIG_NORMAL) {
    throw InternalError("regex", "", "onig_initialize failed: " + onig_message(code, nullptr));
  }
  initialized = true;
}

[[noreturn]] void throw_compile_error(int code, OnigErrorInfo& info, std::string_view pattern,
                                      const std::string& where, const std::string& field) {
  const std::string message = "regex '" + std::string(pattern) + "': " + onig_message(code, &info);
  if (code == ONIGERR_MEMORY) throw ResourceError(where, field, message);
  // Oniguruma's syntax and value errors are -100 and below; inefficient patterns and the parse
  // depth limit are valid patterns beyond its limits.
  if (code <= ONIGERR_END_PATTERN_AT_LEFT_BRACE && code != ONIGERR_VERY_INEFFICIENT_PATTERN) {
    throw DataError(where, field, message + " (Oniguruma syntax, as tokenizers uses)");
  }
  throw UnsupportedError(where, field, message);
}

[[noreturn]] void throw_search_error(int code, const std::string& pattern) {
  const std::string message = "Oniguruma search failed: " + onig_message(code, nullptr);
  if (code == ONIGERR_MEMORY) throw ResourceError("regex", pattern, message);
  throw UnsupportedError("regex", pattern, message);
}

// Oniguruma before 6.9.9 gives [[:punct:]] as \p{P}; later versions, the one bundled by tokenizers
// among them, as \p{P} + \p{S}. Such a pattern would split text differently from tokenizers
// without a word, so it is refused.
void refuse_old_posix_punct(std::string_view pattern, const std::string& where,
                            const std::string& field) {
  if (ONIGURUMA_VERSION_INT >= 60909) return;
  for (std::string_view bracket : {"[:punct:]", "[:^punct:]"}) {
    if (pattern.find(bracket) == std::string_view::npos) continue;
    throw UnsupportedError(where, field,
                           "regex '" + std::string(pattern) + "': " + std::string(bracket) +
                               " means \\p{P} in Oniguruma " + onig_version() +
                               " but \\p{P} and \\p{S} in the Oniguruma 6.9.9+ of tokenizers;" +
                               " write [\\p{P}\\p{S}] or \\p{P} instead");
  }
}

struct RegionDeleter {
  void operator()(OnigRegion* region) const { onig_region_free(region, 1); }
};

}  // namespace

Regex Regex::compile(std::string_view pattern, const std::string& where, const std::string& field) {
  refuse_old_posix_punct(pattern, where, field);
  auto compiled = std::make_shared<CompiledRegex>();
  compiled->pattern = std::string(pattern);
  const auto* begin = reinterpret_cast<const OnigUChar*>(compiled->pattern.data());
  OnigErrorInfo info{};
  int code;
  {
    std::lock_guard<std::mutex> lock(onig_compile_mutex());
    initialize_onig_locked();
    code = onig_new(&compiled->regex, begin, begin + compiled->pattern.size(), ONIG_OPTION_NONE,
                    ONIG_ENCODING_UTF8, ONIG_SYNTAX_ONIGURUMA, &info);
  }
  if (code != ONIG_NORMAL) {
    compiled->regex = nullptr;  // onig_new frees what it allocated on failure
    throw_compile_error(code, info, pattern, where, field);
  }
  Regex regex;
  regex.compiled_ = std::move(compiled);
  return regex;
}

const std::string& Regex::pattern() const {
  return compiled_->pattern;
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  // Oniguruma reports positions as int.
  if (text.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    throw ResourceError("regex", compiled_->pattern, "text of 2 GiB or more");
  }
  static const char kEmpty = '\0';
  const auto* begin = reinterpret_cast<const OnigUChar*>(text.empty() ? &kEmpty : text.data());
  const OnigUChar* end = begin + text.size();
  std::unique_ptr<OnigRegion, RegionDeleter> region(onig_region_new());
  if (!region) throw ResourceError("regex", compiled_->pattern, "out of memory");

  std::vector<std::pair<size_t, size_t>> matches;
  size_t search_from = 0;
  bool matched = false;
  size_t last_end = 0;  // end of the last reported match, when `matched`
  while (search_from <= text.size()) {
    const int found = onig_search(compiled_->regex, begin, end, begin + search_from, end,
                                  region.get(), ONIG_OPTION_NONE);
    if (found == ONIG_MISMATCH) break;
    if (found < 0) throw_search_error(found, compiled_->pattern);
    const auto start = static_cast<size_t>(region->beg[0]);
    const auto stop = static_cast<size_t>(region->end[0]);
    if (start == stop && matched && stop == last_end) {
      // An empty match right after the previous match: move on by one code point.
      search_from += search_from < text.size()
                         ? unicode::utf8_length(static_cast<unsigned char>(text[search_from]))
                         : 1;
      continue;
    }
    matches.push_back({start, stop});
    search_from = stop;
    last_end = stop;
    matched = true;
  }
  return matches;
}

}  // namespace lathe::tok
