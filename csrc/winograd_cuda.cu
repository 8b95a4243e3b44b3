// CUDA transforms of the Winograd core (winograd_core.h) and its CUDA registration; the GEMMs run in cuBLAS via
// winograd_core.cpp. One thread per kernel, tile or input pixel, each applying the 1-D transforms of
// winograd_tile.h (the CPU kernels' arithmetic) to its own numbers:
//   weight / weight gradient   one thread per (output channel, input channel): 9 numbers <-> 16
//   input / grad_output        one thread per (channel, tile): the 4x4 patch or the 2x2 tile -> 16
//   output                     one thread per (channel, tile): 16 -> the 2x2 tile, cut at the output's edge
//   input gradient             one thread per input pixel, gathering from the (at most 2x2) tiles whose patch
//                              reads it: no two threads write the same pixel, so no atomics, and deterministic.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "cuda_launch.h"
#include "winograd_core.h"

namespace manual_conv {
namespace {

// The tile of column b of a chunk's buffer (winograd_tile.h, TileChunk): image, tile row, tile column.
__device__ inline void chunk_tile(const TileChunk& chunk, int64_t columns, int64_t b, int64_t* image, int64_t* t,
                                  int64_t* u) {
  const int64_t per_image = chunk.rows * columns;
  *image = chunk.first_image + b / per_image;
  *t = chunk.first_row + b % per_image / columns;
  *u = b % columns;
}

template <typename scalar_t>
__global__ void weight_transform_kernel(const scalar_t* __restrict__ weight, int64_t in_channels,
                                        const ChannelBlock outputs, const ChannelBlock inputs,
                                        scalar_t* __restrict__ kernels, int64_t point_stride) {
  const int64_t count = outputs.count * inputs.count;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < count; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t output = outputs.first + e / inputs.count;
    const scalar_t* g = weight + (output * in_channels + inputs.first + e % inputs.count) * 9;
    Line<scalar_t, 4> column[3];  // G down the kernel's three columns
    for (int b = 0; b < 3; ++b) {
      column[b] = kernel_transform(g[b], g[3 + b], g[6 + b]);
    }
    for (int i = 0; i < 4; ++i) {
      const Line<scalar_t, 4> u = kernel_transform(column[0].x[i], column[1].x[i], column[2].x[i]);
      for (int j = 0; j < 4; ++j) {
        kernels[(4 * i + j) * point_stride + e] = u.x[j];
      }
    }
  }
}

template <typename scalar_t>
__global__ void weight_grad_transform_kernel(const scalar_t* __restrict__ sums, int64_t point_stride,
                                             int64_t in_channels, const ChannelBlock outputs,
                                             scalar_t* __restrict__ grad_weight) {
  const int64_t count = outputs.count * in_channels;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < count; e += int64_t(gridDim.x) * blockDim.x) {
    Line<scalar_t, 3> column[4];  // G^T down each of the four columns
    for (int j = 0; j < 4; ++j) {
      column[j] = kernel_transform_adjoint(sums[j * point_stride + e], sums[(4 + j) * point_stride + e],
                                           sums[(8 + j) * point_stride + e], sums[(12 + j) * point_stride + e]);
    }
    scalar_t* g = grad_weight + (outputs.first * in_channels + e) * 9;
    for (int a = 0; a < 3; ++a) {
      const Line<scalar_t, 3> w = kernel_transform_adjoint(column[0].x[a], column[1].x[a], column[2].x[a],
                                                           column[3].x[a]);
      for (int b = 0; b < 3; ++b) {
        g[3 * a + b] = w.x[b];
      }
    }
  }
}

