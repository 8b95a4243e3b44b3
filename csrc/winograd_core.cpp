// Device-agnostic half of the Winograd core: checks, channel blocks, tile chunks and the per-point GEMMs.
//
// With U = G w G^T (16, O, C), V = B^T d B for a chunk's tiles (16, C, P) and D = A delta A^T (16, O, P):
//   forward       M  = U @ V          (16, O, P)    output tiles     = A^T M A + bias
//   input grad    V' = U^T @ D        (16, C, P)    grad_input       = sum over the patches of B V' B^T
//   weight grad   S  = sum of D @ V^T (16, O, C)    grad_weight      = G^T S G
// each one at::bmm over the 16 points per chunk of tiles (docs/derivations.md, "Winograd").
//
// Memory stays bounded as in the im2col core: the tiles go in chunks (pieces of tile rows of one image, or
// whole images), each thread reusing one chunk's buffers. The transformed weight is 16/9 of the weight and the
// weight gradient's sums S as much again per thread, which for ResNet's 512-channel layers is more than the
// layer's other memory: so the GEMMs' result channels (O for the forward and the weight gradient, C for the input
// gradient) go in blocks of at most kWeightBlockBytes of transformed weight. A block transforms its part of the
// weight once and runs the data transforms of every chunk again, which costs ~1/O of its GEMMs. How the threads
// share the work, by tile chunks or by channel blocks, is plan_pass's choice.
#include "winograd_core.h"

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

constexpr int64_t kWeightBlockBytes = int64_t(2) << 20;
// Up to this much transformed weight (or weight-gradient sums), the threads share a pass by tile chunks; beyond,
// by blocks of channels (plan_pass).
constexpr int64_t kShareByTilesBytes = int64_t(1) << 20;
// GEMMs narrower than this re-read the transformed weight too often per multiply-add: a chunk keeps at least
// this many tiles even when its buffers exceed the device's chunk_bytes.
constexpr int64_t kMinTilesPerChunk = 64;

void check_winograd_layer(const char* op, const ConvShape& shape, const at::Tensor& tensor) {
  TORCH_CHECK(shape.kernel_height == 3 && shape.kernel_width == 3 && shape.stride_height == 1 &&
                  shape.stride_width == 1 && shape.dilation_height == 1 && shape.dilation_width == 1 &&
                  shape.groups == 1,
              op, ": Winograd F(2x2, 3x3) computes 3x3 convolutions with stride 1, dilation 1 and groups 1, but got "
              "a ", shape.kernel_height, "x", shape.kernel_width, " kernel, stride (", shape.stride_height, ", ",
              shape.stride_width, "), dilation (", shape.dilation_height, ", ", shape.dilation_width, "), groups ",
              shape.groups, " (the im2col core, manual_conv::conv2d, computes every convolution)");
  // Its tiles cover the whole output: a gradient of only its first rows and columns (which the im2col core takes
  // for a transposed convolution's output_padding, never as large as the stride here) is refused.
  TORCH_CHECK(shape.out_height == conv_output_size(shape.in_height, 3, 1, shape.padding_height, 1) &&
                  shape.out_width == conv_output_size(shape.in_width, 3, 1, shape.padding_width, 1),
              op, ": expected grad_output of the convolution's output size, (", shape.batch, ", ", shape.out_channels,
              ", ", conv_output_size(shape.in_height, 3, 1, shape.padding_height, 1), ", ",
              conv_output_size(shape.in_width, 3, 1, shape.padding_width, 1), "), but got (", shape.batch, ", ",
              shape.out_channels, ", ", shape.out_height, ", ", shape.out_width, ")");
  TORCH_CHECK(tensor.scalar_type() == at::kFloat || tensor.scalar_type() == at::kDouble, op,
              ": Winograd F(2x2, 3x3) is built for float32 and float64, but got ", tensor.scalar_type());
}

