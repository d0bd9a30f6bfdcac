// Test-only fault injection (docs/output.md "Resume"): a process that SIGKILLs itself at a chosen
// point, so tests can prove that an interrupted run leaves nothing half-written and resumes
// exactly, however loaded the machine is (a test that kills from outside races the process it
// kills).
#pragma once

#include <cstdint>
#include <functional>

namespace lathe {

/// With LATHE_FAULT_KILL_AFTER_LAYER=i in the environment: a function that SIGKILLs the process
/// when called with layer i (0-based; callers call it once a layer's results are written). Empty
/// (no-op to test for) when the variable is unset or empty.
std::function<void(int64_t)> fault_injection_from_env();

}  // namespace lathe
