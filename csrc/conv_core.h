// The convolution core: the four ops of the manual_conv contract, written once for every device.
//
// Validation, batch chunking and the GEMMs (ATen mm/bmm: MKL on CPU, cuBLAS on CUDA) live in conv_core.cpp;
// each device only supplies its im2col and col2im (conv_cpu.cpp, conv_cuda.cu) and registers the ops for its
// dispatch key with register_device_ops below.
#pragma once

#include <functional>
#include <optional>

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "conv_index.h"

namespace manual_conv {

// What a device supplies to the common algorithm.
struct DeviceKernels {
  // Runs block(begin, end) on blocks that partition [0, items) (chunks or tasks); a block runs its items in
  // order and allocates its own scratch buffers. CPU: one block per thread, in parallel, each item then runs
  // serially on its thread with single-threaded GEMMs (one fork/join per op). CUDA: one block, the
  // parallelism is inside each item's kernels and GEMMs.
  void (*for_each_block)(int64_t items, const std::function<void(int64_t, int64_t)>& block);
  // How many blocks for_each_block runs at once (CPU: threads; CUDA: 1).
  int64_t (*parallel_blocks)();
  // Bytes of scratch per chunk (columns plus output pixels): a CPU core's L2 cache, or enough work per GPU launch.
  int64_t chunk_bytes;
  // Whether an image large enough for an efficient GEMM is its own chunk, multiplied in place in the NCHW
  // tensors (CPU), rather than gathered with others into fewer, larger GEMMs (CUDA: fewer launches).
  bool images_in_place;
  // columns (C_in*kH*kW, chunk columns), contiguous  <-  the patches of `input` (contiguous NCHW) the chunk reads.
  void (*im2col)(const at::Tensor& input, const ConvShape& shape, const ColumnChunk& chunk, at::Tensor& columns);
  // grad_input (contiguous NCHW)  <-  the adjoint of im2col applied to `columns`: every column entry is added
  // to the input pixel it was read from. The first chunk of an image (first_pixel == 0) overwrites that image,
  // later chunks of the same image accumulate into it. `columns` is scratch: col2im may overwrite it.
  void (*col2im)(const at::Tensor& columns, const ConvShape& shape, const ColumnChunk& chunk, at::Tensor& grad_input);
};

// out = conv(input, weight) + bias
at::Tensor conv2d(const DeviceKernels& kernels, const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation, int64_t groups);

// grad_input = d<grad_output, conv(input, weight)>/d input: col2im(weight^T @ grad_output), shaped input_size.
// Here and in conv2d_weight_grad, grad_output may hold only the first rows/columns of the conv's output (the
// others count as zeros that are never multiplied): a transposed convolution with output_padding >= stride.
at::Tensor conv2d_input_grad(const DeviceKernels& kernels, const at::Tensor& grad_output, const at::Tensor& weight,
                             at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups);

// grad_weight = d<grad_output, conv(input, weight)>/d weight: sum over chunks of grad_output @ im2col(input)^T.
at::Tensor conv2d_weight_grad(const DeviceKernels& kernels, const at::Tensor& input, const at::Tensor& grad_output,
                              at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups);

// grad_bias[o] = sum_{n, y, x} grad_output[n, o, y, x]
at::Tensor conv2d_bias_grad(const at::Tensor& grad_output);

// Registers the four ops with `kernels` as the device's im2col/col2im, inside TORCH_LIBRARY_IMPL(manual_conv, KEY, m).
template <const DeviceKernels& kernels>
void register_device_ops(torch::Library& library) {
  library.impl("conv2d", [](const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            int64_t groups) {
    return conv2d(kernels, input, weight, bias, stride, padding, dilation, groups);
  });
  library.impl("conv2d_input_grad", [](const at::Tensor& grad_output, const at::Tensor& weight,
                                       at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef dilation, int64_t groups) {
    return conv2d_input_grad(kernels, grad_output, weight, input_size, stride, padding, dilation, groups);
  });
  library.impl("conv2d_weight_grad", [](const at::Tensor& input, const at::Tensor& grad_output,
                                        at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, int64_t groups) {
    return conv2d_weight_grad(kernels, input, grad_output, weight_size, stride, padding, dilation, groups);
  });
  library.impl("conv2d_bias_grad", &conv2d_bias_grad);
}

}  // namespace manual_conv