template <typename scalar_t>
__global__ void input_transform_kernel(const scalar_t* __restrict__ input, const ConvShape shape,
                                       const TileChunk chunk, int64_t tiles, scalar_t* __restrict__ patches,
                                       int64_t point_stride) {
  const int64_t columns = tile_grid(shape).columns;
  const int64_t count = shape.in_channels * tiles;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < count; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t channel = e / tiles;
    int64_t image, t, u;
    chunk_tile(chunk, columns, e % tiles, &image, &t, &u);
    const scalar_t* plane = input + (image * shape.in_channels + channel) * shape.in_height * shape.in_width;
    scalar_t d[4][4];
    for (int a = 0; a < 4; ++a) {
      const int64_t y = kTileSize * t + a - shape.padding_height;
      for (int b = 0; b < 4; ++b) {
        const int64_t x = kTileSize * u + b - shape.padding_width;
        const bool inside = y >= 0 && y < shape.in_height && x >= 0 && x < shape.in_width;
        d[a][b] = inside ? plane[y * shape.in_width + x] : scalar_t(0);
      }
    }
    Line<scalar_t, 4> column[4];  // B^T down the patch's four columns
    for (int b = 0; b < 4; ++b) {
      column[b] = patch_transform(d[0][b], d[1][b], d[2][b], d[3][b]);
    }
    for (int i = 0; i < 4; ++i) {
      const Line<scalar_t, 4> v = patch_transform(column[0].x[i], column[1].x[i], column[2].x[i], column[3].x[i]);
      for (int j = 0; j < 4; ++j) {
        patches[(4 * i + j) * point_stride + e] = v.x[j];
      }
    }
  }
}

template <typename scalar_t>
__global__ void grad_output_transform_kernel(const scalar_t* __restrict__ grad_output, const ConvShape shape,
                                             const TileChunk chunk, int64_t tiles, const ChannelBlock channels,
                                             scalar_t* __restrict__ deltas, int64_t point_stride) {
  const int64_t columns = tile_grid(shape).columns;
  const int64_t count = channels.count * tiles;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < count; e += int64_t(gridDim.x) * blockDim.x) {
    int64_t image, t, u;
    chunk_tile(chunk, columns, e % tiles, &image, &t, &u);
    const scalar_t* plane = grad_output + (image * shape.out_channels + channels.first + e / tiles) *
                                              shape.out_height * shape.out_width;
    scalar_t delta[2][2];
    for (int a = 0; a < 2; ++a) {
      for (int b = 0; b < 2; ++b) {
        const int64_t y = kTileSize * t + a;
        const int64_t x = kTileSize * u + b;
        delta[a][b] = y < shape.out_height && x < shape.out_width ? plane[y * shape.out_width + x] : scalar_t(0);
      }
    }
    // A down the tile's two columns, then along each of the four rows
    const Line<scalar_t, 4> left = tile_transform_adjoint(delta[0][0], delta[1][0]);
    const Line<scalar_t, 4> right = tile_transform_adjoint(delta[0][1], delta[1][1]);
    for (int i = 0; i < 4; ++i) {
      const Line<scalar_t, 4> m = tile_transform_adjoint(left.x[i], right.x[i]);
      for (int j = 0; j < 4; ++j) {
        deltas[(4 * i + j) * point_stride + e] = m.x[j];
      }
    }
  }
}

template <typename scalar_t>
__global__ void output_transform_kernel(const scalar_t* __restrict__ products, int64_t point_stride,
                                        const scalar_t* __restrict__ bias, const ConvShape shape,
                                        const TileChunk chunk, int64_t tiles, const ChannelBlock channels,
                                        scalar_t* __restrict__ output) {
  const int64_t columns = tile_grid(shape).columns;
  const int64_t count = channels.count * tiles;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < count; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t channel = channels.first + e / tiles;
    int64_t image, t, u;
    chunk_tile(chunk, columns, e % tiles, &image, &t, &u);
    Line<scalar_t, 2> row[4];  // A^T along each row of the point matrix
    for (int i = 0; i < 4; ++i) {
      row[i] = tile_transform(products[(4 * i) * point_stride + e], products[(4 * i + 1) * point_stride + e],
                              products[(4 * i + 2) * point_stride + e], products[(4 * i + 3) * point_stride + e]);
    }
    scalar_t* plane = output + (image * shape.out_channels + channel) * shape.out_height * shape.out_width;
    const scalar_t shift = bias != nullptr ? bias[channel] : scalar_t(0);
    for (int b = 0; b < 2; ++b) {
      const Line<scalar_t, 2> tile_column = tile_transform(row[0].x[b], row[1].x[b], row[2].x[b], row[3].x[b]);
      const int64_t x = kTileSize * u + b;
      for (int a = 0; a < 2; ++a) {
        const int64_t y = kTileSize * t + a;
        if (y < shape.out_height && x < shape.out_width) {
          plane[y * shape.out_width + x] = tile_column.x[a] + shift;
        }
      }
    }
  }
}

