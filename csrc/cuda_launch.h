// Launch geometry shared by the CUDA kernels: blocks of kThreadsPerBlock threads, each kernel a grid-stride
// loop over its elements; and the one block of chunks the CUDA cores run (conv_core.h, winograd_core.h).
#pragma once

#include <cstdint>
#include <functional>

namespace manual_conv {

constexpr int kThreadsPerBlock = 256;

// Enough blocks for one element per thread, capped: the kernels loop with a grid stride beyond that.
inline unsigned int blocks_for(int64_t elements) {
  const int64_t blocks = (elements + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<unsigned int>(blocks < (1 << 20) ? blocks : (1 << 20));
}

// One block: the chunks run in stream order, each parallel on the GPU.
inline void sequential_blocks(int64_t items, const std::function<void(int64_t, int64_t)>& block) {
  if (items > 0) {
    block(0, items);
  }
}

inline int64_t one_block() { return 1; }

}  // namespace manual_conv