// Splits `channels` into equal blocks of at most kWeightBlockBytes / bytes_per_channel channels, and into at least
// min_blocks blocks (when there are that many channels).
std::vector<ChannelBlock> channel_blocks(int64_t channels, int64_t bytes_per_channel, int64_t min_blocks = 1) {
  const int64_t most = std::clamp<int64_t>(kWeightBlockBytes / std::max<int64_t>(1, bytes_per_channel), 1, channels);
  const int64_t count = std::max((channels + most - 1) / most, std::min(min_blocks, channels));
  const int64_t size = (channels + count - 1) / count;
  std::vector<ChannelBlock> blocks;
  for (int64_t first = 0; first < channels; first += size) {
    blocks.push_back({first, std::min(size, channels - first)});
  }
  return blocks;
}

struct TilePlan {
  std::vector<TileChunk> chunks;
  int64_t max_tiles = 0;        // tiles of the largest chunk: the buffers are allocated at this size
  int64_t chunks_per_task = 1;  // consecutive chunks covering whole images (the pieces of one image, or 1)
};

// Splits the batch's tiles into chunks whose buffers take about device.chunk_bytes (16 points of `channels`
// numbers per tile, summed over the chunk's two buffers): pieces of tile rows of one image when an image is
// larger; otherwise whole images, several per chunk, but at least as many chunks as blocks run in parallel.
TilePlan plan_tile_chunks(const ConvShape& shape, int64_t channels, int64_t element_size,
                          const WinogradKernels& device) {
  const TileGrid grid = tile_grid(shape);
  const int64_t tiles_per_image = grid.rows * grid.columns;
  const int64_t tiles_budget =
      std::max(kMinTilesPerChunk, device.chunk_bytes / std::max<int64_t>(1, kPoints * channels * element_size));
  TilePlan plan;
  const int64_t rows_budget = std::max<int64_t>(1, tiles_budget / grid.columns);
  if (rows_budget < grid.rows) {
    const int64_t pieces = (grid.rows + rows_budget - 1) / rows_budget;
    const int64_t piece_rows = (grid.rows + pieces - 1) / pieces;
    for (int64_t image = 0; image < shape.batch; ++image) {
      for (int64_t first = 0; first < grid.rows; first += piece_rows) {
        plan.chunks.push_back({image, 1, first, std::min(piece_rows, grid.rows - first)});
      }
    }
    plan.max_tiles = piece_rows * grid.columns;
    plan.chunks_per_task = (grid.rows + piece_rows - 1) / piece_rows;
    return plan;
  }
  const int64_t parallel_blocks = device.parallel_blocks();
  const int64_t images_per_block = (shape.batch + parallel_blocks - 1) / parallel_blocks;
  const int64_t images_per_chunk = std::clamp<int64_t>(tiles_budget / tiles_per_image, 1, images_per_block);
  for (int64_t first = 0; first < shape.batch; first += images_per_chunk) {
    plan.chunks.push_back({first, std::min(images_per_chunk, shape.batch - first), 0, grid.rows});
  }
  plan.max_tiles = images_per_chunk * tiles_per_image;
  return plan;
}

// The transforms read or write the 16 points of a tile at once: 16 streams one point matrix apart, which in a
// contiguous (16, rows, columns) tensor are often a multiple of 4 KiB apart and then all fall into one set of the
// L1 cache (r64's chunks: 64 x 112 floats, 28 KiB). Points a multiple of 4 KiB plus two cache lines apart spread
// over 16 sets instead; at::bmm takes the strided batch as it is.
int64_t point_stride(int64_t elements, int64_t element_size) {
  constexpr int64_t kPage = 4096, kShift = 128;
  return ((elements * element_size + kPage - 1) / kPage * kPage + kShift) / element_size;
}

// A (16, rows, columns) tensor of point matrices with that stride between the points.
at::Tensor empty_points(int64_t rows, int64_t columns, const at::TensorOptions& options) {
  const int64_t element_size = static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  return at::empty_strided({kPoints, rows, columns}, {point_stride(rows * columns, element_size), columns, 1},
                           options);
}

