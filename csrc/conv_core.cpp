// Device-agnostic half of the convolution core: batch chunking and the GEMMs (argument checks: conv_checks.cpp).
//
// With columns = im2col(input) for a chunk of output pixels and G groups (weight viewed as (G, C_out/G, R),
// R = C_in/G*kH*kW, columns as (G, R, Q), grad_output's chunk as (G, C_out/G, Q)):
//   forward       out_chunk   = weight @ columns (+ bias, folded in as [weight bias] @ [columns; 1] when cheaper)
//   input grad    columns     = weight^T @ grad_out_chunk,   grad_input = col2im(columns)
//   weight grad   grad_weight = sum over chunks of grad_out_chunk @ columns^T
// Each is one batched GEMM over the groups (at::bmm), i.e. MKL on CPU and cuBLAS on CUDA.
#include "conv_core.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/accumulate.h>

#include "conv_checks.h"

namespace manual_conv {
namespace {

// GEMMs narrower than this re-read the weight too often per multiply-add, so a chunk keeps at least this
// many columns (output pixels) even when that exceeds the device's chunk_bytes.
constexpr int64_t kMinColumnsPerChunk = 256;

struct ChunkPlan {
  std::vector<ColumnChunk> chunks;
  int64_t max_columns = 0;      // columns of the largest chunk: the buffers are allocated at this size
  int64_t chunks_per_task = 1;  // consecutive chunks covering whole images (the pieces of one image, or 1)
};

// Splits the batch's output pixels into chunks of about device.chunk_bytes: pieces of whole output rows of
// one image when an image is larger; otherwise whole images, several per chunk (gathered into a buffer) but
// at least as many chunks as the device runs blocks in parallel, or one image per chunk (multiplied in
// place) on devices that prefer it once an image is wide enough for an efficient GEMM.
ChunkPlan plan_chunks(const ConvShape& shape, int64_t element_size, const DeviceKernels& device) {
  const int64_t rows = shape.in_channels * shape.kernel_height * shape.kernel_width;
  const int64_t pixels = shape.out_height * shape.out_width;
  const int64_t bytes_per_column = std::max<int64_t>(1, (rows + shape.out_channels) * element_size);
  const int64_t columns_budget = std::max(kMinColumnsPerChunk, device.chunk_bytes / bytes_per_column);
  ChunkPlan plan;
  const int64_t output_rows_budget = std::max<int64_t>(1, columns_budget / shape.out_width);
  if (output_rows_budget < shape.out_height) {
    const int64_t pieces = (shape.out_height + output_rows_budget - 1) / output_rows_budget;
    const int64_t piece_pixels = (shape.out_height + pieces - 1) / pieces * shape.out_width;
    for (int64_t image = 0; image < shape.batch; ++image) {
      for (int64_t first = 0; first < pixels; first += piece_pixels) {
        plan.chunks.push_back({image, 1, first, std::min(piece_pixels, pixels - first)});
      }
    }
    plan.max_columns = piece_pixels;
    plan.chunks_per_task = (pixels + piece_pixels - 1) / piece_pixels;
    return plan;
  }
  const int64_t parallel_blocks = device.parallel_blocks();
  const int64_t images_per_block = (shape.batch + parallel_blocks - 1) / parallel_blocks;
  const int64_t images_per_chunk = device.images_in_place && pixels >= kMinColumnsPerChunk
      ? 1
      : std::clamp<int64_t>(columns_budget / pixels, 1, images_per_block);
  for (int64_t first = 0; first < shape.batch; first += images_per_chunk) {
    plan.chunks.push_back({first, std::min(images_per_chunk, shape.batch - first), 0, pixels});
  }
  plan.max_columns = images_per_chunk * pixels;
  return plan;
}

int64_t chunk_columns(const ColumnChunk& chunk) { return chunk.images * chunk.pixels_per_image; }

// The chunk's pixels of an NCHW tensor, as a (images, channels, pixels_per_image) view.
at::Tensor chunk_pixels(const at::Tensor& nchw, const ColumnChunk& chunk) {
  return nchw.flatten(2)
      .narrow(0, chunk.first_image, chunk.images)
      .narrow(2, chunk.first_pixel, chunk.pixels_per_image);
}

// A (groups, channels/groups, columns) matrix view of the first rows*columns elements of a flat buffer.
at::Tensor group_matrices(const at::Tensor& buffer, int64_t groups, int64_t rows, int64_t columns) {
  return buffer.narrow(0, 0, rows * columns).view({groups, rows / groups, columns});
}

// The chunk's pixels of an NCHW tensor as (groups, channels/groups, columns) matrices. A chunk inside one
// image already is such a matrix (row stride H*W), used in place; several images go through `buffer`.
bool chunk_in_place(const ColumnChunk& chunk) { return chunk.images == 1; }

at::Tensor pixel_matrices(const at::Tensor& nchw, const ColumnChunk& chunk, int64_t groups, at::Tensor& buffer) {
  const int64_t channels = nchw.size(1);
  if (chunk_in_place(chunk)) {
    return chunk_pixels(nchw, chunk).select(0, 0).view({groups, channels / groups, chunk.pixels_per_image});
  }
  return group_matrices(buffer, groups, channels, chunk_columns(chunk));
}

// Copies between a gathered (channels, images * pixels) matrix and the NCHW pixels of its chunk.
at::Tensor images_side_by_side(const at::Tensor& matrices, const ColumnChunk& chunk) {
  return matrices.view({-1, chunk.images, chunk.pixels_per_image}).permute({1, 0, 2});
}

// The scratch memory of one block of chunks, reused by each of its chunks.
struct BlockBuffers {
  at::Tensor columns;   // im2col of a chunk: rows x columns
  at::Tensor gathered;  // output or grad_output pixels of a chunk of several images (empty if every chunk is in place)

