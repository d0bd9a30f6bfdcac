#include "compressor/pipeline/instrument.h"

#include <sys/resource.h>

#include <chrono>
#include <ostream>

#include <fmt/format.h>

namespace lathe {

void StageObserver::before(const StageTiming&, const std::string&) {}
void StageObserver::after(const StageTiming&, const std::string&, double) {}
void StageObserver::on_error(const StageTiming&, const std::string&, const Error&) {}

int64_t peak_rss_bytes() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;
}

void run_stage(StageTiming& stage, const std::string& context, const std::function<void()>& body,
               StageObserver* observer) {
  if (observer) observer->before(stage, context);
  const auto start = std::chrono::steady_clock::now();
  try {
    body();
  } catch (const Error& e) {
    if (observer) observer->on_error(stage, context, e);
    if (context.empty()) throw;
    rethrow_with_context(e, context);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stage.seconds += seconds;
  stage.peak_rss_bytes = peak_rss_bytes();
  stage.calls += 1;
  if (observer) observer->after(stage, context, seconds);
}

void StageLog::after(const StageTiming& stage, const std::string& context, double seconds) {
  if (!context.empty()) return;
  out_ << fmt::format("[{}] done in {:.2f} s, peak RSS {:.1f} MiB\n", stage.name, seconds,
                      stage.peak_rss_bytes / 1048576.0);
}

}  // namespace lathe
