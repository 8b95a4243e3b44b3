// CUDA im2col / col2im and the CUDA registration of the four ops (the GEMMs run in cuBLAS via conv_core.cpp).
//
// im2col: one thread per column element, so consecutive threads write consecutive columns.
// col2im: one thread per input element (per image of the chunk), gathering the column entries that read it:
// no two threads write the same element, so it needs no atomics and is deterministic.
// float16/bfloat16 are loaded and stored as such; col2im's sums run in float32 (at::acc_type).
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "conv_core.h"
#include "cuda_launch.h"

namespace manual_conv {
namespace {

template <typename scalar_t>
__global__ void im2col_kernel(const scalar_t* __restrict__ input, const ConvShape shape, const ColumnChunk chunk,
                              scalar_t* __restrict__ columns) {
  const int64_t columns_count = chunk.images * chunk.pixels_per_image;
  const int64_t elements = shape.in_channels * shape.kernel_height * shape.kernel_width * columns_count;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < elements;
       index += int64_t(gridDim.x) * blockDim.x) {
    int64_t channel, tap_y, tap_x, image, out_y, out_x;
    column_row_taps(index / columns_count, shape.kernel_height, shape.kernel_width, &channel, &tap_y, &tap_x);
    column_pixel(chunk, shape.out_width, index % columns_count, &image, &out_y, &out_x);
    const int64_t in_y =
        input_coordinate(out_y, tap_y, shape.stride_height, shape.padding_height, shape.dilation_height);
    const int64_t in_x = input_coordinate(out_x, tap_x, shape.stride_width, shape.padding_width, shape.dilation_width);
    const bool inside = in_y >= 0 && in_y < shape.in_height && in_x >= 0 && in_x < shape.in_width;
    columns[index] =
        inside ? input[((image * shape.in_channels + channel) * shape.in_height + in_y) * shape.in_width + in_x]
               : scalar_t(0);
  }
}

template <typename scalar_t>
__global__ void col2im_kernel(const scalar_t* __restrict__ columns, const ConvShape shape, const ColumnChunk chunk,
                              scalar_t* __restrict__ grad_input) {
  using accscalar_t = at::acc_type<scalar_t, true>;
  const int64_t columns_count = chunk.images * chunk.pixels_per_image;
  const int64_t plane_size = shape.in_height * shape.in_width;
  const int64_t image_size = shape.in_channels * plane_size;
  const int64_t elements = chunk.images * image_size;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < elements;
       index += int64_t(gridDim.x) * blockDim.x) {
    const int64_t image = chunk.first_image + index / image_size;
    const int64_t channel = index % image_size / plane_size;
    const int64_t in_y = index % plane_size / shape.in_width;
    const int64_t in_x = index % shape.in_width;
    accscalar_t sum = 0;
    for (int64_t tap_y = 0; tap_y < shape.kernel_height; ++tap_y) {
      int64_t out_y;
      if (!output_coordinate(in_y, tap_y, shape.stride_height, shape.padding_height, shape.dilation_height,
                             shape.out_height, &out_y)) {
        continue;
      }
      for (int64_t tap_x = 0; tap_x < shape.kernel_width; ++tap_x) {
        int64_t out_x;
        if (!output_coordinate(in_x, tap_x, shape.stride_width, shape.padding_width, shape.dilation_width,
                               shape.out_width, &out_x)) {
          continue;
        }
        const int64_t column = pixel_column(chunk, shape.out_width, image, out_y, out_x);
        if (column >= 0) {
          const int64_t row = (channel * shape.kernel_height + tap_y) * shape.kernel_width + tap_x;
          sum += static_cast<accscalar_t>(columns[row * columns_count + column]);
        }
      }
    }
    scalar_t& destination = grad_input[chunk.first_image * image_size + index];
    // The image's first chunk overwrites it; later chunks of the same image add to it.
    destination = chunk.first_pixel == 0 ? static_cast<scalar_t>(sum)
                                         : static_cast<scalar_t>(static_cast<accscalar_t>(destination) + sum);
  }
}

void im2col_cuda(const at::Tensor& input, const ConvShape& shape, const ColumnChunk& chunk, at::Tensor& columns) {
  const int64_t elements = columns.numel();
  if (elements == 0) {
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "manual_conv_im2col_cuda", [&] {
    im2col_kernel<scalar_t><<<blocks_for(elements), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        input.const_data_ptr<scalar_t>(), shape, chunk, columns.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void col2im_cuda(const at::Tensor& columns, const ConvShape& shape, const ColumnChunk& chunk, at::Tensor& grad_input) {
  const int64_t elements = chunk.images * shape.in_channels * shape.in_height * shape.in_width;
  if (elements == 0) {
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, columns.scalar_type(), "manual_conv_col2im_cuda", [&] {
    col2im_kernel<scalar_t><<<blocks_for(elements), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        columns.const_data_ptr<scalar_t>(), shape, chunk, grad_input.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// 64 MiB per chunk: few, large launches and GEMMs, with memory that stays bounded whatever the batch.
constexpr DeviceKernels kCudaKernels{&sequential_blocks, &one_block, int64_t(64) << 20, false, &im2col_cuda,
                                     &col2im_cuda};

}  // namespace
}  // namespace manual_conv

TORCH_LIBRARY_IMPL(manual_conv, CUDA, library) {
  manual_conv::register_device_ops<manual_conv::kCudaKernels>(library);
}
