// The Winograd core: F(2x2, 3x3) forward, input gradient and weight gradient of 3x3 convolutions with stride 1,
// dilation 1 and one group, as the ops winograd_conv2d, winograd_conv2d_input_grad, winograd_conv2d_weight_grad
// (the conv core's signatures; the bias gradient is the conv core's conv2d_bias_grad).
//
// Checks, channel blocks, tile chunks and the per-point GEMMs (ATen bmm: MKL on CPU, cuBLAS on CUDA) live in
// winograd_core.cpp; each device supplies the transforms (winograd_cpu.cpp, winograd_cuda.cu), written with the
// 1-D transforms of winograd_tile.h, and registers the ops with register_winograd_ops below.
//
// Buffers: in the Winograd domain every point (xi, nu) is one matrix, so a chunk of P tiles of a C-channel
// tensor is a (16, C, P) tensor (point, channel, tile): each point's (C, P) matrix contiguous, the points
// tensor.stride(0) apart (a little more than C * P), the layout at::bmm multiplies point by point.
#pragma once

#include <functional>
#include <optional>

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "winograd_tile.h"

namespace manual_conv {

// A channel range [first, first + count): the block of output or input channels one pass of the GEMMs computes.
struct ChannelBlock {
  int64_t first, count;
};

struct WinogradKernels {
  // As DeviceKernels (conv_core.h): runs block(begin, end) on blocks partitioning [0, items), each block's
  // items in order with its own scratch; how many blocks run at once; bytes of scratch per tile chunk.
  void (*for_each_block)(int64_t items, const std::function<void(int64_t, int64_t)>& block);
  int64_t (*parallel_blocks)();
  int64_t chunk_bytes;
  // kernels (16, outputs.count, inputs.count)  <-  G w G^T for the weight's block outputs x inputs.
  void (*weight_transform)(const at::Tensor& weight, const ChannelBlock& outputs, const ChannelBlock& inputs,
                           at::Tensor& kernels);
  // patches (16, C, P)  <-  B^T d B for every channel and every tile of the chunk, d read from `input` (NCHW).
  void (*input_transform)(const at::Tensor& input, const ConvShape& shape, const TileChunk& chunk,
                          at::Tensor& patches);
  // deltas (16, channels.count, P)  <-  A delta A^T for the block's channels of grad_output (NCHW).
  void (*grad_output_transform)(const at::Tensor& grad_output, const ConvShape& shape, const TileChunk& chunk,
                                const ChannelBlock& channels, at::Tensor& deltas);
  // output's block channels (NCHW)  <-  A^T m A + bias, the tiles cut at the output's edge.
  void (*output_transform)(const at::Tensor& products, const std::optional<at::Tensor>& bias, const ConvShape& shape,
                           const TileChunk& chunk, const ChannelBlock& channels, at::Tensor& output);
  // grad_input's block channels (NCHW)  <-  B v B^T added onto the patches the forward read, the padding dropped.
  // A chunk starting at tile row 0 overwrites its images; a later piece of the same image adds onto the two
  // input rows it shares with the piece before.
  void (*input_grad_transform)(const at::Tensor& products, const ConvShape& shape, const TileChunk& chunk,
                               const ChannelBlock& channels, at::Tensor& grad_input);
  // grad_weight's block output channels (O, C, 3, 3)  <-  G^T s G for the sums s (16, outputs.count, C).
  void (*weight_grad_transform)(const at::Tensor& sums, const ChannelBlock& outputs, at::Tensor& grad_weight);
};

at::Tensor winograd_conv2d(const WinogradKernels& kernels, const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups);

at::Tensor winograd_conv2d_input_grad(const WinogradKernels& kernels, const at::Tensor& grad_output,
                                      const at::Tensor& weight, at::IntArrayRef input_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

at::Tensor winograd_conv2d_weight_grad(const WinogradKernels& kernels, const at::Tensor& input,
                                       const at::Tensor& grad_output, at::IntArrayRef weight_size,
                                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                       int64_t groups);

// Registers the three ops with `kernels` as the device's transforms, inside TORCH_LIBRARY_IMPL(manual_conv, KEY, m).
template <const WinogradKernels& kernels>
void register_winograd_ops(torch::Library& library) {
  library.impl("winograd_conv2d", [](const at::Tensor& input, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
    return winograd_conv2d(kernels, input, weight, bias, stride, padding, dilation, groups);
  });
  library.impl("winograd_conv2d_input_grad", [](const at::Tensor& grad_output, const at::Tensor& weight,
                                                at::IntArrayRef input_size, at::IntArrayRef stride,
                                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
    return winograd_conv2d_input_grad(kernels, grad_output, weight, input_size, stride, padding, dilation, groups);
  });
  library.impl("winograd_conv2d_weight_grad", [](const at::Tensor& input, const at::Tensor& grad_output,
                                                 at::IntArrayRef weight_size, at::IntArrayRef stride,
                                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
    return winograd_conv2d_weight_grad(kernels, input, grad_output, weight_size, stride, padding, dilation, groups);
  });
}

}  // namespace manual_conv
