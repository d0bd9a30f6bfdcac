// A GGUF file wherever lathe takes MODEL (docs/gguf.md "A .gguf file as MODEL"): the first command
// that is given one imports it (export/gguf_import.h, float32: the dequantized values exactly) into
// the cache, `$LATHE_CACHE/gguf/<stem>-<key>/`, and every command then reads that HF directory. The
// key is a hash of the file's absolute path, size and modification time, so a changed file is
// imported again. Torch-free.
#pragma once

#include <filesystem>
#include <string>

namespace lathe {

/// The cache root: $LATHE_CACHE, else $HOME/.cache/lathe. ConfigError when neither is set.
std::filesystem::path lathe_cache_dir();

/// True when `path` is a regular file named *.gguf or starting with the GGUF magic.
bool is_gguf_file(const std::string& path);

/// `path` itself, unless it is a GGUF file (is_gguf_file): then its imported HF directory in the
/// cache, imported now when it is not there yet (a note on stderr). Concurrent callers wait for the
/// one importing (a lock beside the directory) and then share its result. The errors of
/// import_gguf (the file named), ResourceError when the cache cannot be written.
std::string model_directory(const std::string& path);

}  // namespace lathe
