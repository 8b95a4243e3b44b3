// CUDA kernels of the compiled layers and their CUDA registration: one thread per output element (grid-stride
// loops, in the output's memory order), each element computed by the function of layer_index.h that the CPU
// kernels call too.
// float16/bfloat16 are loaded and stored as such and compared in float (at::opmath_type), as on the CPU.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "cuda_launch.h"
#include "layers_core.h"

namespace manual_conv {
namespace {

// One thread per output element, in memory order: consecutive threads scan neighbouring windows of one plane
// (contiguous memory) or the same window of neighbouring channels (channels_last, whose loads then coalesce).
template <typename scalar_t>
__global__ void max_pool2d_kernel(const scalar_t* __restrict__ input, const PoolShape shape, bool channels_last,
                                  scalar_t* __restrict__ output, int64_t* __restrict__ indices) {
  const int64_t out_plane_size = shape.out_height * shape.out_width;
  const int64_t in_plane_size = shape.in_height * shape.in_width;
  const int64_t elements = shape.planes * out_plane_size;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < elements;
       index += int64_t(gridDim.x) * blockDim.x) {
    // the element's plane and pixel; its plane's element (h, w) is plane[(h*W + w) * pixel_stride]
    int64_t pixel, pixel_stride;
    const scalar_t* plane;
    if (channels_last) {
      const int64_t image_pixel = index / shape.channels;  // (image, pixel) of an (N, H_out, W_out, C) element
      pixel = image_pixel % out_plane_size;
      pixel_stride = shape.channels;
      plane = input + image_pixel / out_plane_size * in_plane_size * shape.channels + index % shape.channels;
    } else {
      pixel = index % out_plane_size;
      pixel_stride = 1;
      plane = input + index / out_plane_size * in_plane_size;
    }
    max_pool_window<at::opmath_type<scalar_t>>(plane, pixel_stride, shape, pixel / shape.out_width,
                                               pixel % shape.out_width, &output[index], &indices[index]);
  }
}

template <typename scalar_t>
__global__ void relu_backward_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ output,
                                     scalar_t* __restrict__ grad_input, int64_t elements) {
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < elements;
       index += int64_t(gridDim.x) * blockDim.x) {
    grad_input[index] = relu_input_grad<at::opmath_type<scalar_t>>(grad_output[index], output[index]);
  }
}

void max_pool2d_cuda(const at::Tensor& input, const PoolShape& shape, bool channels_last, at::Tensor& output,
                     at::Tensor& indices) {
  const int64_t elements = output.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "manual_conv_max_pool2d_cuda", [&] {
    max_pool2d_kernel<scalar_t><<<blocks_for(elements), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        input.const_data_ptr<scalar_t>(), shape, channels_last, output.data_ptr<scalar_t>(),
        indices.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void relu_backward_cuda(const at::Tensor& grad_output, const at::Tensor& output, at::Tensor& grad_input) {
  const int64_t elements = grad_input.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "manual_conv_relu_backward_cuda", [&] {
    relu_backward_kernel<scalar_t><<<blocks_for(elements), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        grad_output.const_data_ptr<scalar_t>(), output.const_data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>(),
        elements);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

constexpr LayerKernels kCudaLayerKernels{&max_pool2d_cuda, &relu_backward_cuda};

}  // namespace
}  // namespace manual_conv

TORCH_LIBRARY_IMPL(manual_conv, CUDA, library) {
  manual_conv::register_layer_ops<manual_conv::kCudaLayerKernels>(library);
}
