// The compiled layers: max pooling's forward and ReLU's backward, the two ops of the manual_conv library
// besides the convolution core, written once for every device.
//
// Validation, layouts and allocation live in layers_core.cpp; each device only supplies the loops over the
// elements (layers_cpu.cpp, layers_cuda.cu), which call the per-element functions of layer_index.h, and
// registers the ops for its dispatch key with register_layer_ops below.
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "layer_index.h"

namespace manual_conv {

// What a device supplies: kernels that fill tensors allocated (and checked) by the common code.
struct LayerKernels {
  // output, indices  <-  max pooling of `input`: the three dense in contiguous memory, or in channels_last.
  void (*max_pool2d)(const at::Tensor& input, const PoolShape& shape, bool channels_last, at::Tensor& output,
                     at::Tensor& indices);
  // grad_input[k] = relu_input_grad(grad_output[k], output[k]) for every k < numel, over the three tensors'
  // memory: they share one dense layout, so element k is the same element in each.
  void (*relu_backward)(const at::Tensor& grad_output, const at::Tensor& output, at::Tensor& grad_input);
};

// (y, indices) = max_pool2d(input): y the window maxima, indices their positions h*W + w in the input plane.
// input (N, C, H, W) or unbatched (C, H, W); y and indices channels_last when the input suggests it, as PyTorch's.
std::tuple<at::Tensor, at::Tensor> max_pool2d(const LayerKernels& kernels, const at::Tensor& input,
                                              at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                              at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode);

// grad_input = 0 where output <= 0, else grad_output: the input gradient of y = relu(x).
at::Tensor relu_backward(const LayerKernels& kernels, const at::Tensor& grad_output, const at::Tensor& output);

// Registers the two ops with the device's `kernels`, inside TORCH_LIBRARY_IMPL(manual_conv, KEY, m).
template <const LayerKernels& kernels>
void register_layer_ops(torch::Library& library) {
  library.impl("max_pool2d", [](const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
    return max_pool2d(kernels, input, kernel_size, stride, padding, dilation, ceil_mode);
  });
  library.impl("relu_backward", [](const at::Tensor& grad_output, const at::Tensor& output) {
    return relu_backward(kernels, grad_output, output);
  });
}

}  // namespace manual_conv
