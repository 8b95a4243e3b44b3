// Argument checks of the conv ops, shared by the im2col core (conv_core.cpp) and the Winograd core
// (winograd_core.cpp): each bad argument gets a RuntimeError naming the op, never a crash in a kernel.
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>

#include "conv_index.h"

namespace manual_conv {

void check_4d(const char* op, const char* name, at::IntArrayRef sizes);

void check_floating(const char* op, const char* name, const at::Tensor& tensor);

// Two tensors that meet in one GEMM: same dtype, same device.
void check_same_dtype_and_device(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                                 const at::Tensor& b);

// Checks the hyper-parameters against the input and weight sizes and computes every size of the conv.
ConvShape checked_shape(const char* op, at::IntArrayRef input_size, at::IntArrayRef weight_size,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// grad_output must be exactly the output of the conv it is the gradient of.
void check_grad_output_size(const char* op, const at::Tensor& grad_output, const ConvShape& shape);

// Every check of one op's arguments (as the four checks above combine for it), and the conv's sizes.
ConvShape checked_conv2d(const char* op, const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups);
ConvShape checked_conv2d_input_grad(const char* op, const at::Tensor& grad_output, const at::Tensor& weight,
                                    at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, int64_t groups);
ConvShape checked_conv2d_weight_grad(const char* op, const at::Tensor& input, const at::Tensor& grad_output,
                                     at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t groups);

}  // namespace manual_conv
