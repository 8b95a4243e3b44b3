// CPU kernels of the compiled layers: at::parallel_for over the planes (max pooling) or over the elements
// (ReLU's backward), each element computed by the function of layer_index.h that the CUDA kernels call too.
#include <algorithm>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>  // at::internal::GRAIN_SIZE, ATen's work per parallel task

#include "layers_core.h"
#include "vector_clones.h"

namespace manual_conv {
namespace {

template <typename scalar_t>
void max_pool2d_kernel(const scalar_t* input, const PoolShape& shape, scalar_t* output, int64_t* indices) {
  const int64_t in_plane_size = shape.in_height * shape.in_width;
  const int64_t out_plane_size = shape.out_height * shape.out_width;
  // Whole planes per task, enough of them that a task has about as many taps to scan as ATen's grain.
  const int64_t taps_per_plane = out_plane_size * shape.kernel_height * shape.kernel_width;
  const int64_t planes_per_task = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, taps_per_plane));
  at::parallel_for(0, shape.planes, planes_per_task, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* in_plane = input + plane * in_plane_size;
      scalar_t* out_plane = output + plane * out_plane_size;
      int64_t* index_plane = indices + plane * out_plane_size;
      for (int64_t out_y = 0; out_y < shape.out_height; ++out_y) {
        for (int64_t out_x = 0; out_x < shape.out_width; ++out_x) {
          const int64_t pixel = out_y * shape.out_width + out_x;
          max_pool_window<at::opmath_type<scalar_t>>(in_plane, shape, out_y, out_x, &out_plane[pixel],
                                                     &index_plane[pixel]);
        }
      }
    }
  });
}

void max_pool2d_cpu(const at::Tensor& input, const PoolShape& shape, at::Tensor& output, at::Tensor& indices) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "manual_conv_max_pool2d_cpu", [&] {
    max_pool2d_kernel(input.const_data_ptr<scalar_t>(), shape, output.data_ptr<scalar_t>(),
                      indices.data_ptr<int64_t>());
  });
}

// grad_input[k] = relu_input_grad(grad_output[k], output[k]) for k < count. float16/bfloat16 compare in float.
template <typename scalar_t>
void relu_backward_range(const scalar_t* grad_output, const scalar_t* output, scalar_t* grad_input, int64_t count) {
  for (int64_t k = 0; k < count; ++k) {
    grad_input[k] = relu_input_grad<at::opmath_type<scalar_t>>(grad_output[k], output[k]);
  }
}

// float and double: the same loop, vectorised (a compare and a blend per vector) with the widest instructions
// the CPU has.
MANUAL_CONV_VECTOR_CLONES void relu_backward_range(const float* __restrict grad_output,
                                                   const float* __restrict output, float* __restrict grad_input,
                                                   int64_t count) {
  for (int64_t k = 0; k < count; ++k) {
    grad_input[k] = relu_input_grad<float>(grad_output[k], output[k]);
  }
}

MANUAL_CONV_VECTOR_CLONES void relu_backward_range(const double* __restrict grad_output,
                                                   const double* __restrict output, double* __restrict grad_input,
                                                   int64_t count) {
  for (int64_t k = 0; k < count; ++k) {
    grad_input[k] = relu_input_grad<double>(grad_output[k], output[k]);
  }
}

void relu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& output, at::Tensor& grad_input) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "manual_conv_relu_backward_cpu", [&] {
    const scalar_t* grad = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* out = output.const_data_ptr<scalar_t>();
    scalar_t* result = grad_input.data_ptr<scalar_t>();
    at::parallel_for(0, grad_input.numel(), at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      relu_backward_range(grad + begin, out + begin, result + begin, end - begin);
    });
  });
}

constexpr LayerKernels kCpuLayerKernels{&max_pool2d_cpu, &relu_backward_cpu};

}  // namespace
}  // namespace manual_conv

TORCH_LIBRARY_IMPL(manual_conv, CPU, library) {
  manual_conv::register_layer_ops<manual_conv::kCpuLayerKernels>(library);
}
