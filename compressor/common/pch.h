// Precompiled header for the lathe sources that include torch or ATen headers (CMakeLists.txt
// applies it only to those): they pay for parsing ATen once per build, not once per file.
// ATen, not <torch/torch.h>: the C++ frontend (torch::nn, optim, data) costs every file that
// includes it ~10 s more to compile even precompiled (its inline code is instantiated and emitted
// per file), and only the files that use it (diep's optimiser, some tests) include it themselves.
#pragma once

#include <ATen/ATen.h>
