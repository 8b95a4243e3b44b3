// The CPU kernels' parallel blocks (cpu_blocks.h).
#include "cpu_blocks.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

namespace manual_conv {
namespace {

// A block's GEMMs run on its own thread. Told so, MKL takes its single-threaded kernels, which for thin
// products are about twice as fast as the kernels it picks when it believes it has torch's threads to share
// out (a first layer's weight gradient, 9 x 676 x 32 per image: 3.3 -> 1.5 ms at 2 threads). Below, MKL's C
// entry point (mkl_service.h maps mkl_set_num_threads_local to it; the lower-case symbol is the Fortran one,
// taking a pointer), declared weak: a torch built without MKL has no such function.
extern "C" int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));

struct SingleThreadedBlas {
  int previous = 0;
  SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local != nullptr) {
      previous = MKL_Set_Num_Threads_Local(1);
    }
  }
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local != nullptr) {
      MKL_Set_Num_Threads_Local(previous);  // 0 (the usual value) returns the thread to MKL's global setting
    }
  }
};

}  // namespace

void parallel_blocks(int64_t items, const std::function<void(int64_t, int64_t)>& block) {
  if (items == 1 && !at::in_parallel_region()) {
    // A single block (a batch of one small image; the pieces of one image, which the input gradient scatters in
    // order) would leave the other threads idle: it runs on the caller's thread and its GEMMs use them instead.
    // Two threads against one, interleaved: on one 14x14 image ResNet-18's 256-channel 3x3 layer, forward+backward,
    // took 1.06x the one-thread time before, 0.84x now; the 512-channel one on 7x7, forward, 0.95x before, 0.60x now.
    block(0, 1);
    return;
  }
  // Worker threads start with default thread-local state: give them the caller's (dispatch keys below
  // autograd, grad mode...) so the ATen calls inside a block dispatch exactly as they would on the caller.
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard state_guard(caller_state);
    const SingleThreadedBlas single_threaded_blas;
    block(begin, end);
  });
}

int64_t thread_count() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

}  // namespace manual_conv
