// Device-agnostic half of the compiled layers: argument checks (PyTorch's, with its messages), layouts and
// allocation. The devices' kernels (layers_cpu.cpp, layers_cuda.cu) only fill the tensors allocated here.
#include "layers_core.h"

#include <vector>

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

namespace manual_conv {
namespace {

// The dtypes the kernels are compiled for; others get PyTorch's error for a dtype a kernel lacks.
void check_kernel_dtype(const char* op, const at::Tensor& tensor) {
  const at::ScalarType dtype = tensor.scalar_type();
  TORCH_CHECK_NOT_IMPLEMENTED(
      dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, "\"", op,
      "\" not implemented for '", c10::toString(dtype), "'");
}

void check_pair(const char* op, const char* name, at::IntArrayRef values) {
  TORCH_CHECK(values.size() == 2, op, ": expected ", name, " to be a list of 2 ints, but got ", values);
}

// PyTorch's checks of max_pool2d's arguments, in its order and with its messages (pooling_output_shape, then
// pool2d_shape_check), and every size of the pooling.
PoolShape checked_pool_shape(const char* op, const at::Tensor& input, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             bool ceil_mode) {
  check_pair(op, "kernel_size", kernel_size);
  check_pair(op, "stride", stride);
  check_pair(op, "padding", padding);
  check_pair(op, "dilation", dilation);
  for (size_t axis = 0; axis < 2; ++axis) {
    TORCH_CHECK(stride[axis] != 0, op, ": stride should not be zero");
    TORCH_CHECK(padding[axis] >= 0, op, ": pad must be non-negative, but got pad: ", padding[axis]);
    TORCH_CHECK(padding[axis] <= ((kernel_size[axis] - 1) * dilation[axis] + 1) / 2, op,
                ": pad should be at most half of effective kernel size, but got pad=", padding[axis],
                ", kernel_size=", kernel_size[axis], " and dilation=", dilation[axis]);
  }
  TORCH_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0, op, ": kernel size should be greater than zero, but got kH: ",
              kernel_size[0], " kW: ", kernel_size[1]);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, op, ": stride should be greater than zero, but got dH: ", stride[0],
              " dW: ", stride[1]);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, op,
              ": dilation should be greater than zero, but got dilationH: ", dilation[0], " dilationW: ", dilation[1]);
  TORCH_CHECK((input.dim() == 3 || input.dim() == 4) && input.size(-3) != 0 && input.size(-2) != 0 &&
                  input.size(-1) != 0,
              op, ": expected a 3-D (C, H, W) or 4-D (N, C, H, W) input with optional 0 batch size, but got: ",
              input.sizes());
  TORCH_CHECK(kernel_size[1] / 2 >= padding[1] && kernel_size[0] / 2 >= padding[0], op,
              ": pad should be smaller than or equal to half of kernel size, but got padW = ", padding[1],
              ", padH = ", padding[0], ", kW = ", kernel_size[1], ", kH = ", kernel_size[0]);
  PoolShape shape;
  shape.channels = input.size(-3);
  shape.planes = input.dim() == 4 ? input.size(0) * shape.channels : shape.channels;
  shape.in_height = input.size(-2);
  shape.in_width = input.size(-1);
  shape.kernel_height = kernel_size[0];
  shape.kernel_width = kernel_size[1];
  shape.stride_height = stride[0];
  shape.stride_width = stride[1];
  shape.padding_height = padding[0];
  shape.padding_width = padding[1];
  shape.dilation_height = dilation[0];
  shape.dilation_width = dilation[1];
  shape.out_height = pooling_output_size(shape.in_height, shape.kernel_height, shape.stride_height,
                                         shape.padding_height, shape.dilation_height, ceil_mode);
  shape.out_width = pooling_output_size(shape.in_width, shape.kernel_width, shape.stride_width, shape.padding_width,
                                        shape.dilation_width, ceil_mode);
  TORCH_CHECK(shape.out_height >= 1 && shape.out_width >= 1, op, ": Given input size: (", input.size(1), "x",
              shape.in_height, "x", shape.in_width, "). Calculated output size: (", input.size(1), "x",
              shape.out_height, "x", shape.out_width, "). Output size is too small");
  return shape;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> max_pool2d(const LayerKernels& kernels, const at::Tensor& input_arg,
                                              at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                              at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const char* op = "manual_conv::max_pool2d";
  check_kernel_dtype(op, input_arg);
  const PoolShape shape = checked_pool_shape(op, input_arg, kernel_size, stride, padding, dilation, ceil_mode);
  const c10::OptionalDeviceGuard device_guard(input_arg.device());
  // PyTorch's layout rule: channels_last output for an input that suggests it (only 4-D), else contiguous.
  const at::MemoryFormat memory_format = input_arg.suggest_memory_format();
  const at::Tensor input = input_arg.contiguous(memory_format);
  std::vector<int64_t> output_size = input.sizes().vec();
  output_size.end()[-2] = shape.out_height;
  output_size.end()[-1] = shape.out_width;
  at::Tensor output = at::empty(output_size, input.options().memory_format(memory_format));
  at::Tensor indices = at::empty(output_size, input.options().dtype(at::kLong).memory_format(memory_format));
  if (output.numel() > 0) {
    kernels.max_pool2d(input, shape, memory_format == at::MemoryFormat::ChannelsLast, output, indices);
  }
  return {output, indices};
}

at::Tensor relu_backward(const LayerKernels& kernels, const at::Tensor& grad_output_arg, const at::Tensor& output_arg) {
  const char* op = "manual_conv::relu_backward";
  check_kernel_dtype(op, grad_output_arg);
  TORCH_CHECK(grad_output_arg.scalar_type() == output_arg.scalar_type(), op,
              ": expected grad_output and output to have the same dtype, but got grad_output ",
              grad_output_arg.scalar_type(), " and output ", output_arg.scalar_type());
  TORCH_CHECK(grad_output_arg.device() == output_arg.device(), op,
              ": expected grad_output and output to be on the same device, but got grad_output on ",
              grad_output_arg.device(), " and output on ", output_arg.device());
  TORCH_CHECK(grad_output_arg.sizes() == output_arg.sizes(), op,
              ": expected grad_output and output of the same size, but got grad_output of size ",
              grad_output_arg.sizes(), " and output of size ", output_arg.sizes());
  const c10::OptionalDeviceGuard device_guard(grad_output_arg.device());
  // An elementwise op only needs the three tensors laid out alike in one dense block. empty_like keeps
  // grad_output's strides exactly when it is dense: then, if output has them too, the caller's layout is
  // kept (channels_last stays channels_last, as with the Python path's torch.where); otherwise all three
  // are contiguous. The fake kernel (manual_conv/ops/library.py) applies the same rule.
  at::Tensor grad_input = at::empty_like(grad_output_arg);
  const bool shared_dense_layout =
      grad_input.strides() == grad_output_arg.strides() && output_arg.strides() == grad_output_arg.strides();
  const at::Tensor grad_output = shared_dense_layout ? grad_output_arg : grad_output_arg.contiguous();
  const at::Tensor output = shared_dense_layout ? output_arg : output_arg.contiguous();
  if (!shared_dense_layout) {
    grad_input = at::empty(grad_output.sizes(), grad_output.options());
  }
  if (grad_input.numel() > 0) {
    kernels.relu_backward(grad_output, output, grad_input);
  }
  return grad_input;
}

}  // namespace manual_conv
