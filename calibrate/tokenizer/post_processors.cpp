#include "calibrate/tokenizer/post_processors.h"

#include <map>
#include <string>

namespace lathe::tok {
namespace {

// A single-sequence template: special-token id lists and the place of the sequence ($A).
class Template : public PostProcessor {
 public:
  struct Item {
    bool is_sequence;
    std::vector<int32_t> ids;
  };
  explicit Template(std::vector<Item> items) : items_(std::move(items)) {}

  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    std::vector<int32_t> out;
    for (const Item& item : items_) {
      if (item.is_sequence) {
        out.insert(out.end(), ids.begin(), ids.end());
      } else {
        out.insert(out.end(), item.ids.begin(), item.ids.end());
      }
    }
    ids = std::move(out);
  }

 private:
  std::vector<Item> items_;
};

class Identity : public PostProcessor {
 public:
  void process(std::vector<int32_t>&, bool) const override {}
};

class Sequence : public PostProcessor {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PostProcessor>> steps) : steps_(std::move(steps)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    for (const auto& step : steps_) step->process(ids, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

std::map<std::string, std::vector<int32_t>> read_special_tokens(const JsonReader& json) {
  std::map<std::string, std::vector<int32_t>> out;
  if (!json.has("special_tokens")) return out;
  const JsonReader specials = json.at("special_tokens");
  if (!specials.value().is_object()) specials.fail("expected an object");
  for (auto it = specials.value().begin(); it != specials.value().end(); ++it) {
    const JsonReader entry(it.value(), json.file(), specials.path() + "." + it.key());
    const JsonReader id_list = entry.at("ids");
    std::vector<int32_t> ids;
    for (size_t i = 0; i < id_list.array_size(); ++i) {
      const int64_t id = id_list.element(i).as_int();
      if (id < 0 || id > INT32_MAX) id_list.element(i).fail("id out of range");
      ids.push_back(static_cast<int32_t>(id));
    }
    out[it.key()] = std::move(ids);
  }
  return out;
}

std::unique_ptr<PostProcessor> parse_template(const JsonReader& json) {
  const auto specials = read_special_tokens(json);
  const JsonReader single = json.at("single");
  std::vector<Template::Item> items;
  for (size_t i = 0; i < single.array_size(); ++i) {
    const JsonReader piece = single.element(i);
    if (piece.has("Sequence")) {
      if (piece.at("Sequence").string_at("id") != "A") {
        piece.fail("the single-sequence template can only hold sequence A");
      }
      items.push_back({true, {}});
    } else if (piece.has("SpecialToken")) {
      const std::string name = piece.at("SpecialToken").string_at("id");
      auto it = specials.find(name);
      if (it == specials.end()) piece.fail("special token '" + name + "' is not in special_tokens");
      items.push_back({false, it->second});
    } else {
      piece.fail("expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  return std::make_unique<Template>(std::move(items));
}

// RobertaProcessing and BertProcessing: [cls] $A [sep], with "cls"/"sep" as [token, id].
std::unique_ptr<PostProcessor> parse_cls_sep(const JsonReader& json) {
  auto id_of = [&](const char* key) {
    const JsonReader pair = json.at(key);
    if (pair.array_size() != 2) pair.fail("expected [token, id]");
    const int64_t id = pair.element(1).as_int();
    if (id < 0 || id > INT32_MAX) pair.element(1).fail("id out of range");
    return static_cast<int32_t>(id);
  };
  std::vector<Template::Item> items{{false, {id_of("cls")}}, {true, {}}, {false, {id_of("sep")}}};
  return std::make_unique<Template>(std::move(items));
}

}  // namespace

std::unique_ptr<PostProcessor> parse_post_processor(const JsonReader& json) {
  const std::string type = json.type();
  if (type == "TemplateProcessing") return parse_template(json);
  if (type == "ByteLevel") return std::make_unique<Identity>();
  if (type == "RobertaProcessing" || type == "BertProcessing") return parse_cls_sep(json);
  if (type == "Sequence") {
    const JsonReader list = json.at("processors");
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (size_t i = 0; i < list.array_size(); ++i) {
      steps.push_back(parse_post_processor(list.element(i)));
    }
    return std::make_unique<Sequence>(std::move(steps));
  }
  json.at("type").unsupported("post-processor type '" + type +
                              "' is not supported (lathe implements TemplateProcessing, ByteLevel, "
                              "RobertaProcessing, BertProcessing, Sequence)");
}

}  // namespace lathe::tok
