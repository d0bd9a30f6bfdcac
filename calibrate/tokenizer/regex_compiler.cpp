// Code generation for the regex subset of regex.h: a node tree to backtracking VM instructions.
#include <algorithm>
#include <string_view>

#include "calibrate/tokenizer/regex_parser.h"
#include "calibrate/tokenizer/regex_program.h"
#include "calibrate/tokenizer/unicode.h"

namespace lathe::tok {
namespace {

bool nullable(const RegexNode& node) {
  switch (node.kind) {
    case RegexNode::Kind::kSet: return false;
    case RegexNode::Kind::kConcat:
      return std::all_of(node.children.begin(), node.children.end(), nullable);
    case RegexNode::Kind::kAlt:
      return std::any_of(node.children.begin(), node.children.end(), nullable);
    case RegexNode::Kind::kRepeat: return node.min == 0 || nullable(node.children[0]);
    case RegexNode::Kind::kLook: return node.mode != 2 || nullable(node.children[0]);
    default: return true;
  }
}

// Emits VM code for a node tree.
class CodeGen {
 public:
  CodeGen(std::vector<Inst>& code, std::string_view pattern, const std::string& where,
          const std::string& field)
      : code_(code), pattern_(pattern), where_(where), field_(field) {}

  void emit(const RegexNode& node) {
    if (code_.size() > kMaxInstructions) fail("pattern too large once expanded");
    switch (node.kind) {
      case RegexNode::Kind::kEmpty: return;
      case RegexNode::Kind::kSet: add({Op::kSet, 0, node.set}); return;
      case RegexNode::Kind::kConcat:
        for (const RegexNode& child : node.children) emit(child);
        return;
      case RegexNode::Kind::kAlt: emit_alternation(node); return;
      case RegexNode::Kind::kRepeat: emit_repeat(node); return;
      case RegexNode::Kind::kLook: emit_look(node.mode, node.children[0]); return;
      case RegexNode::Kind::kAssert: add({Op::kAssert, node.mode}); return;
    }
  }

 private:
  static constexpr size_t kMaxInstructions = 100000;

  size_t add(Inst inst) {
    code_.push_back(inst);
    return code_.size() - 1;
  }

  void emit_alternation(const RegexNode& node) {
    std::vector<size_t> jumps;
    for (size_t i = 0; i + 1 < node.children.size(); ++i) {
      const size_t split = add({Op::kSplit});
      code_[split].a = static_cast<int32_t>(code_.size());
      emit(node.children[i]);
      jumps.push_back(add({Op::kJmp}));
      code_[split].b = static_cast<int32_t>(code_.size());
    }
    emit(node.children.back());
    for (size_t j : jumps) code_[j].a = static_cast<int32_t>(code_.size());
  }

  void emit_look(uint8_t mode, const RegexNode& body) {
    const size_t look = add({Op::kLook, mode});
    code_[look].a = static_cast<int32_t>(code_.size());
    emit(body);
    add({Op::kMatch});
    code_[look].b = static_cast<int32_t>(code_.size());
  }

  void emit_repeat(const RegexNode& node) {
    const RegexNode& body = node.children[0];
    if (body.kind == RegexNode::Kind::kSet) {
      Inst run{Op::kRun, node.mode, body.set};
      run.min = node.min;
      run.max = node.max;
      add(run);
      return;
    }
    if (node.mode == 2) {  // possessive = atomic group around the greedy repetition
      RegexNode greedy = node;
      greedy.mode = 0;
      emit_look(2, greedy);
      return;
    }
    if (node.max == kUnbounded && nullable(body)) {
      fail("unbounded repetition of a sub-pattern that can match empty");
    }
    for (uint32_t i = 0; i < node.min; ++i) emit(body);
    const bool lazy = node.mode == 1;
    if (node.max == kUnbounded) {
      const size_t split = add({Op::kSplit});
      const size_t body_start = code_.size();
      emit(body);
      add({Op::kJmp, 0, static_cast<int32_t>(split)});
      set_split(split, static_cast<int32_t>(body_start), static_cast<int32_t>(code_.size()), lazy);
      return;
    }
    std::vector<size_t> splits;
    for (uint32_t i = node.min; i < node.max; ++i) {
      splits.push_back(add({Op::kSplit}));
      code_[splits.back()].a = static_cast<int32_t>(code_.size());
      emit(body);
    }
    for (size_t s : splits) set_split(s, code_[s].a, static_cast<int32_t>(code_.size()), lazy);
  }

  void set_split(size_t split, int32_t body, int32_t skip, bool lazy) {
    code_[split].a = lazy ? skip : body;
    code_[split].b = lazy ? body : skip;
  }

  [[noreturn]] void fail(const std::string& what) const {
    regex_error(pattern_, where_, field_, 0, what);
  }

  std::vector<Inst>& code_;
  std::string_view pattern_;
  const std::string& where_;
  const std::string& field_;
};

// A split whose preferred branch must begin by consuming one code point of a set can skip that
// branch without a choice point when the next code point is not in the set (the common case in
// alternations such as 's|'t|'re|...).
void add_split_guards(std::vector<Inst>& code) {
  for (Inst& inst : code) {
    if (inst.op != Op::kSplit) continue;
    const Inst& first = code[static_cast<size_t>(inst.a)];
    if (first.op == Op::kSet || (first.op == Op::kRun && first.min >= 1)) inst.guard = first.a;
  }
}

}  // namespace

bool CharSet::contains(char32_t cp) const {
  if (categories != 0 && (categories & unicode::category_bit(unicode::category(cp))) != 0) {
    return true;
  }
  if (white_space && unicode::is_white_space(cp)) return true;
  auto it =
      std::upper_bound(ranges.begin(), ranges.end(), std::make_pair(cp, char32_t{0x7FFFFFFF}));
  if (it != ranges.begin() && std::prev(it)->second >= cp) return true;
  for (const CharSet& member : members) {
    if (member.matches(cp)) return true;
  }
  return false;
}

void CharSet::finalize() {
  std::sort(ranges.begin(), ranges.end());
  std::vector<std::pair<char32_t, char32_t>> merged;
  for (auto r : ranges) {
    if (!merged.empty() && r.first <= merged.back().second + 1) {
      merged.back().second = std::max(merged.back().second, r.second);
    } else {
      merged.push_back(r);
    }
  }
  ranges = std::move(merged);
  ascii[0] = ascii[1] = 0;
  for (char32_t cp = 0; cp < 128; ++cp) {
    if (contains(cp) != negate) ascii[cp >> 6] |= uint64_t{1} << (cp & 63);
  }
}

RegexProgram compile_regex(std::string_view pattern, const std::string& where,
                           const std::string& field) {
  RegexProgram program;
  program.pattern = std::string(pattern);
  const RegexNode root = parse_regex(pattern, where, field, program.sets);
  CodeGen(program.code, pattern, where, field).emit(root);
  program.code.push_back({Op::kMatch});
  add_split_guards(program.code);
  CharSet word;
  word.categories = regex_word_categories();
  word.finalize();
  program.sets.push_back(std::move(word));
  program.word_set = static_cast<int32_t>(program.sets.size() - 1);
  return program;
}

}  // namespace lathe::tok
