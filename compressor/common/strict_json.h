// JSON parsing for untrusted files: nlohmann::json silently keeps the last of two equal keys, which
// lets one file mean different things to different readers, so lathe rejects duplicates.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

namespace lathe {

/// Parses `text` as exactly one JSON value (surrounding JSON whitespace allowed). Throws DataError
/// (where = `where`) when the text is not valid JSON (field = `field`, message with nlohmann's
/// position and reason), when an object holds the same key twice (field = that key, message
/// naming the enclosing object), or when arrays/objects nest deeper than `max_depth` (field =
/// `field`). Strings must be valid UTF-8 (nlohmann checks).
nlohmann::json parse_json_strict(std::string_view text, const std::string& where,
                                 const std::string& field, int max_depth = 64);

}  // namespace lathe
