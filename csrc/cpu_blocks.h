// How the CPU kernels share out their work (the conv core's chunks, Winograd's tile chunks): one parallel region
// per op, each thread running a block of items with single-threaded GEMMs.
#pragma once

#include <cstdint>
#include <functional>

namespace manual_conv {

// Runs block(begin, end) on blocks that partition [0, items), one per thread, in parallel (at::parallel_for).
// Inside a block the thread has the caller's thread-local state and MKL runs single-threaded; a single block
// (items == 1) runs on the caller's thread instead, with MKL's threads.
void parallel_blocks(int64_t items, const std::function<void(int64_t, int64_t)>& block);

// How many blocks parallel_blocks runs at once: torch's thread count, or 1 inside a parallel region.
int64_t thread_count();

}  // namespace manual_conv
