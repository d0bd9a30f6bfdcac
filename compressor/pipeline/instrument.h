// Instrumentation around the stages of a run (calibrate, decide, apply, verify, eval) and each
// pass's work on each layer (issue 26): one place measures wall time and peak RSS, calls the
// observer's hooks (before, after, on error), and puts the pass and layer in front of a lathe
// Error raised inside ("gptq, layer 7 (<file>): <tensor>: ..."), so no stage or pass times,
// reports or names itself by hand. Torch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>

#include "compressor/common/errors.h"

namespace lathe {

/// What a stage cost so far.
struct StageTiming {
  std::string name;            ///< "calibrate", "decide", a pass name, ...
  double seconds = 0;          ///< wall time summed over its calls
  int64_t peak_rss_bytes = 0;  ///< the process's peak RSS when its last call ended
  int64_t calls = 0;
};

/// Hooks around every call run_stage makes. `context` is empty for a run stage and names the
/// call for a pass step ("gptq, layer 7"). Defaults: nothing.
class StageObserver {
 public:
  virtual ~StageObserver() = default;
  virtual void before(const StageTiming& stage, const std::string& context);
  /// `seconds`: this call's wall time (stage.seconds already includes it).
  virtual void after(const StageTiming& stage, const std::string& context, double seconds);
  virtual void on_error(const StageTiming& stage, const std::string& context, const Error& e);
};

/// The process's peak resident set size so far, in bytes (getrusage).
int64_t peak_rss_bytes();

/// Runs `body` as one call of `stage`: the observer's before, then body, then stage's time and
/// peak RSS updated and the observer's after. A lathe Error from body goes to the observer's
/// on_error and, when `context` is not empty, is rethrown as the same kind with `context` in
/// front of its location (rethrow_with_context); other exceptions pass through untouched.
void run_stage(StageTiming& stage, const std::string& context, const std::function<void()>& body,
               StageObserver* observer = nullptr);

/// Prints one progress line per finished run stage (calls with an empty context) to `out`:
/// "[decide] done in 1.23 s, peak RSS 456.7 MiB".
class StageLog : public StageObserver {
 public:
  explicit StageLog(std::ostream& out) : out_(out) {}
  void after(const StageTiming& stage, const std::string& context, double seconds) override;

 private:
  std::ostream& out_;
};

}  // namespace lathe
