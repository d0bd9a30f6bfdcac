// Thread-count control for LibTorch and OpenMP.
#pragma once

namespace lathe {

/// Sets LibTorch's intra-op pool and OpenMP to `n` threads (n <= 0: all hardware threads).
/// Needed because torch may default to 1 thread on small machines and pins OpenMP to that.
/// Returns the count actually set.
int configure_threads(int n);

}  // namespace lathe
