#include "calibrate/tokenizer/regex.h"

#include <limits>

#include "calibrate/tokenizer/regex_program.h"
#include "calibrate/tokenizer/unicode.h"
#include "compressor/common/errors.h"

namespace lathe::tok {
namespace {

// Backtracking budget of one match attempt, like Oniguruma's retry limit: a pathological pattern
// in an untrusted tokenizer.json must fail, not hang.
constexpr uint64_t kMaxBacktracks = 10'000'000;

// Backtracking matcher over a decoded subject. Choice points live on an explicit stack; runs of a
// single set (\p{L}+) keep one stack entry however long they are.
class Matcher {
 public:
  Matcher(const RegexProgram& program, const std::vector<char32_t>& cps)
      : program_(program), code_(program.code), cps_(cps), n_(static_cast<uint32_t>(cps.size())) {}

  // Runs the (sub-)program at `pc` anchored at `pos`; on success stores the end in `end`.
  bool run(int32_t pc, uint32_t pos, uint32_t& end) {
    if (stack_.empty()) backtracks_ = 0;  // a new attempt (not a lookaround inside one)
    const size_t base = stack_.size();
    for (;;) {
      if (step(pc, pos)) {
        if (code_[static_cast<size_t>(pc)].op == Op::kMatch) {
          end = pos;
          stack_.resize(base);
          return true;
        }
        continue;
      }
      if (!backtrack(base, pc, pos)) return false;
    }
  }

 private:
  enum class Kind : uint8_t { kAlternative, kGreedyRun, kLazyRun };
  struct Choice {
    int32_t pc;
    uint32_t pos;    // kAlternative: where to resume; runs: where the run started
    uint32_t count;  // runs: next count to try
    uint32_t limit;  // kGreedyRun: the minimum count; kLazyRun: the maximum
    int32_t set;
    Kind kind;
  };

  bool in_set(int32_t set, uint32_t pos) const {
    return pos < n_ && program_.sets[static_cast<size_t>(set)].matches(cps_[pos]);
  }

  // Executes the instruction at pc. Returns false on failure; on success pc/pos are advanced
  // (a kMatch leaves pc on itself).
  bool step(int32_t& pc, uint32_t& pos) {
    const Inst& in = code_[static_cast<size_t>(pc)];
    switch (in.op) {
      case Op::kSet:
        if (!in_set(in.a, pos)) return false;
        ++pos;
        ++pc;
        return true;
      case Op::kRun: return step_run(in, pc, pos);
      case Op::kSplit:
        if (in.guard >= 0 && !in_set(in.guard, pos)) {
          pc = in.b;
          return true;
        }
        stack_.push_back({in.b, pos, 0, 0, 0, Kind::kAlternative});
        pc = in.a;
        return true;
      case Op::kJmp: pc = in.a; return true;
      case Op::kAssert:
        if (!check(static_cast<Assertion>(in.mode), pos)) return false;
        ++pc;
        return true;
      case Op::kLook: {
        uint32_t end = 0;
        const bool found = run(in.a, pos, end);
        if (in.mode == 2) {
          if (!found) return false;
          pos = end;
        } else if (found != (in.mode == 0)) {
          return false;
        }
        pc = in.b;
        return true;
      }
      case Op::kMatch: return true;
    }
    return false;
  }

  bool step_run(const Inst& in, int32_t& pc, uint32_t& pos) {
    if (in.mode == 1) {  // lazy: take the minimum, remember how to take one more
      for (uint32_t k = 0; k < in.min; ++k) {
        if (!in_set(in.a, pos + k)) return false;
      }
      if (in.max > in.min) stack_.push_back({pc + 1, pos, in.min, in.max, in.a, Kind::kLazyRun});
      pos += in.min;
      ++pc;
      return true;
    }
    uint32_t k = 0;
    while (k < in.max && in_set(in.a, pos + k)) ++k;
    if (k < in.min) return false;
    if (in.mode == 0 && k > in.min) {
      stack_.push_back({pc + 1, pos, k - 1, in.min, in.a, Kind::kGreedyRun});
    }
    pos += k;
    ++pc;
    return true;
  }

