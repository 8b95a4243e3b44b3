// Argument checks of the conv ops (conv_checks.h).
#include "conv_checks.h"

#include <vector>

namespace manual_conv {
namespace {

void check_ints(const char* op, const char* name, at::IntArrayRef values, int64_t lowest) {
  TORCH_CHECK(values.size() == 2, op, ": expected ", name, " to be a list of 2 ints, but got ", values);
  TORCH_CHECK(values[0] >= lowest && values[1] >= lowest, op, ": ", name, " must be ",
              lowest == 0 ? "non-negative" : "positive", ", but got ", name, "=", values);
}

}  // namespace

void check_4d(const char* op, const char* name, at::IntArrayRef sizes) {
  TORCH_CHECK(sizes.size() == 4, op, ": expected ", name, " to be 4-D (N, C, H, W)",
              name[0] == 'w' ? " i.e. (out_channels, in_channels/groups, kH, kW)" : "", ", but got size ", sizes);
  for (const int64_t size : sizes) {
    TORCH_CHECK(size >= 0, op, ": ", name, " sizes must be non-negative, but got ", sizes);
  }
}

void check_numeric(const char* op, const char* name, const at::Tensor& tensor) {
  TORCH_CHECK(tensor.scalar_type() != at::kBool, op, ": expected ", name, " to be a numeric tensor, but got Bool");
}

at::Tensor dense(const at::Tensor& tensor) { return tensor.resolve_conj().contiguous(); }

void check_same_dtype_and_device(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                                 const at::Tensor& b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": expected ", name_a, " and ", name_b,
              " to have the same dtype, but got ", name_a, " ", a.scalar_type(), " and ", name_b, " ",
              b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), op, ": expected ", name_a, " and ", name_b,
              " to be on the same device, but got ", name_a, " on ", a.device(), " and ", name_b, " on ",
              b.device());
}

ConvShape checked_shape(const char* op, at::IntArrayRef input_size, at::IntArrayRef weight_size,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_4d(op, "input", input_size);
  check_4d(op, "weight", weight_size);
  check_ints(op, "stride", stride, 1);
  check_ints(op, "padding", padding, 0);
  check_ints(op, "dilation", dilation, 1);
  TORCH_CHECK(groups > 0, op, ": non-positive groups is not supported, but got groups=", groups);
  TORCH_CHECK(weight_size[0] >= groups, op, ": given groups=", groups, ", expected weight to be at least ", groups,
              " at dimension 0, but got weight of size ", weight_size, " instead");
  TORCH_CHECK(weight_size[0] % groups == 0, op, ": expected out_channels (weight.size(0) = ", weight_size[0],
              ") to be divisible by groups=", groups);
  TORCH_CHECK(input_size[1] == weight_size[1] * groups, op, ": given groups=", groups, ", weight of size ",
              weight_size, ", expected input", input_size, " to have ", weight_size[1] * groups,
              " channels, but got ", input_size[1], " channels instead");
  TORCH_CHECK(weight_size[2] > 0 && weight_size[3] > 0, op, ": kernel size must be positive, but got weight of size ",
              weight_size);
  const int64_t padded_height = input_size[2] + 2 * padding[0];
  const int64_t padded_width = input_size[3] + 2 * padding[1];
  const int64_t dilated_kernel_height = dilation[0] * (weight_size[2] - 1) + 1;
  const int64_t dilated_kernel_width = dilation[1] * (weight_size[3] - 1) + 1;
  // (A transposed convolution of an empty batch may ask for the input gradient of such a conv: no element.)
  TORCH_CHECK(input_size[0] == 0 || (padded_height >= dilated_kernel_height && padded_width >= dilated_kernel_width),
              op,
              ": calculated padded input size per channel: (", padded_height, " x ", padded_width,
              "). Kernel size (dilated): (", dilated_kernel_height, " x ", dilated_kernel_width,
              "). Kernel size can't be greater than actual input size");
  ConvShape shape;
  shape.batch = input_size[0];
  shape.in_channels = input_size[1];
  shape.in_height = input_size[2];
  shape.in_width = input_size[3];
  shape.out_channels = weight_size[0];
  shape.kernel_height = weight_size[2];
  shape.kernel_width = weight_size[3];
  shape.stride_height = stride[0];
  shape.stride_width = stride[1];
  shape.padding_height = padding[0];
  shape.padding_width = padding[1];
  shape.dilation_height = dilation[0];
  shape.dilation_width = dilation[1];
  shape.groups = groups;
  shape.out_height = conv_output_size(shape.in_height, shape.kernel_height, stride[0], padding[0], dilation[0]);
  shape.out_width = conv_output_size(shape.in_width, shape.kernel_width, stride[1], padding[1], dilation[1]);
  return shape;
}

void fit_grad_output(const char* op, const at::Tensor& grad_output, ConvShape& shape) {
  const std::vector<int64_t> expected{shape.batch, shape.out_channels, shape.out_height, shape.out_width};
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == shape.batch && grad_output.size(1) == shape.out_channels &&
                  grad_output.size(2) <= shape.out_height && grad_output.size(3) <= shape.out_width,
              op, ": expected grad_output of size ", at::IntArrayRef(expected),
              " (the output size of this convolution) or its first rows and columns, but got ", grad_output.sizes());
  shape.out_height = grad_output.size(2);
  shape.out_width = grad_output.size(3);
}

ConvShape checked_conv2d(const char* op, const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups) {
  check_same_dtype_and_device(op, "input", input, "weight", weight);
  const ConvShape shape = checked_shape(op, input.sizes(), weight.sizes(), stride, padding, dilation, groups);
  if (bias.has_value() && bias->defined()) {
    check_same_dtype_and_device(op, "input", input, "bias", *bias);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == shape.out_channels, op, ": expected bias of size [",
                shape.out_channels, "] (out_channels), but got ", bias->sizes());
  }
  return shape;
}

ConvShape checked_conv2d_input_grad(const char* op, const at::Tensor& grad_output, const at::Tensor& weight,
                                    at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, int64_t groups) {
  check_same_dtype_and_device(op, "grad_output", grad_output, "weight", weight);
  ConvShape shape = checked_shape(op, input_size, weight.sizes(), stride, padding, dilation, groups);
  fit_grad_output(op, grad_output, shape);
  return shape;
}

ConvShape checked_conv2d_weight_grad(const char* op, const at::Tensor& input, const at::Tensor& grad_output,
                                     at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t groups) {
  check_same_dtype_and_device(op, "input", input, "grad_output", grad_output);
  ConvShape shape = checked_shape(op, input.sizes(), weight_size, stride, padding, dilation, groups);
  fit_grad_output(op, grad_output, shape);
  return shape;
}

}  // namespace manual_conv
