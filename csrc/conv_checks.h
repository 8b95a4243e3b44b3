// Argument checks of the conv ops, shared by the im2col core (conv_core.cpp) and the Winograd core
// (winograd_core.cpp): each bad argument gets a RuntimeError naming the op, never a crash in a kernel.
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>

#include "conv_index.h"

namespace manual_conv {

void check_4d(const char* op, const char* name, at::IntArrayRef sizes);

// The dtypes torch's convolutions compute: floating, complex and integer (a device's im2col/col2im may support
// fewer: CUDA's are floating-point only, and say so; Winograd's are float32 and float64).
void check_numeric(const char* op, const char* name, const at::Tensor& tensor);

// The tensor as the kernels read it: dense NCHW, a lazy conjugate resolved (they read memory, not the conj bit).
at::Tensor dense(const at::Tensor& tensor);

// Two tensors that meet in one GEMM: same dtype, same device.
void check_same_dtype_and_device(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                                 const at::Tensor& b);

// Checks the hyper-parameters against the input and weight sizes and computes every size of the conv.
ConvShape checked_shape(const char* op, at::IntArrayRef input_size, at::IntArrayRef weight_size,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// grad_output is the output of the conv it is the gradient of, or its first rows and columns: a transposed
// convolution whose output_padding reaches past the stride has fewer input rows than the conv of its output
// gives back, and the missing ones contribute nothing (no zeros are multiplied in for them). The shape then
// describes the output positions that exist.
void fit_grad_output(const char* op, const at::Tensor& grad_output, ConvShape& shape);

// Every check of one op's arguments but the dtype's (which the cores check once they know the call has
// elements: torch computes an empty conv of any dtype), and the conv's sizes.
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
