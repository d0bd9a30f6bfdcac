#include "compressor/common/strict_json.h"

#include <functional>
#include <nlohmann/json.hpp>
#include <unordered_set>
#include <vector>

#include "compressor/common/errors.h"

namespace lathe {
namespace {

// One open object or array while parsing: where it sits, and the keys seen so far.
struct Frame {
  std::string location;  // "the top-level object", "the value of 'weight_map'", ...
  std::unordered_set<std::string> keys;
};

class DuplicateKeyCheck {
 public:
  DuplicateKeyCheck(const std::string& where, const std::string& field, int max_depth)
      : where_(where), field_(field), max_depth_(max_depth) {}

  bool operator()(int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    switch (event) {
      case Event::object_start:
      case Event::array_start: open(); break;
      case Event::object_end:
      case Event::array_end:
        frames_.pop_back();
        last_key_.clear();
        break;
      case Event::key: add_key(parsed.get_ref<const std::string&>()); break;
      case Event::value: last_key_.clear(); break;
    }
    return true;
  }

 private:
  void open() {
    if (static_cast<int>(frames_.size()) >= max_depth_) {
      throw DataError(where_, field_,
                      "JSON nests deeper than " + std::to_string(max_depth_) + " levels");
    }
    std::string location = frames_.empty()     ? std::string("the top-level object")
                           : last_key_.empty() ? frames_.back().location
                                               : "the value of '" + last_key_ + "'";
    last_key_.clear();
    frames_.push_back({std::move(location), {}});
  }

  void add_key(const std::string& key) {
    if (!frames_.back().keys.insert(key).second) {
      throw DataError(where_, key,
                      "duplicate key '" + key + "' in " + frames_.back().location +
                          " (a JSON reader would silently keep only one of the values)");
    }
    last_key_ = key;
  }

  const std::string& where_;
  const std::string& field_;
  int max_depth_;
  std::vector<Frame> frames_;
  std::string last_key_;  // key of the value being parsed, for naming nested objects
};

}  // namespace

nlohmann::json parse_json_strict(std::string_view text, const std::string& where,
                                 const std::string& field, int max_depth) {
  DuplicateKeyCheck check(where, field, max_depth);
  try {
    return nlohmann::json::parse(text.begin(), text.end(), std::ref(check));
  } catch (const nlohmann::json::exception& e) {
    throw DataError(where, field, std::string("not valid JSON: ") + e.what());
  }
}

}  // namespace lathe
