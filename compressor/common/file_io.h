// Reading whole input files, with the errors every reader of lathe gives (DESIGN.md "Reliability
// rules": which file, what went wrong). Torch-free.
#pragma once

#include <string>

namespace lathe {

/// The bytes of the file at `path`. Throws ResourceError(where = path): "<cannot_open>: <OS
/// reason>" when it cannot be opened, "cannot read: is a directory" for a directory, "read failed:
/// <OS reason>" when reading fails part way. `cannot_open` lets callers say what the file was, e.g.
/// "cannot read the recipe".
std::string read_file(const std::string& path, const std::string& cannot_open = "cannot open");

}  // namespace lathe