template <typename scalar_t>
__global__ void input_grad_transform_kernel(const scalar_t* __restrict__ products, int64_t point_stride,
                                            const ConvShape shape, const TileChunk chunk, int64_t tiles,
                                            const ChannelBlock channels, scalar_t* __restrict__ grad_input) {
  const TileGrid grid = tile_grid(shape);
  // The padded rows the chunk's patches cover, as input rows (clipped to the input).
  const int64_t first_padded_y = kTileSize * chunk.first_row;
  const int64_t end_padded_y = kTileSize * (chunk.first_row + chunk.rows) + 2;
  const int64_t first_y = first_padded_y > shape.padding_height ? first_padded_y - shape.padding_height : 0;
  const int64_t end_y = end_padded_y - shape.padding_height < shape.in_height ? end_padded_y - shape.padding_height
                                                                              : shape.in_height;
  const int64_t rows = end_y > first_y ? end_y - first_y : 0;
  const int64_t pixels = chunk.images * channels.count * rows * shape.in_width;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < pixels;
       index += int64_t(gridDim.x) * blockDim.x) {
    const int64_t image_in_chunk = index / (channels.count * rows * shape.in_width);
    const int64_t channel = index / (rows * shape.in_width) % channels.count;
    const int64_t y = first_y + index / shape.in_width % rows;
    const int64_t x = index % shape.in_width;
    const int64_t padded_y = y + shape.padding_height;
    const int64_t padded_x = x + shape.padding_width;
    scalar_t sum = 0;
    // Tile t's patch covers padded rows 2t .. 2t + 3: t = padded_y / 2 - 1 and padded_y / 2 (if in the chunk).
    for (int64_t t = padded_y / kTileSize - 1; t <= padded_y / kTileSize; ++t) {
      if (t < chunk.first_row || t >= chunk.first_row + chunk.rows) {
        continue;
      }
      for (int64_t u = padded_x / kTileSize - 1; u <= padded_x / kTileSize; ++u) {
        if (u < 0 || u >= grid.columns) {
          continue;
        }
        const int64_t b = (image_in_chunk * chunk.rows + t - chunk.first_row) * grid.columns + u;
        const scalar_t* v = products + channel * tiles + b;
        scalar_t row_values[4];  // B along each row i of the point matrix, at the pixel's column in the patch
        for (int i = 0; i < 4; ++i) {
          row_values[i] = patch_transform_adjoint(v[(4 * i) * point_stride], v[(4 * i + 1) * point_stride],
                                                  v[(4 * i + 2) * point_stride], v[(4 * i + 3) * point_stride])
                              .x[padded_x - kTileSize * u];
        }
        sum += patch_transform_adjoint(row_values[0], row_values[1], row_values[2], row_values[3])
                   .x[padded_y - kTileSize * t];
      }
    }
    scalar_t& destination =
        grad_input[((chunk.first_image + image_in_chunk) * shape.in_channels + channels.first + channel) *
                       shape.in_height * shape.in_width +
                   y * shape.in_width + x];
    // The rows shared with the piece before (its last tile row's patch reads them too) add to what it wrote.
    const bool shared = chunk.first_row > 0 && padded_y < kTileSize * chunk.first_row + 2;
    destination = shared ? destination + sum : sum;
  }
}

template <typename Launch>
void launch(int64_t elements, const Launch& kernel) {
  if (elements > 0) {
    kernel(blocks_for(elements), kThreadsPerBlock, at::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void weight_transform_cuda(const at::Tensor& weight, const ChannelBlock& outputs, const ChannelBlock& inputs,
                           at::Tensor& kernels) {
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "manual_conv_winograd_weight_transform_cuda", [&] {
    launch(outputs.count * inputs.count, [&](unsigned int blocks, int threads, cudaStream_t stream) {
      weight_transform_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
          weight.const_data_ptr<scalar_t>(), weight.size(1), outputs, inputs, kernels.data_ptr<scalar_t>(),
          kernels.stride(0));
    });
  });
}

void weight_grad_transform_cuda(const at::Tensor& sums, const ChannelBlock& outputs, at::Tensor& grad_weight) {
  AT_DISPATCH_FLOATING_TYPES(sums.scalar_type(), "manual_conv_winograd_weight_grad_transform_cuda", [&] {
    launch(outputs.count * grad_weight.size(1), [&](unsigned int blocks, int threads, cudaStream_t stream) {
      weight_grad_transform_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
          sums.const_data_ptr<scalar_t>(), sums.stride(0), grad_weight.size(1), outputs,
          grad_weight.data_ptr<scalar_t>());
    });
  });
}

