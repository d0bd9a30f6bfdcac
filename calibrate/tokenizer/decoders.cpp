#include "calibrate/tokenizer/decoders.h"

#include "calibrate/tokenizer/byte_level.h"
#include "calibrate/tokenizer/text_pattern.h"
#include "calibrate/tokenizer/unicode.h"

namespace lathe::tok {
namespace {

std::vector<char32_t> code_points(const std::string& s) {
  std::vector<char32_t> out;
  for (size_t i = 0; i < s.size();) out.push_back(unicode::next_code_point(s, i));
  return out;
}

// Maps every token back to bytes (a token with a character outside the table keeps its UTF-8
// bytes) and returns one token: the bytes as UTF-8, ill-formed parts replaced by U+FFFD.
class ByteLevel : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& token : tokens) {
      const size_t mark = bytes.size();
      bool all_mapped = true;
      for (size_t i = 0; i < token.size() && all_mapped;) {
        const int b = byte_level_byte(unicode::next_code_point(token, i));
        if (b < 0) {
          all_mapped = false;
        } else {
          bytes.push_back(static_cast<char>(b));
        }
      }
      if (!all_mapped) {
        bytes.resize(mark);
        bytes.append(token);
      }
    }
    tokens.assign(1, unicode::from_utf8_lossy(bytes));
  }
};

// <0xNN> tokens: runs of them become their bytes when those are valid UTF-8, else one U+FFFD per
// byte.
class ByteFallback : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (unicode::find_invalid_utf8(pending) == std::string::npos) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.push_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& token : tokens) {
      int byte = -1;
      if (token.size() == 6 && token.compare(0, 3, "<0x") == 0 && token[5] == '>') {
        byte = parse_hex_byte(token.substr(3, 2));
      }
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    tokens = std::move(out);
  }

 private:
  // Rust's u8::from_str_radix(s, 16) for a two-character s: an optional '+' then hex digits.
  static int parse_hex_byte(const std::string& s) {
    const size_t start = s[0] == '+' ? 1 : 0;
    int value = 0;
    for (size_t i = start; i < s.size(); ++i) {
      const char c = s[i];
      int digit;
      if (c >= '0' && c <= '9') {
        digit = c - '0';
      } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') {
        digit = (c | 0x20) - 'a' + 10;
      } else {
        return -1;
      }
      value = value * 16 + digit;
    }
    return start == s.size() ? -1 : value;
  }
};

class Fuse : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string joined;
    for (const std::string& t : tokens) joined += t;
    tokens.assign(1, std::move(joined));
  }
};

// Removes up to `start` leading and `stop` trailing occurrences of one character per token.
class Strip : public Decoder {
 public:
  Strip(char32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) {
      const std::vector<char32_t> chars = code_points(token);
      size_t begin = 0;
      while (begin < start_ && begin < chars.size() && chars[begin] == content_) ++begin;
      size_t end = chars.size();
      for (size_t i = 0; i < stop_ && end > begin && chars[end - 1] == content_; ++i) --end;
      std::string out;
      for (size_t i = begin; i < end; ++i) unicode::append_utf8(out, chars[i]);
      token = std::move(out);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class Replace : public Decoder {
 public:
  Replace(TextPattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) token = replace_all(token, pattern_, content_);
  }

 private:
  TextPattern pattern_;
  std::string content_;
};

// The replacement character becomes a space, except in the first token when a prefix was
// prepended (tokenizers drops every replacement character of that token).
class Metaspace : public Decoder {
 public:
  Metaspace(char32_t replacement, bool drop_in_first)
      : replacement_(replacement), drop_in_first_(drop_in_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t t = 0; t < tokens.size(); ++t) {
      std::string out;
      const std::string& token = tokens[t];
      for (size_t i = 0; i < token.size();) {
        const size_t start = i;
        const char32_t cp = unicode::next_code_point(token, i);
        if (cp != replacement_) {
          out.append(token, start, i - start);
        } else if (!(t == 0 && drop_in_first_)) {
          out.push_back(' ');
        }
      }
      tokens[t] = std::move(out);
    }
  }

 private:
  char32_t replacement_;
  bool drop_in_first_;
};

class Sequence : public Decoder {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& step : steps_) step->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

char32_t single_char(const JsonReader& json) {
  const std::string s = json.as_char();
  size_t i = 0;
  return unicode::next_code_point(s, i);
}

std::unique_ptr<Decoder> parse_metaspace(const JsonReader& json) {
  bool prepends = json.bool_or("add_prefix_space", true);
  if (auto scheme = json.find("prepend_scheme")) {
    const std::string name = scheme->as_string();
    if (name != "always" && name != "first" && name != "never") {
      scheme->fail("unknown prepend_scheme '" + name + "' (expected always, first or never)");
    }
    prepends = name != "never";
  }
  return std::make_unique<Metaspace>(single_char(json.at("replacement")), prepends);
}

}  // namespace

std::unique_ptr<Decoder> parse_decoder(const JsonReader& json) {
  const std::string type = json.type();
  if (type == "ByteLevel") return std::make_unique<ByteLevel>();
  if (type == "ByteFallback") return std::make_unique<ByteFallback>();
  if (type == "Fuse") return std::make_unique<Fuse>();
  if (type == "Strip") {
    const int64_t start = json.at("start").as_int(), stop = json.at("stop").as_int();
    if (start < 0 || stop < 0) json.fail("start and stop must not be negative");
    return std::make_unique<Strip>(single_char(json.at("content")), static_cast<size_t>(start),
                                   static_cast<size_t>(stop));
  }
  if (type == "Replace") {
    return std::make_unique<Replace>(TextPattern::parse(json.at("pattern")),
                                     json.string_at("content"));
  }
  if (type == "Metaspace") return parse_metaspace(json);
  if (type == "Sequence") {
    const JsonReader list = json.at("decoders");
    std::vector<std::unique_ptr<Decoder>> steps;
    for (size_t i = 0; i < list.array_size(); ++i) steps.push_back(parse_decoder(list.element(i)));
    return std::make_unique<Sequence>(std::move(steps));
  }
  json.at("type").unsupported("decoder type '" + type +
                              "' is not supported (lathe implements ByteLevel, ByteFallback, Fuse, "
                              "Strip, Replace, Metaspace, Sequence)");
}

}  // namespace lathe::tok