// The same view of the start of a flat buffer (point_buffer: sized for the plan's largest chunk).
at::Tensor point_matrices(const at::Tensor& buffer, int64_t rows, int64_t tiles) {
  return buffer.as_strided({kPoints, rows, tiles}, {point_stride(rows * tiles, buffer.element_size()), tiles, 1});
}

at::Tensor point_buffer(const TilePlan& plan, int64_t rows, const at::TensorOptions& options) {
  const int64_t element_size = static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  return at::empty({kPoints * point_stride(rows * plan.max_tiles, element_size)}, options);
}

// How the threads share a pass (one op's GEMMs and transforms). By tiles: the blocks of the GEMMs' result channels
// run one after another, each with the tile chunks shared out, all threads using the block's transformed weight.
// By channels, once that weight is large (ResNet's 256- and 512-channel layers): each thread takes whole blocks
// and runs every chunk for them, transforming its chunks' data once per block, a small part of the block's GEMMs
// at such channel counts. Then a pass is one parallel region, not two per block, and no thread waits for another:
// on this shared machine a region ends only when its last thread is scheduled again (512 channels by tiles: 16
// regions per forward, 2.35x native time at 2 threads under load, against 0.8x native's CPU time on one).
struct PassPlan {
  std::vector<ChannelBlock> blocks;
  TilePlan tiles;
  bool by_channels;
};

PassPlan plan_pass(const ConvShape& shape, int64_t result_channels, int64_t inner_channels, int64_t element_size,
                   const WinogradKernels& device) {
  const int64_t bytes_per_channel = kPoints * inner_channels * element_size;
  const int64_t threads = device.parallel_blocks();
  PassPlan pass;
  pass.by_channels = threads > 1 && bytes_per_channel * result_channels > kShareByTilesBytes;
  pass.blocks = channel_blocks(result_channels, bytes_per_channel, pass.by_channels ? threads : 1);
  pass.tiles = plan_tile_chunks(shape, inner_channels + pass.blocks.front().count, element_size, device);
  return pass;
}

// Runs a pass as planned: for every block, state = prepare(block) (its part of the transformed weight), then
// run_tasks(block, state, begin, end) on task ranges that cover [0, tasks).
template <typename Prepare, typename RunTasks>
void run_pass(const WinogradKernels& device, const PassPlan& pass, int64_t tasks, const Prepare& prepare,
              const RunTasks& run_tasks) {
  if (pass.by_channels) {
    device.for_each_block(static_cast<int64_t>(pass.blocks.size()), [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        run_tasks(pass.blocks[index], prepare(pass.blocks[index]), 0, tasks);
      }
    });
    return;
  }
  for (const ChannelBlock& block : pass.blocks) {
    const auto state = prepare(block);
    device.for_each_block(tasks, [&](int64_t begin, int64_t end) { run_tasks(block, state, begin, end); });
  }
}

}  // namespace

