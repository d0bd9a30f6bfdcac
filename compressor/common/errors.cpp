#include "compressor/common/errors.h"

namespace lathe {

int exit_code(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kConfig: return 2;
    case ErrorKind::kData: return 3;
    case ErrorKind::kUnsupported: return 4;
    case ErrorKind::kResource: return 5;
    case ErrorKind::kInternal: return 70;
  }
  return 70;
}

const char* kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kConfig: return "config";
    case ErrorKind::kData: return "data";
    case ErrorKind::kUnsupported: return "unsupported";
    case ErrorKind::kResource: return "resource";
    case ErrorKind::kInternal: return "internal";
  }
  return "internal";
}

Error::Error(ErrorKind kind, std::string where, std::string field, const std::string& message)
    : std::runtime_error(compose(where, field, message)),
      kind_(kind),
      where_(std::move(where)),
      field_(std::move(field)),
      message_(message) {}

std::string Error::compose(const std::string& where, const std::string& field,
                           const std::string& message) {
  std::string out;
  if (!where.empty()) out += where + ": ";
  if (!field.empty()) out += field + ": ";
  return out + message;
}

void throw_error(ErrorKind kind, std::string where, std::string field, const std::string& message) {
  switch (kind) {
    case ErrorKind::kConfig: throw ConfigError(std::move(where), std::move(field), message);
    case ErrorKind::kData: throw DataError(std::move(where), std::move(field), message);
    case ErrorKind::kUnsupported:
      throw UnsupportedError(std::move(where), std::move(field), message);
    case ErrorKind::kResource: throw ResourceError(std::move(where), std::move(field), message);
    case ErrorKind::kInternal: break;
  }
  throw InternalError(std::move(where), std::move(field), message);
}

void rethrow_with_context(const Error& e, const std::string& context) {
  throw_error(e.kind(), context + (e.where().empty() ? "" : " (" + e.where() + ")"), e.field(),
              e.message());
}

}  // namespace lathe