  bool backtrack(size_t base, int32_t& pc, uint32_t& pos) {
    if (++backtracks_ > kMaxBacktracks) {
      throw UnsupportedError(
          "regex", program_.pattern,
          "more than 10 million backtracking steps at one position of the input");
    }
    while (stack_.size() > base) {
      Choice& c = stack_.back();
      switch (c.kind) {
        case Kind::kAlternative:
          pc = c.pc;
          pos = c.pos;
          stack_.pop_back();
          return true;
        case Kind::kGreedyRun:
          pc = c.pc;
          pos = c.pos + c.count;
          if (c.count == c.limit) {
            stack_.pop_back();
          } else {
            --c.count;
          }
          return true;
        case Kind::kLazyRun:
          if (c.count < c.limit && in_set(c.set, c.pos + c.count)) {
            ++c.count;
            pc = c.pc;
            pos = c.pos + c.count;
            return true;
          }
          stack_.pop_back();
          break;
      }
    }
    return false;
  }

  bool is_word(uint32_t pos) const { return in_set(program_.word_set, pos); }

  bool check(Assertion a, uint32_t pos) const {
    switch (a) {
      case Assertion::kLineStart: return pos == 0 || cps_[pos - 1] == '\n';
      case Assertion::kLineEnd: return pos == n_ || cps_[pos] == '\n';
      case Assertion::kTextStart: return pos == 0;
      case Assertion::kTextEnd: return pos == n_;
      case Assertion::kTextEndBeforeNewline:
        return pos == n_ || (pos + 1 == n_ && cps_[pos] == '\n');
      case Assertion::kWordBoundary:
      case Assertion::kNotWordBoundary: {
        const bool boundary = (pos > 0 && is_word(pos - 1)) != is_word(pos);
        return boundary == (a == Assertion::kWordBoundary);
      }
    }
    return false;
  }

  const RegexProgram& program_;
  const std::vector<Inst>& code_;
  const std::vector<char32_t>& cps_;
  const uint32_t n_;
  std::vector<Choice> stack_;
  uint64_t backtracks_ = 0;
};

}  // namespace

Regex Regex::compile(std::string_view pattern, const std::string& where, const std::string& field) {
  Regex regex;
  regex.program_ = std::make_shared<const RegexProgram>(compile_regex(pattern, where, field));
  return regex;
}

const std::string& Regex::pattern() const {
  return program_->pattern;
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  if (text.size() >= std::numeric_limits<uint32_t>::max()) {
    throw ResourceError("regex", program_->pattern, "text of 4 GiB or more");
  }
  std::vector<char32_t> cps;
  std::vector<uint32_t> offsets;  // byte offset of each code point, plus the end
  cps.reserve(text.size());
  offsets.reserve(text.size() + 1);
  for (size_t i = 0; i < text.size();) {
    offsets.push_back(static_cast<uint32_t>(i));
    cps.push_back(unicode::next_code_point(text, i));
  }
  offsets.push_back(static_cast<uint32_t>(text.size()));

  const auto n = static_cast<uint32_t>(cps.size());
  Matcher matcher(*program_, cps);
  std::vector<std::pair<size_t, size_t>> matches;
  uint32_t search_from = 0;
  long last_end = -1;
  while (search_from <= n) {
    uint32_t start = search_from, end = 0;
    bool found = false;
    for (; start <= n; ++start) {
      if (matcher.run(0, start, end)) {
        found = true;
        break;
      }
    }
    if (!found) break;
    if (start == end && static_cast<long>(end) == last_end) {
      search_from = end + 1;  // an empty match right after the previous one: move on
      continue;
    }
    matches.push_back({offsets[start], offsets[end]});
    search_from = end;
    last_end = end;
  }
  return matches;
}

}  // namespace lathe::tok
