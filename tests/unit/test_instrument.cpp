// compressor/pipeline/instrument.h: run_stage times every call, calls the observer's hooks in
// order, and names the pass and layer in errors without changing their kind.
#include <gtest/gtest.h>

#include <sstream>
#include <thread>

#include "compressor/common/errors.h"
#include "compressor/pipeline/instrument.h"

namespace lathe {
namespace {

/// Records every hook call as one line.
struct Recorder : StageObserver {
  std::vector<std::string> calls;
  void before(const StageTiming& s, const std::string& context) override {
    calls.push_back("before " + s.name + " [" + context + "]");
  }
  void after(const StageTiming& s, const std::string& context, double seconds) override {
    calls.push_back("after " + s.name + " [" + context + "] " + std::to_string(s.calls) +
                    (seconds >= 0 ? "" : " negative"));
  }
  void on_error(const StageTiming& s, const std::string& context, const Error& e) override {
    calls.push_back("error " + s.name + " [" + context + "] " + e.message());
  }
};

TEST(Instrument, CallsAreTimedAndHooksSeeEachOne) {
  Recorder rec;
  StageTiming gptq{"gptq"};
  for (int layer = 0; layer < 2; ++layer) {
    run_stage(
        gptq, "gptq, layer " + std::to_string(layer),
        [] { std::this_thread::sleep_for(std::chrono::milliseconds(20)); }, &rec);
  }
  EXPECT_EQ(gptq.calls, 2);
  EXPECT_GE(gptq.seconds, 0.035);  // two sleeps of 20 ms, summed
  EXPECT_LT(gptq.seconds, 5.0);
  EXPECT_GT(gptq.peak_rss_bytes, 1 << 20);
  EXPECT_EQ(rec.calls, (std::vector<std::string>{
                           "before gptq [gptq, layer 0]", "after gptq [gptq, layer 0] 1",
                           "before gptq [gptq, layer 1]", "after gptq [gptq, layer 1] 2"}));
}

TEST(Instrument, ErrorsGetTheContextAndKeepTheirKind) {
  Recorder rec;
  StageTiming gptq{"gptq"};
  try {
    run_stage(
        gptq, "gptq, layer 7",
        [] { throw DataError("m.safetensors", "model.layers.7.mlp.down_proj", "NaN"); }, &rec);
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_STREQ(e.what(), "gptq, layer 7 (m.safetensors): model.layers.7.mlp.down_proj: NaN");
  }
  EXPECT_EQ(gptq.calls, 0);  // a failed call is not counted
  EXPECT_EQ(rec.calls, (std::vector<std::string>{"before gptq [gptq, layer 7]",
                                                 "error gptq [gptq, layer 7] NaN"}));
  // A run stage (no context) passes its errors through as they are.
  StageTiming decide{"decide"};
  try {
    run_stage(decide, "", [] { throw ConfigError("r.yaml", "gptq.bits", "5 bits"); });
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "r.yaml: gptq.bits: 5 bits");
  }
  // Other exceptions are not touched.
  EXPECT_THROW(run_stage(decide, "x", [] { throw std::bad_alloc(); }), std::bad_alloc);
}

TEST(Instrument, StageLogPrintsRunStagesOnly) {
  std::ostringstream out;
  StageLog log(out);
  StageTiming decide{"decide"}, rtn{"rtn"};
  run_stage(
      decide, "", [] {}, &log);
  run_stage(
      rtn, "rtn, layer 0", [] {}, &log);
  const std::string text = out.str();
  EXPECT_EQ(text.rfind("[decide] done in ", 0), 0u) << text;
  EXPECT_NE(text.find(" s, peak RSS "), std::string::npos) << text;
  EXPECT_EQ(text.find("rtn"), std::string::npos) << text;
}

}  // namespace
}  // namespace lathe
