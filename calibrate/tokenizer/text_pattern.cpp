#include "calibrate/tokenizer/text_pattern.h"

namespace lathe::tok {

TextPattern TextPattern::parse(const JsonReader& json) {
  const bool is_string = json.has("String"), is_regex = json.has("Regex");
  if (is_string == is_regex) json.fail("expected {\"String\": ...} or {\"Regex\": ...}");
  if (is_string) return literal(json.string_at("String"));
  TextPattern pattern;
  const JsonReader regex = json.at("Regex");
  pattern.regex_ = Regex::compile(regex.as_string(), json.file(), regex.path());
  return pattern;
}

TextPattern TextPattern::literal(std::string text) {
  TextPattern pattern;
  // An empty literal matches between every two code points in Oniguruma; let the engine do that.
  if (text.empty()) pattern.regex_ = Regex::compile("");
  pattern.literal_ = std::move(text);
  return pattern;
}

std::vector<std::pair<size_t, size_t>> TextPattern::find_all(std::string_view text) const {
  if (regex_) return regex_->find_all(text);
  std::vector<std::pair<size_t, size_t>> matches;
  size_t pos = 0;
  while ((pos = text.find(literal_, pos)) != std::string_view::npos) {
    matches.push_back({pos, pos + literal_.size()});
    pos += literal_.size();
  }
  return matches;
}

std::string replace_all(std::string_view text, const TextPattern& pattern,
                        const std::string& content) {
  const auto matches = pattern.find_all(text);
  if (matches.empty()) return std::string(text);
  std::string out;
  out.reserve(text.size() + matches.size() * content.size());
  size_t last = 0;
  for (auto [start, end] : matches) {
    out.append(text.data() + last, start - last);
    out.append(content);
    last = end;
  }
  out.append(text.data() + last, text.size() - last);
  return out;
}

}  // namespace lathe::tok
