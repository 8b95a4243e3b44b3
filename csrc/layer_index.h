// Per-element arithmetic of the compiled layers (max pooling's forward, ReLU's backward), shared by the CPU
// (.cpp) and CUDA (.cu) kernels.
//
// As in conv_index.h, everything is a plain inline function of integers, pointers and scalars, callable from
// host and device code, so the CPU tests exercise exactly the arithmetic the GPU kernels run. Each function
// restates the rule of its Python reference (manual_conv/ops/pool.py, manual_conv/ops/activation.py), which
// is PyTorch's.
#pragma once

#include <cstdint>
#include <limits>

#include "conv_index.h"

namespace manual_conv {

// Every size of one max pooling, as plain integers so it can be passed by value to a CUDA kernel. The input
// holds `planes` planes of in_height x in_width (N*C for (N, C, H, W) input, C for unbatched (C, H, W)), the
// output and the indices planes of out_height x out_width. In channels_last memory the `channels` planes of an
// image interleave: element (h, w) of a plane lies `channels` elements after element (h, w - 1).
struct PoolShape {
  int64_t planes, channels;
  int64_t in_height, in_width;
  int64_t out_height, out_width;
  int64_t kernel_height, kernel_width;
  int64_t stride_height, stride_width;
  int64_t padding_height, padding_width;
  int64_t dilation_height, dilation_width;
};

// floor(numerator / denominator) for denominator > 0 (C++'s / truncates toward zero).
MANUAL_CONV_HOST_DEVICE inline int64_t floor_divide(int64_t numerator, int64_t denominator) {
  const int64_t quotient = numerator / denominator;
  return quotient * denominator > numerator ? quotient - 1 : quotient;
}

// Output extent of a pooling along one axis (pool.py's pooling_output_size):
//   floor((in + 2p - d(k - 1) - 1 [+ s - 1 with ceil_mode]) / s) + 1,
// less one with ceil_mode when the last window would start at or beyond in + p, i.e. in the right padding.
MANUAL_CONV_HOST_DEVICE inline int64_t pooling_output_size(
    int64_t in_size, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation, bool ceil_mode) {
  const int64_t rounding = ceil_mode ? stride - 1 : 0;
  int64_t out_size = floor_divide(in_size + 2 * padding - dilation * (kernel - 1) - 1 + rounding, stride) + 1;
  if (ceil_mode && (out_size - 1) * stride >= in_size + padding) {
    --out_size;
  }
  return out_size;
}

// The first coordinate of a window, start = out*s - p, moved on by whole dilation steps until it is >= 0: the
// first tap of the window inside the input (PyTorch's `while (start < 0) start += dilation`).
MANUAL_CONV_HOST_DEVICE inline int64_t first_inside_coordinate(int64_t start, int64_t dilation) {
  return start >= 0 ? start : start + (-start + dilation - 1) / dilation * dilation;
}

// NaN is the one value not equal to itself; the test needs no math library, on the host or the device.
template <typename compute_t>
MANUAL_CONV_HOST_DEVICE inline bool is_nan(compute_t value) {
  return value != value;
}

// Whether a window's scan takes `value` over the best so far: when it is greater or NaN, so ties keep the first
// maximum and the last NaN wins.
template <typename compute_t>
MANUAL_CONV_HOST_DEVICE inline bool max_pool_takes(compute_t value, compute_t best) {
  return value > best || is_nan(value);
}

// The taps of window (out_y, out_x) that read inside the input: rows first_y, first_y + dilation_height, ...
// below end_y, columns likewise. The first is the window's first tap inside the input, the one an all -inf
// window keeps.
struct PoolWindow {
  int64_t first_y, end_y, first_x, end_x;
};

MANUAL_CONV_HOST_DEVICE inline PoolWindow pool_window_inside(const PoolShape& shape, int64_t out_y, int64_t out_x) {
  const int64_t start_y = input_coordinate(out_y, 0, shape.stride_height, shape.padding_height, 1);
  const int64_t start_x = input_coordinate(out_x, 0, shape.stride_width, shape.padding_width, 1);
  const int64_t end_y = start_y + (shape.kernel_height - 1) * shape.dilation_height + 1;
  const int64_t end_x = start_x + (shape.kernel_width - 1) * shape.dilation_width + 1;
  return {first_inside_coordinate(start_y, shape.dilation_height), end_y < shape.in_height ? end_y : shape.in_height,
          first_inside_coordinate(start_x, shape.dilation_width), end_x < shape.in_width ? end_x : shape.in_width};
}

// The value max pooling starts a window's scan from: -inf, or an integer type's lowest value (PyTorch's start,
// so that a window of lowest values keeps its first tap).
template <typename compute_t>
MANUAL_CONV_HOST_DEVICE inline compute_t max_pool_start() {
  return std::numeric_limits<compute_t>::has_infinity ? -std::numeric_limits<compute_t>::infinity()
                                                      : std::numeric_limits<compute_t>::lowest();
}

// Max pooling of output pixel (out_y, out_x) of one input plane, whose element (h, w) is
// plane[(h*W + w) * pixel_stride] (pixel_stride 1 in contiguous memory, the number of channels in channels_last):
// *max_value = the maximum over the window's taps inside the input, *max_index = its position h*W + w.
// The taps are scanned row by row; a tap is taken when it is greater than the best so far or is NaN, so ties
// keep the first maximum and the last NaN wins. The scan starts from max_pool_start and the window's first tap
// inside the input, which an all -inf window therefore keeps. Values are compared as compute_t (float for
// float16/bfloat16: the conversion is exact, so the result is too).
template <typename compute_t, typename scalar_t>
MANUAL_CONV_HOST_DEVICE inline void max_pool_window(
    const scalar_t* plane, int64_t pixel_stride, const PoolShape& shape, int64_t out_y, int64_t out_x,
    scalar_t* max_value, int64_t* max_index) {
  const PoolWindow window = pool_window_inside(shape, out_y, out_x);
  compute_t best = max_pool_start<compute_t>();
  int64_t best_index = window.first_y * shape.in_width + window.first_x;
  for (int64_t in_y = window.first_y; in_y < window.end_y; in_y += shape.dilation_height) {
    for (int64_t in_x = window.first_x; in_x < window.end_x; in_x += shape.dilation_width) {
      const int64_t index = in_y * shape.in_width + in_x;
      const compute_t value = static_cast<compute_t>(plane[index * pixel_stride]);
      if (max_pool_takes(value, best)) {
        best = value;
        best_index = index;
      }
    }
  }
  *max_value = static_cast<scalar_t>(best);
  *max_index = best_index;
}

// ReLU's input gradient at one element, from its output y and output gradient δ: 0 where y <= 0, else δ.
// A selection, not δ * [y > 0]: an infinite or NaN δ where y <= 0 gives 0, and a NaN y (not <= 0) passes δ.
template <typename compute_t, typename scalar_t>
MANUAL_CONV_HOST_DEVICE inline scalar_t relu_input_grad(scalar_t grad_output, scalar_t output) {
  return static_cast<compute_t>(output) <= compute_t(0) ? scalar_t(0) : grad_output;
}

}  // namespace manual_conv
