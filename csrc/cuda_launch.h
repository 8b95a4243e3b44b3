// Launch geometry shared by the CUDA kernels: blocks of kThreadsPerBlock threads, each kernel a grid-stride
// loop over its elements.
#pragma once

#include <cstdint>

namespace manual_conv {

constexpr int kThreadsPerBlock = 256;

// Enough blocks for one element per thread, capped: the kernels loop with a grid stride beyond that.
inline unsigned int blocks_for(int64_t elements) {
  const int64_t blocks = (elements + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<unsigned int>(blocks < (1 << 20) ? blocks : (1 << 20));
}

}  // namespace manual_conv
