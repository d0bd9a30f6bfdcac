// Precompiled header for the lathe_core sources that include torch or ATen headers (CMakeLists.txt
// applies it only to those): they pay for parsing all of torch once per build, not once per file.
#pragma once

#include <torch/torch.h>
