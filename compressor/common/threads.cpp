#include "compressor/common/threads.h"

#include <ATen/Parallel.h>
#include <omp.h>

#include <thread>

namespace lathe {

int configure_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
  omp_set_num_threads(n);
  return n;
}

}  // namespace lathe
