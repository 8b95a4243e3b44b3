// Dropout's mask on the CPU, drawn from torch's default CPU generator exactly as `bernoulli_(q)` draws it, only
// faster: the same random numbers, in the same order, leaving the generator in the same state.
//
// torch's CPU bernoulli_(q) (ATen's serial bernoulli kernel) takes, for each element in memory order, a 64-bit
// draw u = (w1 << 32) | w2 from two consecutive 32-bit outputs w1, w2 of the generator's MT19937 engine
// (at::mt19937), and keeps the element when its low 53 bits, as a double in [0, 1), fall below q:
//     keep  ⇔  (u mod 2^53) · 2^-53 < q  ⇔  u mod 2^53 < ⌈q · 2^53⌉      (both sides scaled by 2^53, exactly).
// It does so one draw at a time: 8-14 ms for the MNIST net's first dropout (64x64x12x12) on our machine, about a
// tenth of a training step. This file runs the same engine a block at a time: the state transition of all 624
// words ("twist") and the output tempering as vector loops, then the comparisons as another: 0.6-0.9 ms.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/MT19937RNGEngine.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "vector_clones.h"

namespace manual_conv {
namespace {

constexpr int64_t kStateWords = at::MERSENNE_STATE_N;  // 624
constexpr int64_t kShift = at::MERSENNE_STATE_M;        // 397

// MT19937's recurrence for one word: the top bit of `word`, the low 31 bits of `next`, shifted, and MATRIX_A
// added when next's low bit is set (as at::mt19937's twist, without its branch).
inline uint32_t twisted(uint32_t word, uint32_t next) {
  const uint32_t mixed = (word & at::UMASK) | (next & at::LMASK);
  return (mixed >> 1) ^ ((0u - (next & 1u)) & at::MATRIX_A);
}

// at::mt19937::next_state: every word replaced, in place and in order. The first loop reads words 397 ahead,
// still old; the second reads words 227 behind, already new; both vectorise (their dependences are 1 and 227
// words apart).
MANUAL_CONV_VECTOR_CLONES void twist(uint32_t* __restrict state) {
  for (int64_t i = 0; i < kStateWords - kShift; ++i) {
    state[i] = state[i + kShift] ^ twisted(state[i], state[i + 1]);
  }
  for (int64_t i = kStateWords - kShift; i < kStateWords - 1; ++i) {
    state[i] = state[i + kShift - kStateWords] ^ twisted(state[i], state[i + 1]);
  }
  state[kStateWords - 1] = state[kShift - 1] ^ twisted(state[kStateWords - 1], state[0]);
}

// at::mt19937's output function, for `count` consecutive state words.
MANUAL_CONV_VECTOR_CLONES void temper(const uint32_t* __restrict state, int64_t count, uint32_t* __restrict out) {
  for (int64_t k = 0; k < count; ++k) {
    uint32_t y = state[k];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    out[k] = y;
  }
}

// The engine's next `count` outputs into `out`, advancing `engine` as that many calls of at::mt19937 would.
// Its bookkeeping: the next output is state[next_], and `left_ - 1` outputs remain before the next twist.
void take_outputs(at::mt19937_data_pod& engine, uint32_t* out, int64_t count) {
  while (count > 0) {
    if (engine.left_ == 1) {
      twist(engine.state_.data());
      engine.next_ = 0;
      engine.left_ = kStateWords + 1;
    }
    const int64_t taken = std::min<int64_t>(count, engine.left_ - 1);
    temper(engine.state_.data() + engine.next_, taken, out);
    engine.next_ += static_cast<uint32_t>(taken);
    engine.left_ -= static_cast<int>(taken);
    out += taken;
    count -= taken;
  }
}

// mask[k] = scale where draw k keeps its element, else 0; draw k is made of outputs 2k (high half) and 2k + 1.
template <typename scalar_t>
[[gnu::always_inline]] inline void keep_or_drop_body(const uint32_t* __restrict outputs, int64_t count,
                                                     int64_t threshold, scalar_t scale, scalar_t* __restrict mask) {
  constexpr uint32_t kLow21Bits = (1u << 21) - 1;  // the high output's share of the draw's low 53 bits
  for (int64_t k = 0; k < count; ++k) {
    const int64_t bits53 = (static_cast<int64_t>(outputs[2 * k] & kLow21Bits) << 32) | outputs[2 * k + 1];
    mask[k] = bits53 < threshold ? scale : scalar_t(0);
  }
}

template <typename scalar_t>
void keep_or_drop(const uint32_t* outputs, int64_t count, int64_t threshold, scalar_t scale, scalar_t* mask) {
  keep_or_drop_body(outputs, count, threshold, scale, mask);
}

// float and double: the same loop, vectorised with the widest instructions the CPU has.
MANUAL_CONV_VECTOR_CLONES void keep_or_drop(const uint32_t* outputs, int64_t count, int64_t threshold, float scale,
                                            float* mask) {
  keep_or_drop_body(outputs, count, threshold, scale, mask);
}

MANUAL_CONV_VECTOR_CLONES void keep_or_drop(const uint32_t* outputs, int64_t count, int64_t threshold,
                                            double scale, double* mask) {
  keep_or_drop_body(outputs, count, threshold, scale, mask);
}

// m / q with m ~ Bernoulli(q), shaped and laid out as empty_like(input): bit for bit
// `torch.empty_like(input).bernoulli_(q).div_(q)`, and the default generator advanced as that call advances it.
// (div_ by a number computes 1 / q in the op math type, float for float and the half types, then rounds.)
at::Tensor dropout_mask(const at::Tensor& input, double keep_probability) {
  TORCH_CHECK(keep_probability > 0 && keep_probability <= 1,
              "manual_conv: dropout_mask expects a keep probability in (0, 1], but got ", keep_probability);
  at::Tensor mask = at::empty_like(input);  // dense, so its memory holds each element once, in bernoulli_'s order
  const int64_t threshold = static_cast<int64_t>(std::ceil(std::ldexp(keep_probability, 53)));
  constexpr int64_t kChunk = 1024;  // draws per pass: 2048 outputs, 8 KiB, stay in the L1 cache
  alignas(64) uint32_t outputs[2 * kChunk];
  auto* generator = at::check_generator<at::CPUGeneratorImpl>(at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(generator->mutex_);
  at::mt19937 engine = generator->engine();
  at::mt19937_data_pod state = engine.data();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "manual_conv_dropout_mask", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto scale = static_cast<scalar_t>(opmath_t(1) / static_cast<opmath_t>(keep_probability));
    scalar_t* out = mask.data_ptr<scalar_t>();
    const int64_t count = mask.numel();
    for (int64_t begin = 0; begin < count; begin += kChunk) {
      const int64_t draws = std::min(kChunk, count - begin);
      take_outputs(state, outputs, 2 * draws);
      keep_or_drop(outputs, draws, threshold, scale, out + begin);
    }
  });
  engine.set_data(state);
  generator->set_engine(engine);
  return mask;
}

}  // namespace
}  // namespace manual_conv

TORCH_LIBRARY_IMPL(manual_conv, CPU, library) {
  library.impl("dropout_mask", &manual_conv::dropout_mask);
}