at::Tensor winograd_conv2d(const WinogradKernels& kernels, const at::Tensor& input_arg, const at::Tensor& weight_arg,
                           const std::optional<at::Tensor>& bias_arg, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups) {
  const char* op = "manual_conv::winograd_conv2d";
  const ConvShape shape = checked_conv2d(op, input_arg, weight_arg, bias_arg, stride, padding, dilation, groups);
  check_winograd_layer(op, shape, input_arg);
  std::optional<at::Tensor> bias;
  if (bias_arg.has_value() && bias_arg->defined()) {
    bias = bias_arg->contiguous();
  }
  const c10::OptionalDeviceGuard device_guard(input_arg.device());
  const at::Tensor input = input_arg.contiguous();
  const at::Tensor weight = weight_arg.contiguous();
  at::Tensor output =
      at::empty({shape.batch, shape.out_channels, shape.out_height, shape.out_width}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  const int64_t in_channels = shape.in_channels;
  const TileGrid grid = tile_grid(shape);
  const PassPlan pass = plan_pass(shape, shape.out_channels, in_channels, input.element_size(), kernels);
  const auto transform_weight = [&](const ChannelBlock& block) {
    at::Tensor transformed = empty_points(block.count, in_channels, input.options());
    kernels.weight_transform(weight, block, {0, in_channels}, transformed);
    return transformed;
  };
  const auto run_chunks = [&](const ChannelBlock& block, const at::Tensor& transformed, int64_t begin, int64_t end) {
    const at::Tensor patch_buffer = point_buffer(pass.tiles, in_channels, input.options());
    const at::Tensor product_buffer = point_buffer(pass.tiles, block.count, input.options());
    for (int64_t index = begin; index < end; ++index) {
      const TileChunk& chunk = pass.tiles.chunks[index];
      const int64_t tiles = chunk_tiles(chunk, grid);
      at::Tensor patches = point_matrices(patch_buffer, in_channels, tiles);
      at::Tensor products = point_matrices(product_buffer, block.count, tiles);
      kernels.input_transform(input, shape, chunk, patches);
      at::bmm_out(products, transformed, patches);
      kernels.output_transform(products, bias, shape, chunk, block, output);
    }
  };
  run_pass(kernels, pass, static_cast<int64_t>(pass.tiles.chunks.size()), transform_weight, run_chunks);
  return output;
}

at::Tensor winograd_conv2d_input_grad(const WinogradKernels& kernels, const at::Tensor& grad_output_arg,
                                      const at::Tensor& weight_arg, at::IntArrayRef input_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "manual_conv::winograd_conv2d_input_grad";
  const ConvShape shape =
      checked_conv2d_input_grad(op, grad_output_arg, weight_arg, input_size, stride, padding, dilation, groups);
  check_winograd_layer(op, shape, grad_output_arg);
  const c10::OptionalDeviceGuard device_guard(grad_output_arg.device());
  const at::Tensor grad_output = grad_output_arg.contiguous();
  const at::Tensor weight = weight_arg.contiguous();
  at::Tensor grad_input = at::empty(input_size, grad_output.options());
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  const int64_t out_channels = shape.out_channels;
  const TileGrid grid = tile_grid(shape);
  const PassPlan pass = plan_pass(shape, shape.in_channels, out_channels, grad_output.element_size(), kernels);
  const auto transform_weight = [&](const ChannelBlock& block) {
    at::Tensor transformed = empty_points(out_channels, block.count, grad_output.options());
    kernels.weight_transform(weight, {0, out_channels}, block, transformed);
    return transformed.transpose(1, 2);  // U^T: (16, C block, O)
  };
  const int64_t chunks_per_task = pass.tiles.chunks_per_task;
  const auto run_tasks = [&](const ChannelBlock& block, const at::Tensor& transposed, int64_t begin, int64_t end) {
    const at::Tensor delta_buffer = point_buffer(pass.tiles, out_channels, grad_output.options());
    const at::Tensor product_buffer = point_buffer(pass.tiles, block.count, grad_output.options());
    for (int64_t index = begin * chunks_per_task; index < end * chunks_per_task; ++index) {
      const TileChunk& chunk = pass.tiles.chunks[index];
      const int64_t tiles = chunk_tiles(chunk, grid);
      at::Tensor deltas = point_matrices(delta_buffer, out_channels, tiles);
      at::Tensor products = point_matrices(product_buffer, block.count, tiles);
      kernels.grad_output_transform(grad_output, shape, chunk, {0, out_channels}, deltas);
      at::bmm_out(products, transposed, deltas);
      kernels.input_grad_transform(products, shape, chunk, block, grad_input);
    }
  };
  // The pieces of one image add onto the input rows they share: they form one task, run in order.
  run_pass(kernels, pass, static_cast<int64_t>(pass.tiles.chunks.size()) / chunks_per_task, transform_weight,
           run_tasks);
  return grad_input;
}

at::Tensor winograd_conv2d_weight_grad(const WinogradKernels& kernels, const at::Tensor& input_arg,
                                       const at::Tensor& grad_output_arg, at::IntArrayRef weight_size,
                                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                       int64_t groups) {
  const char* op = "manual_conv::winograd_conv2d_weight_grad";
  const ConvShape shape =
      checked_conv2d_weight_grad(op, input_arg, grad_output_arg, weight_size, stride, padding, dilation, groups);
  check_winograd_layer(op, shape, input_arg);
  const c10::OptionalDeviceGuard device_guard(input_arg.device());
  if (shape.batch == 0 || c10::multiply_integers(weight_size) == 0) {
    return at::zeros(weight_size, input_arg.options());
  }
  const at::Tensor input = input_arg.contiguous();
  const at::Tensor grad_output = grad_output_arg.contiguous();
  const int64_t in_channels = shape.in_channels;
  const TileGrid grid = tile_grid(shape);
  const PassPlan pass = plan_pass(shape, shape.out_channels, in_channels, input.element_size(), kernels);
  at::Tensor grad_weight = at::empty(weight_size, input.options());
  // S_block (16, block, C) (+)= the chunks' D (16, block, P) @ V^T, their data transformed into the buffers first.
  const auto add_chunks = [&](const ChannelBlock& block, int64_t begin, int64_t end, at::Tensor& sums) {
    const at::Tensor patch_buffer = point_buffer(pass.tiles, in_channels, input.options());
    const at::Tensor delta_buffer = point_buffer(pass.tiles, block.count, input.options());
    for (int64_t index = begin; index < end; ++index) {
      const TileChunk& chunk = pass.tiles.chunks[index];
      const int64_t tiles = chunk_tiles(chunk, grid);
      at::Tensor patches = point_matrices(patch_buffer, in_channels, tiles);
      at::Tensor deltas = point_matrices(delta_buffer, block.count, tiles);
      kernels.input_transform(input, shape, chunk, patches);
      kernels.grad_output_transform(grad_output, shape, chunk, block, deltas);
      if (index == begin) {
        at::bmm_out(sums, deltas, patches.transpose(1, 2));
      } else {
        sums.baddbmm_(deltas, patches.transpose(1, 2));
      }
    }
  };
  const int64_t chunks = static_cast<int64_t>(pass.tiles.chunks.size());
  if (pass.by_channels) {  // each block's sums exist once, summed by one thread in chunk order
    const auto allocate_sums = [&](const ChannelBlock& block) {
      return empty_points(block.count, in_channels, input.options());
    };
    run_pass(kernels, pass, chunks, allocate_sums,
             [&](const ChannelBlock& block, at::Tensor sums, int64_t begin, int64_t end) {
               add_chunks(block, begin, end, sums);
               kernels.weight_grad_transform(sums, block, grad_weight);
             });
    return grad_weight;
  }
  for (const ChannelBlock& block : pass.blocks) {
    // Each thread sums its block of chunks; the block sums are added in block order, so the result does not
    // depend on which thread finishes first.
    std::mutex block_sums_mutex;
    std::map<int64_t, at::Tensor> block_sums;
    kernels.for_each_block(chunks, [&](int64_t begin, int64_t end) {
      at::Tensor block_sum = empty_points(block.count, in_channels, input.options());
      add_chunks(block, begin, end, block_sum);
      const std::lock_guard<std::mutex> lock(block_sums_mutex);
      block_sums.emplace(begin, std::move(block_sum));
    });
    at::Tensor sums = block_sums.begin()->second;
    for (auto block_sum = std::next(block_sums.begin()); block_sum != block_sums.end(); ++block_sum) {
      sums.add_(block_sum->second);
    }
    kernels.weight_grad_transform(sums, block, grad_weight);
  }
  return grad_weight;
}

}  // namespace manual_conv
