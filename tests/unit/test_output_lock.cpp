// export/output_lock.h: one writer per output. flock locks belong to an open file description, so
// two OutputLocks in one process conflict exactly as two processes do.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "compressor/common/errors.h"
#include "export/output_lock.h"
#include "safetensors_builder.h"

namespace lathe {
namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(OutputLock, SecondHolderIsRefusedNamingTheFirstsPid) {
  testing::TempDir dir;
  const std::string out = dir.file("out");
  std::optional<OutputLock> first(std::in_place, out);
  EXPECT_EQ(first->path(), out + ".lock");
  EXPECT_EQ(read_all(out + ".lock"), std::to_string(::getpid()) + "\n");
  try {
    OutputLock second(out + "/");  // the same output, spelled with a trailing slash
    FAIL() << "a second lock on the same output was granted";
  } catch (const ResourceError& e) {
    EXPECT_NE(std::string(e.what()).find("PID " + std::to_string(::getpid())), std::string::npos)
        << e.what();
    EXPECT_EQ(e.where(), out);
  }
  first.reset();
  EXPECT_FALSE(std::filesystem::exists(out + ".lock"));  // removed on release
  const OutputLock again(out);                           // and free again
  EXPECT_TRUE(std::filesystem::exists(out + ".lock"));
}

TEST(OutputLock, AStaleLockFileOfADeadProcessIsTakenOver) {
  testing::TempDir dir;
  const std::string out = dir.file("stats.h5");
  std::ofstream(out + ".lock") << "999999999\n";  // left by a killed process: no flock on it
  const OutputLock lock(out);
  EXPECT_EQ(read_all(out + ".lock"), std::to_string(::getpid()) + "\n");
}

TEST(OutputLock, MissingParentDirectoriesAreCreated) {
  testing::TempDir dir;
  const std::string out = dir.file("runs/today/out");
  const OutputLock lock(out);
  EXPECT_TRUE(std::filesystem::is_directory(dir.file("runs/today")));
  EXPECT_EQ(read_all(out + ".lock"), std::to_string(::getpid()) + "\n");
}

TEST(OutputLock, AnUnwritableLocationIsAResourceError) {
  testing::TempDir dir;
  std::ofstream(dir.file("plain-file")) << "x";  // a file where a parent directory should be
  try {
    OutputLock lock(dir.file("plain-file/out"));
    FAIL() << "a lock under a regular file was granted";
  } catch (const ResourceError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot create the directory"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace lathe