void input_transform_cuda(const at::Tensor& input, const ConvShape& shape, const TileChunk& chunk,
                          at::Tensor& patches) {
  const int64_t tiles = chunk_tiles(chunk, tile_grid(shape));
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "manual_conv_winograd_input_transform_cuda", [&] {
    launch(shape.in_channels * tiles, [&](unsigned int blocks, int threads, cudaStream_t stream) {
      input_transform_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
          input.const_data_ptr<scalar_t>(), shape, chunk, tiles, patches.data_ptr<scalar_t>(), patches.stride(0));
    });
  });
}

void grad_output_transform_cuda(const at::Tensor& grad_output, const ConvShape& shape, const TileChunk& chunk,
                                const ChannelBlock& channels, at::Tensor& deltas) {
  const int64_t tiles = chunk_tiles(chunk, tile_grid(shape));
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "manual_conv_winograd_grad_output_transform_cuda", [&] {
    launch(channels.count * tiles, [&](unsigned int blocks, int threads, cudaStream_t stream) {
      grad_output_transform_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
          grad_output.const_data_ptr<scalar_t>(), shape, chunk, tiles, channels, deltas.data_ptr<scalar_t>(),
          deltas.stride(0));
    });
  });
}

void output_transform_cuda(const at::Tensor& products, const std::optional<at::Tensor>& bias, const ConvShape& shape,
                           const TileChunk& chunk, const ChannelBlock& channels, at::Tensor& output) {
  const int64_t tiles = chunk_tiles(chunk, tile_grid(shape));
  AT_DISPATCH_FLOATING_TYPES(products.scalar_type(), "manual_conv_winograd_output_transform_cuda", [&] {
    launch(channels.count * tiles, [&](unsigned int blocks, int threads, cudaStream_t stream) {
      output_transform_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
          products.const_data_ptr<scalar_t>(), products.stride(0),
          bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr, shape, chunk, tiles, channels,
          output.data_ptr<scalar_t>());
    });
  });
}

void input_grad_transform_cuda(const at::Tensor& products, const ConvShape& shape, const TileChunk& chunk,
                               const ChannelBlock& channels, at::Tensor& grad_input) {
  const int64_t tiles = chunk_tiles(chunk, tile_grid(shape));
  AT_DISPATCH_FLOATING_TYPES(products.scalar_type(), "manual_conv_winograd_input_grad_transform_cuda", [&] {
    // Each launch covers at most the chunk's images x channels x input rows x columns (threads past it return).
    launch(chunk.images * channels.count * (kTileSize * chunk.rows + 2) * shape.in_width,
           [&](unsigned int blocks, int threads, cudaStream_t stream) {
             input_grad_transform_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
                 products.const_data_ptr<scalar_t>(), products.stride(0), shape, chunk, tiles, channels,
                 grad_input.data_ptr<scalar_t>());
           });
  });
}

// 64 MiB per chunk, as the im2col core: few, large launches and GEMMs, with bounded memory whatever the batch.
constexpr WinogradKernels kCudaWinogradKernels{
    &sequential_blocks,     &one_block,           int64_t(64) << 20,          &weight_transform_cuda,
    &input_transform_cuda,  &grad_output_transform_cuda, &output_transform_cuda, &input_grad_transform_cuda,
    &weight_grad_transform_cuda};

}  // namespace
}  // namespace manual_conv

TORCH_LIBRARY_IMPL(manual_conv, CUDA, library) {
  manual_conv::register_winograd_ops<manual_conv::kCudaWinogradKernels>(library);
}
