// Error kinds and exit codes shared by every lathe module (DESIGN.md, "Reliability rules").
#pragma once

#include <stdexcept>
#include <string>

namespace lathe {

/// The few kinds of failure lathe distinguishes; each maps to one process exit code.
enum class ErrorKind {
  kConfig,       ///< bad recipe, CLI option, config.json field: the user must change an input
  kData,         ///< malformed or inconsistent file contents (safetensors, tokenizer, dataset)
  kUnsupported,  ///< a valid input lathe does not handle (unknown family, dtype, layout)
  kResource,     ///< out of memory/disk, missing file, I/O failure
  kInternal,     ///< a bug in lathe
};

/// Process exit code for a kind: config 2, data 3, unsupported 4, resource 5, internal 70.
/// Exit code 1 is reserved for a regression gate that failed (`lathe compare`).
int exit_code(ErrorKind kind);

/// Stable lower-case name of a kind ("config", "data", ...), used in messages and JSON.
const char* kind_name(ErrorKind kind);

/// Base of every lathe exception. `what()` reads "<where>: <field>: <message>" with empty parts
/// left out, so each rejection names the file and the field that caused it.
class Error : public std::runtime_error {
 public:
  /// `where` is usually a file path, `field` the offending key or tensor name; either may be empty.
  Error(ErrorKind kind, std::string where, std::string field, const std::string& message);

  ErrorKind kind() const { return kind_; }
  const std::string& where() const { return where_; }
  const std::string& field() const { return field_; }
  /// The message without location prefixes.
  const std::string& message() const { return message_; }

 private:
  static std::string compose(const std::string& where, const std::string& field,
                             const std::string& message);
  ErrorKind kind_;
  std::string where_;
  std::string field_;
  std::string message_;
};

/// User input (recipe, option, config.json) is wrong.
struct ConfigError : Error {
  ConfigError(std::string where, std::string field, const std::string& message)
      : Error(ErrorKind::kConfig, std::move(where), std::move(field), message) {}
};
/// File contents are malformed.
struct DataError : Error {
  DataError(std::string where, std::string field, const std::string& message)
      : Error(ErrorKind::kData, std::move(where), std::move(field), message) {}
};
/// Valid input that lathe does not support.
struct UnsupportedError : Error {
  UnsupportedError(std::string where, std::string field, const std::string& message)
      : Error(ErrorKind::kUnsupported, std::move(where), std::move(field), message) {}
};
/// Missing file, I/O failure, exhausted memory or disk.
struct ResourceError : Error {
  ResourceError(std::string where, std::string field, const std::string& message)
      : Error(ErrorKind::kResource, std::move(where), std::move(field), message) {}
};
/// A broken invariant inside lathe.
struct InternalError : Error {
  InternalError(std::string where, std::string field, const std::string& message)
      : Error(ErrorKind::kInternal, std::move(where), std::move(field), message) {}
};

/// Throws the exception class of `kind` (ConfigError for kConfig, ...).
[[noreturn]] void throw_error(ErrorKind kind, std::string where, std::string field,
                              const std::string& message);

/// Rethrows `e` as the same kind of error with `context` (e.g. "gptq, layer 7") in front of its
/// location: what() reads "<context> (<where>): <field>: <message>", so an error raised deep inside
/// a pass names the pass and layer as well as the file and tensor.
[[noreturn]] void rethrow_with_context(const Error& e, const std::string& context);

/// A quality gate that failed (`lathe compare` with thresholds): not an error of lathe or of its
/// inputs, so it has no ErrorKind; main() prints `what()` and exits 1.
struct GateFailure : std::runtime_error {
  explicit GateFailure(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace lathe
