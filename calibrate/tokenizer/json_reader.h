// tokenizer.json values are read with lathe's one typed JSON reader (compressor/common/
// json_reader.h): errors name the file and the JSON path of the value
// ("pre_tokenizer.pretokenizers[1].pattern"). A malformed or inconsistent value is a DataError
// (the reader's default kind); a well-formed component lathe does not implement is an
// UnsupportedError (JsonReader::unsupported).
#pragma once

#include "compressor/common/json_reader.h"

namespace lathe::tok {

using JsonReader = lathe::JsonReader;

}  // namespace lathe::tok