  BlockBuffers(const ChunkPlan& plan, int64_t rows, int64_t out_channels, const at::TensorOptions& options)
      : columns(at::empty({rows * plan.max_columns}, options)),
        gathered(at::empty({chunk_in_place(plan.chunks.front()) ? 0 : out_channels * plan.max_columns}, options)) {}
};

// The chunk's grad_output as (groups, C_out/groups, columns) matrices.
at::Tensor grad_output_matrices(const at::Tensor& grad_output, const ColumnChunk& chunk, int64_t groups,
                                at::Tensor& buffer) {
  at::Tensor matrices = pixel_matrices(grad_output, chunk, groups, buffer);
  if (!chunk_in_place(chunk)) {
    images_side_by_side(matrices, chunk).copy_(chunk_pixels(grad_output, chunk));
  }
  return matrices;
}

}  // namespace

at::Tensor conv2d(const DeviceKernels& kernels, const at::Tensor& input_arg, const at::Tensor& weight_arg,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation, int64_t groups) {
  const char* op = "manual_conv::conv2d";
  const ConvShape shape = checked_conv2d(op, input_arg, weight_arg, bias, stride, padding, dilation, groups);
  const bool has_bias = bias.has_value() && bias->defined();
  const c10::OptionalDeviceGuard device_guard(input_arg.device());
  const at::Tensor input = dense(input_arg);
  const at::Tensor weight = dense(weight_arg);
  at::Tensor output =
      at::empty({shape.batch, shape.out_channels, shape.out_height, shape.out_width}, input.options());
  if (output.numel() == 0) {
    return output;  // as torch's path for inputs without elements, whatever the dtype
  }
  check_numeric(op, "input", input);
  const int64_t rows = shape.in_channels * shape.kernel_height * shape.kernel_width;
  // Without groups the bias can ride in the GEMM: a last column row of ones, and the bias as the weight's last
  // column, give out = [w b] @ [columns; 1] in one pass. Adding it around the GEMM instead (a bias copy before
  // a beta = 1 GEMM, or an add after) measured +0.4 ms on the MNIST net's conv1 and +1 ms on its conv2, against
  // +0.2 and +0.3 ms this way. [w b] is a copy of the weight, so this pays when the weight is the smaller
  // tensor: fewer column rows than output pixels (not so for ResNet's 512-channel 7x7 layers at batch 8).
  const bool bias_in_gemm =
      has_bias && groups == 1 && rows < shape.batch * shape.out_height * shape.out_width;
  const int64_t gemm_rows = rows + (bias_in_gemm ? 1 : 0);
  const at::Tensor weight_matrices = bias_in_gemm
      ? at::cat({weight.view({1, shape.out_channels, rows}), bias->view({1, shape.out_channels, 1})}, 2)
      : weight.view({groups, shape.out_channels / groups, rows / groups});
  const ChunkPlan plan = plan_chunks(shape, input.element_size(), kernels);
  kernels.for_each_block(static_cast<int64_t>(plan.chunks.size()), [&](int64_t begin, int64_t end) {
    BlockBuffers buffers(plan, gemm_rows, shape.out_channels, input.options());
    for (int64_t index = begin; index < end; ++index) {
      const ColumnChunk& chunk = plan.chunks[index];
      const at::Tensor gemm_columns = group_matrices(buffers.columns, groups, gemm_rows, chunk_columns(chunk));
      at::Tensor columns = gemm_columns.narrow(1, 0, rows / groups);
      kernels.im2col(input, shape, chunk, columns);
      if (bias_in_gemm) {
        gemm_columns.select(1, rows).fill_(1);
      }
      at::Tensor result = pixel_matrices(output, chunk, groups, buffers.gathered);
      if (has_bias && !bias_in_gemm) {
        at::baddbmm_out(result, bias->view({groups, shape.out_channels / groups, 1}).expand_as(result),
                        weight_matrices, columns);
      } else {
        at::bmm_out(result, weight_matrices, gemm_columns);
      }
      if (!chunk_in_place(chunk)) {
        chunk_pixels(output, chunk).copy_(images_side_by_side(result, chunk));
      }
    }
  });
  return output;
}

at::Tensor conv2d_input_grad(const DeviceKernels& kernels, const at::Tensor& grad_output_arg,
                             const at::Tensor& weight_arg, at::IntArrayRef input_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "manual_conv::conv2d_input_grad";
  const ConvShape shape =
      checked_conv2d_input_grad(op, grad_output_arg, weight_arg, input_size, stride, padding, dilation, groups);
  const c10::OptionalDeviceGuard device_guard(grad_output_arg.device());
  const at::Tensor grad_output = dense(grad_output_arg);
  const at::Tensor weight = dense(weight_arg);
  at::Tensor grad_input = at::empty(input_size, grad_output.options());
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  check_numeric(op, "grad_output", grad_output);
  const int64_t rows = shape.in_channels * shape.kernel_height * shape.kernel_width;
  // Copied once per call into a plain (not transposed) matrix: MKL runs each chunk's product ~8% faster so.
  const at::Tensor weight_transposed =
      weight.view({groups, shape.out_channels / groups, rows / groups}).transpose(1, 2).contiguous();
  const ChunkPlan plan = plan_chunks(shape, grad_output.element_size(), kernels);
  // The pieces of one image scatter into overlapping input pixels: they form one task, run in order.
  const int64_t tasks = static_cast<int64_t>(plan.chunks.size()) / plan.chunks_per_task;
  kernels.for_each_block(tasks, [&](int64_t begin, int64_t end) {
    BlockBuffers buffers(plan, rows, shape.out_channels, grad_output.options());
    for (int64_t index = begin * plan.chunks_per_task; index < end * plan.chunks_per_task; ++index) {
      const ColumnChunk& chunk = plan.chunks[index];
      at::Tensor columns = group_matrices(buffers.columns, groups, rows, chunk_columns(chunk));
      at::bmm_out(columns, weight_transposed, grad_output_matrices(grad_output, chunk, groups, buffers.gathered));
      kernels.col2im(columns, shape, chunk, grad_input);
    }
  });
  return grad_input;
}

at::Tensor conv2d_weight_grad(const DeviceKernels& kernels, const at::Tensor& input_arg,
                              const at::Tensor& grad_output_arg, at::IntArrayRef weight_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "manual_conv::conv2d_weight_grad";
  const ConvShape shape =
      checked_conv2d_weight_grad(op, input_arg, grad_output_arg, weight_size, stride, padding, dilation, groups);
  const c10::OptionalDeviceGuard device_guard(input_arg.device());
  if (shape.batch == 0 || c10::multiply_integers(weight_size) == 0) {
    return at::zeros(weight_size, input_arg.options());
  }
  check_numeric(op, "input", input_arg);
  const at::Tensor input = dense(input_arg);
  const at::Tensor grad_output = dense(grad_output_arg);
  const int64_t rows = shape.in_channels * shape.kernel_height * shape.kernel_width;
  const ChunkPlan plan = plan_chunks(shape, input.element_size(), kernels);
  // Sums of several chunks in float16/bfloat16 would round at every chunk: accumulate them in float32.
  const bool accumulate_in_float = plan.chunks.size() > 1 && at::isReducedFloatingType(input.scalar_type());
  const at::TensorOptions sum_options = input.options().dtype(accumulate_in_float ? at::kFloat : input.scalar_type());
  // MKL multiplies these thin products faster with the smaller side as the rows of the result
  // (a first layer's 9 column rows against 32 output channels: 2.5x fewer GEMM cycles), so such convolutions
  // sum grad_weight^T.
  const bool sum_transposed = rows < shape.out_channels;
  const std::vector<int64_t> sum_size = sum_transposed
      ? std::vector<int64_t>{groups, rows / groups, shape.out_channels / groups}
      : std::vector<int64_t>{groups, shape.out_channels / groups, rows / groups};
  // Each block sums its chunks' products; the block sums are added in block order, so the result does not
  // depend on which thread finishes first.
  std::mutex block_sums_mutex;
  std::map<int64_t, at::Tensor> block_sums;
  kernels.for_each_block(static_cast<int64_t>(plan.chunks.size()), [&](int64_t begin, int64_t end) {
    BlockBuffers buffers(plan, rows, shape.out_channels, input.options());
    at::Tensor block_sum = at::empty(sum_size, sum_options);
    for (int64_t index = begin; index < end; ++index) {
      const ColumnChunk& chunk = plan.chunks[index];
      at::Tensor columns = group_matrices(buffers.columns, groups, rows, chunk_columns(chunk));
      kernels.im2col(input, shape, chunk, columns);
      const at::Tensor grad_chunk = grad_output_matrices(grad_output, chunk, groups, buffers.gathered);
      const at::Tensor left = sum_transposed ? columns : grad_chunk;
      const at::Tensor right = (sum_transposed ? grad_chunk : columns).transpose(1, 2);
      if (accumulate_in_float) {
        const at::Tensor product = at::bmm(left, right);
        index == begin ? block_sum.copy_(product) : block_sum.add_(product);
      } else if (index == begin) {
        at::bmm_out(block_sum, left, right);
      } else {
        block_sum.baddbmm_(left, right);
      }
    }
    const std::lock_guard<std::mutex> lock(block_sums_mutex);
    block_sums.emplace(begin, std::move(block_sum));
  });
  at::Tensor grad_weight = block_sums.begin()->second;
  for (auto block = std::next(block_sums.begin()); block != block_sums.end(); ++block) {
    grad_weight.add_(block->second);
  }
  return (sum_transposed ? grad_weight.transpose(1, 2) : grad_weight).reshape(weight_size).to(input.scalar_type());
}

at::Tensor conv2d_bias_grad(const at::Tensor& grad_output) {
  const char* op = "manual_conv::conv2d_bias_grad";
  check_numeric(op, "grad_output", grad_output);
  check_4d(op, "grad_output", grad_output.sizes());
  const c10::OptionalDeviceGuard device_guard(grad_output.device());
  // at::sum accumulates float16/bfloat16 in float32 on both devices.
  return grad_output.sum(at::IntArrayRef{0, 2, 3});
}

}  // namespace manual_conv
