"""Public functions with torch.nn.functional's names, signatures, defaults and errors.

Thin: each normalises its arguments as PyTorch does, validates them, and applies the hand-written
autograd Function of ``manual_conv.ops``. Under ``torch.autocast`` each first casts its tensor arguments by torch's
autocast policy for the native op, on CPU and CUDA (``manual_conv.autocast``, applied at the end of this module).
Sections follow the op families of ``manual_conv/ops/``. Every other public name of torch.nn.functional resolves
to torch's own object (``manual_conv.torch_names``), a function that computes with a warning that it runs natively.
"""
import math
import numbers
import sys
import warnings

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch.nn import _reduction as _Reduction

from .ops import activation as _activation
from .ops import attention as _attention
from .ops import conv as _conv
from .ops import linear as _linear
from .ops import loss as _loss
from .ops import norm as _norm
from .ops import pool as _pool
from .ops import stochastic_depth as _stochastic_depth
from .ops._utils import _pair, not_implemented_for, opmath_dtype, require_floating, scalar_type_name
from . import autocast as _autocast
from . import torch_names

# torch.nn.functional's names without a twin here: torch's own objects (manual_conv.torch_names); a star import
# gives torch's names and stochastic_depth (torchvision.ops')
__getattr__ = torch_names.resolver(sys.modules[__name__], F, torch_names.functional_computes,
                                   "torch.nn.functional functions", own_names=("stochastic_depth",))


def __dir__():
    return torch_names.directory(sys.modules[__name__], F)

# ---------------------------------------------------------------------------------------------------- convolution


def _same_padding(weight, stride, dilation):
    """padding='same': d(k − 1) zeros in total per dim, half on each side; an odd one goes at the end. (None for a
    kernel of size 0, which the checks of kernels without elements then reject as torch does.)"""
    if any(s != 1 for s in stride):
        raise RuntimeError("padding='same' is not supported for strided convolutions")
    totals = [max(0, d * (k - 1)) for k, d in zip(weight.shape[2:], dilation)]
    return tuple(t // 2 for t in totals), [t % 2 for t in totals]


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation) as torch.nn.functional.conv2d, through ``Conv2dFunction``.

    input (N, C_in, H, W) or unbatched (C_in, H, W); weight (C_out, C_in/groups, kH, kW); padding an int, a pair,
    'valid' (none) or 'same' (output as large as the input, stride 1 only).
    """
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    end_padding = [0, 0]
    if padding == "same":
        padding, end_padding = _same_padding(weight, stride, dilation)
    elif padding == "valid":
        padding = (0, 0)
    elif isinstance(padding, str):
        raise RuntimeError(f"Invalid padding string: '{padding}'")
    else:
        padding = _pair(padding, "padding")
    _conv.check_conv2d_args("conv2d", input, weight, bias, stride, padding, dilation, groups, end_padding=end_padding)
    batched = input if input.dim() == 4 else input.unsqueeze(0)
    _conv.check_elements(batched, weight)
    _conv.check_dtype(batched, dilation)
    if any(end_padding):
        batched = F.pad(batched, (0, end_padding[1], 0, end_padding[0]))
    output = _conv.Conv2dFunction.apply(batched, weight, bias, stride, padding, dilation, groups)
    return output if input.dim() == 4 else output.squeeze(0)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2-D transposed convolution as torch.nn.functional.conv_transpose2d, through ``ConvTranspose2dFunction``.

    The adjoint of conv2d: input (N, C_in, H, W) or (C_in, H, W); weight (C_in, C_out/groups, kH, kW);
    H_out = (H − 1)·stride − 2·padding + dilation·(kH − 1) + output_padding + 1.
    """
    if isinstance(padding, str):
        raise TypeError("conv_transpose2d(): argument 'padding' must be tuple of ints, not str")
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    output_padding = _pair(output_padding, "output_padding")
    _conv.check_conv2d_args("conv_transpose2d", input, weight, bias, stride, padding, dilation, groups, transposed=True)
    batched = input if input.dim() == 4 else input.unsqueeze(0)
    _conv.check_elements(batched, weight, transposed=True)
    output_size = _conv.transposed_output_size(batched, weight, stride, padding, output_padding, groups, dilation)
    _conv.check_dtype(batched, dilation, transposed=True)
    output = _conv.ConvTranspose2dFunction.apply(batched, weight, bias, output_size, stride, padding, dilation, groups)
    return output if input.dim() == 4 else output.squeeze(0)

# -------------------------------------------------------------------------------------------------------- pooling


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pooling as torch.nn.functional.max_pool2d, through ``MaxPool2dFunction``.

    input (N, C, H, W) or unbatched (C, H, W), of any real dtype; stride defaults to kernel_size. With
    return_indices, also the arg-max of every window as a flat index h·W + w into its input plane.
    """
    if input.dim() not in (3, 4):
        raise RuntimeError("non-empty 3D or 4D (batch mode) tensor expected for input")
    pool_args = _pool.normalize_pool2d_args("max_pool2d", kernel_size, stride, padding, dilation)
    _pool.check_pool2d_args("max_pool2d", input, *pool_args, ceil_mode)
    output, indices = _pool.MaxPool2dFunction.apply(input, *pool_args, ceil_mode)
    return (output, indices) if return_indices else output


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling as torch.nn.functional.avg_pool2d, through ``AvgPool2dFunction``.

    input (N, C, H, W) or (C, H, W), floating point or int64; stride defaults to kernel_size. Each window's sum is
    divided by divisor_override, or by the window's size with (count_include_pad) or without the zero padding.
    """
    if divisor_override is not None and (isinstance(divisor_override, bool) or not isinstance(divisor_override, int)):
        raise TypeError(f"avg_pool2d(): argument 'divisor_override' must be int, not {type(divisor_override).__name__}")
    if divisor_override == 0:
        raise RuntimeError("divisor must be not zero")
    input.size(-3)  # PyTorch's IndexError for input with fewer than 3 dims
    kernel_size, stride, padding, _ = _pool.normalize_pool2d_args("avg_pool2d", kernel_size, stride, padding)
    _pool.check_pool2d_args("avg_pool2d", input, kernel_size, stride, padding, (1, 1), ceil_mode)
    return _pool.AvgPool2dFunction.apply(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                         divisor_override)


def _adaptive_output_size(input, output_size, function):
    """output_size as the adaptive poolings take it: an int n is (n, n); in a sequence None keeps the input's size
    (torch.nn.modules.utils._list_with_default, with its ValueError), and anything but ints is a TypeError."""
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        return (output_size, output_size)
    if isinstance(output_size, bool):
        raise TypeError(f"{function}(): argument 'output_size' (position 2) must be tuple of ints, not bool")
    if len(input.shape) <= len(output_size):
        raise ValueError(f"Input dimension should be at least {len(output_size) + 1}")
    output_size = tuple(
        size if size is not None else default for size, default in zip(output_size, input.shape[-len(output_size):])
    )
    for position, size in enumerate(output_size):
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"{function}(): argument 'output_size' (position 2) must be tuple of ints, but found "
                            f"element of type {type(size).__name__} at pos {position}")
    return output_size


def adaptive_avg_pool2d(input, output_size):
    """2-D adaptive average pooling as torch.nn.functional.adaptive_avg_pool2d, through
    ``AdaptiveAvgPool2dFunction``, or ``GlobalAvgPool2dFunction`` for a 1×1 output (the mean over the plane).

    output_size an int or a pair, None keeping that input size; window i spans ⌊i·H/H_out⌋ .. ⌈(i+1)·H/H_out⌉.
    """
    output_size = _adaptive_output_size(input, output_size, "adaptive_avg_pool2d")
    _pool.check_adaptive_pool2d_args(input, output_size)
    if output_size == (1, 1):
        return _pool.GlobalAvgPool2dFunction.apply(input)
    return _pool.AdaptiveAvgPool2dFunction.apply(input, output_size)


def adaptive_max_pool2d_with_indices(input, output_size, return_indices=False):
    """2-D adaptive max pooling as torch.nn.functional.adaptive_max_pool2d_with_indices, through
    ``AdaptiveMaxPool2dFunction``: (y, indices), the max of every window and its arg-max as a flat index h·W + w
    into its input plane (return_indices is ignored, as torch's).

    input (N, C, H, W) or unbatched (C, H, W), floating point; output_size an int or a pair, None keeping that input
    size; window i spans ⌊i·H/H_out⌋ .. ⌈(i+1)·H/H_out⌉.
    """
    output_size = _adaptive_output_size(input, output_size, "adaptive_max_pool2d")
    _pool.check_adaptive_max_pool2d_args(input, output_size)
    return _pool.AdaptiveMaxPool2dFunction.apply(input, output_size)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """2-D adaptive max pooling as torch.nn.functional.adaptive_max_pool2d: y, or (y, indices) with
    return_indices (``adaptive_max_pool2d_with_indices``)."""
    output, indices = adaptive_max_pool2d_with_indices(input, output_size)
    return (output, indices) if return_indices else output

# ---------------------------------------------------------------------------------------------------- activations


def relu(input, inplace=False):
    """max(x, 0) element-wise, through ``ReLUFunction``; inplace=True overwrites and returns input, as torch does."""
    if input.dtype == torch.bool:
        raise NotImplementedError("Boolean inputs not supported for relu")
    if inplace:
        _check_inplace_allowed(input)
    if input.is_complex():
        raise NotImplementedError("clamp is not supported for complex types")
    return _activation.ReLUFunction.apply(input, inplace)


def relu_(input):
    """relu(input, inplace=True): torch.nn.functional.relu_."""
    return relu(input, inplace=True)


def _check_inplace_allowed(input):
    """PyTorch's errors, raised before anything is written, for an in-place op on a leaf that requires grad or on
    a view of one."""
    if not (torch.is_grad_enabled() and input.requires_grad):
        return
    if input._base is not None and input._base.is_leaf:
        raise RuntimeError("a view of a leaf Variable that requires grad is being used in an in-place operation.")
    if input.is_leaf:
        raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")


def _floating(input):
    """Integer and bool inputs are computed in the default floating dtype, as torch.sigmoid/torch.tanh promote;
    floating and complex inputs as they are."""
    return input if input.is_floating_point() or input.is_complex() else input.to(torch.get_default_dtype())


def sigmoid(input):
    """1 / (1 + e^{−x}) element-wise (complex too), through ``SigmoidFunction``."""
    return _activation.SigmoidFunction.apply(_floating(input))


def tanh(input):
    """tanh(x) element-wise (complex too), through ``TanhFunction``."""
    return _activation.TanhFunction.apply(_floating(input))


def gelu(input, *, approximate="none"):
    """x·Φ(x) element-wise (approximate='tanh': Φ by its tanh approximation), through ``GELUFunction``."""
    if not isinstance(approximate, str):
        raise TypeError(f"gelu(): argument 'approximate' must be str, not {type(approximate).__name__}")
    if approximate not in ("none", "tanh"):
        raise RuntimeError("approximate argument must be either none or tanh.")
    if not input.is_floating_point():
        raise not_implemented_for("GeluKernelImpl", input.dtype)
    return _activation.GELUFunction.apply(input, approximate)


def _softmax_dim(name, ndim, stacklevel):
    """torch's legacy choice when dim is None, with its deprecation warning: dim 0 for 0-, 1- and 3-D input
    (a single sample, unbatched image), else 1 (the dim after the batch)."""
    warnings.warn(
        f"Implicit dimension choice for {name} has been deprecated. Change the call to include dim=X as an argument.",
        stacklevel=stacklevel,
    )
    return 0 if ndim in (0, 1, 3) else 1


def _softmax_input(name, input, dim, stacklevel, dtype):
    """(input cast to dtype, dim wrapped), with torch's implicit dim and its errors, in torch's order: dim out of
    range (IndexError), then a non-floating input that has elements (NotImplementedError)."""
    if dim is None:
        dim = _softmax_dim(name, input.dim(), stacklevel + 2)  # past _softmax_input and autocast's wrapper
    if dtype is not None:
        input = input.to(dtype)
    ndim = max(input.dim(), 1)  # a 0-dim tensor is softmaxed as one of shape (1,)
    if not -ndim <= dim < ndim:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], but got {dim})")
    if not input.is_floating_point() and input.numel() > 0:
        kernel = "_lastdim_kernel_impl" if dim % ndim == ndim - 1 else "_kernel_impl"
        raise not_implemented_for(name + kernel, input.dtype)
    if input.is_complex() and input.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"_{name} does not support automatic differentiation for outputs with complex dtype.")
    return input, dim % ndim


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    """e^{x_i} / Σ_k e^{x_k} along dim (computed after subtracting the max), through ``SoftmaxFunction``."""
    input, dim = _softmax_input("softmax", input, dim, _stacklevel, dtype)
    if not input.is_floating_point():  # empty: torch returns an empty tensor of the input's dtype
        return torch.empty_like(input, memory_format=torch.contiguous_format)
    return _activation.SoftmaxFunction.apply(input, dim)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    """x_i − log Σ_k e^{x_k} along dim (computed after subtracting the max), through ``LogSoftmaxFunction``."""
    input, dim = _softmax_input("log_softmax", input, dim, _stacklevel, dtype)
    if not input.is_floating_point():  # empty: torch returns an empty tensor of the input's dtype
        return torch.empty_like(input, memory_format=torch.contiguous_format)
    return _activation.LogSoftmaxFunction.apply(input, dim)


def _number(value, function, name, position):
    """A Scalar argument as torch's argument parser takes it: a real Python number, or a 0-dim tensor that does not
    require grad (its value); anything else is torch's TypeError. (A complex number with an imaginary part is refused
    later, by ``_real``.)"""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad:
        return value.item()
    if not isinstance(value, numbers.Number):
        raise TypeError(
            f"{function}(): argument '{name}' (position {position}) must be Number, not {type(value).__name__}")
    return value


def _real(value, input):
    """A Scalar as the float torch's kernels convert it to (opmath: 'float' for float16/bfloat16/float32, 'double'
    for float64): a complex one only when its imaginary part is 0, else torch's overflow error."""
    if isinstance(value, complex):
        if value.imag != 0:
            kind = "double" if input.dtype == torch.float64 else "float"
            raise RuntimeError(f"value cannot be converted to type {kind} without overflow")
        return value.real
    return value


def _activation_input(kernel, input, inplace, complex_allowed=False):
    """torch's errors for an element-wise activation's input, in torch's order: an in-place call on a leaf that
    requires grad (or a view of one) first, then a dtype the kernel has no implementation for (integers, bool,
    complex unless allowed; even when empty)."""
    if inplace:
        _check_inplace_allowed(input)
    if not (input.is_floating_point() or complex_allowed and input.is_complex()):
        raise not_implemented_for(kernel, input.dtype)


def _input_copy(input, inplace):
    """For an in-place call whose backward or jvp needs x: x copied before it is overwritten, when a gradient or a
    tangent will be needed (torch's autograd saves such a copy too), else None. A differentiable copy, so that the
    double backward and forward-over-reverse reach x through it."""
    if not inplace:
        return None
    if input.requires_grad and torch.is_grad_enabled():
        return input.clone()
    if not torch.compiler.is_compiling() and forward_ad.unpack_dual(input).tangent is not None:
        return input.clone()  # (a compiled graph runs no forward mode)
    return None


def _int64(value):
    """Scalar::toLong: a hardtanh bound for an integer input, truncated toward 0, or torch's overflow error."""
    if isinstance(value, complex):
        value = value.real if value.imag == 0 else math.nan
    if not math.isfinite(value) or not -2.0**63 <= value < 2.0**63:
        raise RuntimeError("value cannot be converted to type int64_t without overflow")
    return int(value)


def _hardtanh(function, input, min_val, max_val, inplace):
    """hardtanh for hardtanh, hardtanh_ and relu6, after torch's checks: bounds as Scalars, the in-place check,
    no bool or complex input, and for an integer input bounds truncated to integers (non-negative for uint8)."""
    min_val, max_val = _number(min_val, function, "min_val", 2), _number(max_val, function, "max_val", 3)
    if inplace:
        _check_inplace_allowed(input)
    if input.dtype == torch.bool:
        raise NotImplementedError("Bool inputs not supported for hardtanh")
    if not (input.is_floating_point() or input.is_complex()):  # integers clamp with integer bounds, as torch's
        min_val, max_val = _int64(min_val), _int64(max_val)
        if input.dtype == torch.uint8 and (min_val < 0 or max_val < 0):
            raise RuntimeError("cannot do hardtanh on an unsigned type with negative limits")
    if input.is_complex():
        raise NotImplementedError("clamp is not supported for complex types")
    return _activation.HardtanhFunction.apply(input, min_val, max_val, inplace, _input_copy(input, inplace))


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    """min(max(x, min_val), max_val) element-wise, through ``HardtanhFunction``: ∂y/∂x = 1 strictly between the
    bounds, else 0 (at the bounds too). Any real dtype (integers with integer bounds); inplace=True overwrites and
    returns input. ValueError when min_val > max_val."""
    if min_val > max_val:
        raise ValueError("min_val cannot be greater than max_val")
    return _hardtanh("hardtanh_" if inplace else "hardtanh", input, min_val, max_val, inplace)


def hardtanh_(input, min_val=-1.0, max_val=1.0):
    """hardtanh in place: torch.nn.functional.hardtanh_, which (unlike hardtanh) accepts min_val > max_val and then
    sets every element to max_val, as torch.clamp does."""
    return _hardtanh("hardtanh_", input, min_val, max_val, True)


def relu6(input, inplace=False):
    """min(max(x, 0), 6) element-wise: hardtanh(x, 0, 6), as torch's relu6 (errors named hardtanh, as torch's)."""
    return _hardtanh("hardtanh_" if inplace else "hardtanh", input, 0, 6, inplace)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    """x for x > 0, negative_slope·x otherwise, element-wise, through ``LeakyReLUFunction``. Floating input only
    (torch's NotImplementedError otherwise). In place (leaky_relu_) the backward refuses a negative slope with
    torch's RuntimeError."""
    negative_slope = _number(negative_slope, "leaky_relu_" if inplace else "leaky_relu", "negative_slope", 2)
    _activation_input("leaky_relu_cpu", input, inplace)
    return _activation.LeakyReLUFunction.apply(input, _real(negative_slope, input), inplace)


def leaky_relu_(input, negative_slope=0.01):
    """leaky_relu(input, negative_slope, inplace=True): torch.nn.functional.leaky_relu_."""
    return leaky_relu(input, negative_slope, inplace=True)


def _elu(function, input, alpha, scale, input_scale, inplace):
    """elu and elu_ after torch's checks: α, scale and input_scale as real Scalars, then the input's."""
    alpha, scale, input_scale = (_real(_number(value, function, name, position), input) for value, name, position in (
        (alpha, "alpha", 2), (scale, "scale", 3), (input_scale, "input_scale", 4)))
    _activation_input("elu_cpu", input, inplace)
    return _activation.ELUFunction.apply(input, alpha, scale, input_scale, inplace)


def elu(input, alpha=1.0, inplace=False):
    """x for x > 0, α(eˣ − 1) otherwise, element-wise, through ``ELUFunction``. Floating input only (torch's
    NotImplementedError otherwise). In place (elu_) the backward refuses α < 0 with torch's RuntimeError."""
    return _elu("elu_" if inplace else "elu", input, alpha, 1, 1, inplace)


def elu_(input, alpha=1.0, scale=1.0, input_scale=1.0):
    """ELU in place, torch.nn.functional.elu_ (torch's elu_ with SELU's and CELU's extra arguments):
    scale·x for x > 0, α·scale·(e^{x·input_scale} − 1) otherwise."""
    return _elu("elu_", input, alpha, scale, input_scale, True)


def silu(input, inplace=False):
    """x·σ(x) = x / (1 + e^{−x}) element-wise, through ``SiLUFunction``. Floating or complex input (torch's
    NotImplementedError otherwise); complex input without gradients, as in torch (RuntimeError)."""
    _activation_input("silu_cpu", input, inplace, complex_allowed=True)
    if input.is_complex() and input.requires_grad and torch.is_grad_enabled():
        # torch's in-place silu_ lets a complex input through and returns δ·f'(x), not its convention's
        # δ·conj(f'(x)); refused here as torch's silu refuses it
        raise RuntimeError("silu does not support automatic differentiation for outputs with complex dtype.")
    return _activation.SiLUFunction.apply(input, inplace, _input_copy(input, inplace))


def mish(input, inplace=False):
    """x·tanh(log(1 + eˣ)) element-wise, through ``MishFunction``. Floating input only (torch's
    NotImplementedError otherwise)."""
    _activation_input("mish_cpu", input, inplace)
    return _activation.MishFunction.apply(input, inplace, _input_copy(input, inplace))


def hardswish(input, inplace=False):
    """x·min(max(x + 3, 0), 6)/6 element-wise, through ``HardswishFunction``: ∂y/∂x = 0 for x ≤ −3,
    x/3 + 1/2 for −3 < x < 3, 1 for x ≥ 3. Floating input only (torch's NotImplementedError otherwise)."""
    _activation_input("hardswish_cpu", input, inplace)
    return _activation.HardswishFunction.apply(input, inplace, _input_copy(input, inplace))


def hardsigmoid(input, inplace=False):
    """min(max(x + 3, 0), 6)/6 element-wise, through ``HardsigmoidFunction``: ∂y/∂x = 1/6 for −3 < x < 3, else 0.
    Floating input only (torch's NotImplementedError otherwise)."""
    _activation_input("hardsigmoid_cpu", input, inplace)
    return _activation.HardsigmoidFunction.apply(input, inplace, _input_copy(input, inplace))


def softplus(input, beta=1, threshold=20):
    """log(1 + e^{βx})/β element-wise, and x where βx > threshold, through ``SoftplusFunction``. Floating input
    only (torch's NotImplementedError otherwise); beta and threshold real numbers (torch's TypeError/RuntimeError
    otherwise)."""
    beta = _real(_number(beta, "softplus", "beta", 2), input)
    threshold = _real(_number(threshold, "softplus", "threshold", 3), input)
    _activation_input("softplus_cpu", input, False)
    return _activation.SoftplusFunction.apply(input, beta, threshold)

# --------------------------------------------------------------------------------------- linear, dropout, flatten


def linear(input, weight, bias=None):
    """y = x Wᵀ + b over the last dim of x (any leading dims), through ``LinearFunction``.

    A 1-D weight (in_features,) gives one output per row with that dim dropped, as torch allows (with a bias only
    where torch's linear runs matmul, see ``_gemm_with_bias``).
    """
    if input.dim() == 0 or weight.dim() == 0:
        raise RuntimeError(
            f"both arguments to linear need to be at least 1D, but they are {input.dim()}D and {weight.dim()}D"
        )
    if weight.dim() > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {weight.dim()}D")
    if input.shape[-1] != weight.shape[-1]:
        rows = math.prod(input.shape[:-1])
        raise RuntimeError(
            f"mat1 and mat2 shapes cannot be multiplied ({rows}x{input.shape[-1]} and "
            f"{weight.shape[-1]}x{weight.shape[0] if weight.dim() == 2 else 1})"
        )
    if weight.dim() == 1 and bias is not None and _gemm_with_bias(input, bias):
        raise RuntimeError("mat2 must be a matrix, got 1-D tensor")
    _check_bool(input, weight)
    if weight.dim() == 1:
        output = _linear.LinearFunction.apply(input, weight.unsqueeze(0), None).squeeze(-1)
        if bias is None:
            return output
        broadcast = list(torch.broadcast_shapes(output.shape, bias.shape))
        if broadcast != list(output.shape):  # torch adds the bias after matmul, in place: it may not enlarge y
            raise RuntimeError(f"output with shape {list(output.shape)} doesn't match the broadcast shape {broadcast}")
        return output + bias
    if bias is not None and bias.dtype != weight.dtype:
        raise RuntimeError(
            f"self and mat2 must have the same dtype, but got {scalar_type_name(bias.dtype)} and "
            f"{scalar_type_name(weight.dtype)}"
        )
    return _linear.LinearFunction.apply(input, weight, bias)


def _check_bool(input, weight):
    """torch's GEMMs refuse bool (its dot always; the others unless an operand is empty and they return early)."""
    if input.dtype != torch.bool:
        return
    if input.dim() == weight.dim() == 1:
        raise not_implemented_for("dot", input.dtype)
    if input.numel() > 0 and weight.numel() > 0:
        raise not_implemented_for("addmm_impl_cpu_", input.dtype)


def _gemm_with_bias(input, bias):
    """Whether torch's linear multiplies ``input`` as rows by a GEMM with the bias inside (which needs a weight
    matrix): a 2-D input, or a contiguous one with a contiguous 1-D bias. Otherwise it runs matmul and adds the
    bias afterwards."""
    return input.dim() == 2 or input.is_contiguous() and bias.dim() == 1 and bias.is_contiguous()


def dropout(input, p=0.5, training=True, inplace=False):
    """Zero each element with probability p and scale the rest by 1/(1 − p) when training, through
    ``DropoutFunction``; the identity (input itself, as torch returns it) in eval mode or for p = 0."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0 or input.numel() == 0:
        return input
    with torch.no_grad():
        scaled_mask = input.new_zeros(()) if p == 1 else _linear.scaled_bernoulli_mask(input, 1 - p)
    return _linear.DropoutFunction.apply(input, scaled_mask, inplace)

# ------------------------------------------------------------------------------- stochastic depth (torchvision.ops)


def stochastic_depth(input, p, mode, training=True):
    """Stochastic depth as torchvision.ops.stochastic_depth, through ``StochasticDepthFunction``: with probability
    p zero the input of each sample (mode 'row': input (N, ...)) or the whole input (mode 'batch'), and scale what
    is kept by 1/(1 − p). The noise is drawn as torchvision draws it, so a seed gives torchvision's very result.
    The identity (input itself, as torchvision returns it) when not training or for p = 0."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ("batch", "row"):
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    with torch.no_grad():
        scaled_noise = _stochastic_depth.survival_noise(input, p, mode)
    return _stochastic_depth.StochasticDepthFunction.apply(input, scaled_noise)

# --------------------------------------------------------------------------------------------------------- losses


def _reduction_name(size_average, reduce, reduction):
    """The reduction as torch.nn.functional resolves it: the deprecated size_average/reduce flags win (with
    torch's deprecation warning); an unknown name raises torch's ValueError."""
    if size_average is not None or reduce is not None:
        return _Reduction.legacy_get_string(size_average, reduce)
    return ("none", "mean", "sum")[_Reduction.get_enum(reduction)]


def _unbatched_output(output, input, reduction):
    """An unbatched (C,) input was computed as a batch of one; reduction='none' then returns a scalar."""
    return output.squeeze(0) if input.dim() == 1 and reduction == "none" else output


def cross_entropy(
    input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
    label_smoothing=0.0,
):
    """Cross-entropy of logits as torch.nn.functional.cross_entropy, fused with its log-softmax.

    input (C,), (N, C) or (N, C, d1, ...). A target of another shape holds class indices (), (N,) or (N, d1, ...)
    (int64, or uint8 for (C,) and (N, C) inputs; ``CrossEntropyFunction``): ℓ_i = −w[t_i] · log p[i, t_i], 0 for
    t_i = ignore_index, 'mean' dividing by Σ w[t_i] over kept samples. A target of the input's shape holds class
    probabilities (``CrossEntropyProbabilitiesFunction``): ℓ_i = −Σ_c log p[i, c] · P[i, c] · w_c, 'mean' dividing
    by the number of samples. label_smoothing ε mixes the target with the uniform distribution, as torch does.
    """
    reduction = _reduction_name(size_average, reduce, reduction)
    smoothing = label_smoothing if label_smoothing > 0 else 0.0
    if input.shape == target.shape:
        _loss.check_probability_targets(input, target, weight, ignore_index, label_smoothing)
        dtype = torch.result_type(input, target)
        dtype = dtype if weight is None else torch.promote_types(dtype, weight.dtype)
        logits = input.view(1, -1) if input.dim() == 1 else input
        target = target.view(1, -1) if input.dim() == 1 else target
        target_weights = _loss.class_probability_weights(target, weight, smoothing, dtype)
        output = _loss.CrossEntropyProbabilitiesFunction.apply(logits, target_weights, reduction, dtype)
        return _unbatched_output(output, input, reduction)
    _loss.check_label_smoothing(label_smoothing)
    if input.dim() == 0:
        raise IndexError("Dimension out of range (expected to be in range of [-1, 0], but got 1)")
    if input.numel():  # torch's log_softmax returns an empty integer input as it is; nll_loss refuses it after
        require_floating(input.dtype, "log_softmax_lastdim_kernel_impl")
    logits, prepared = _class_index_target(input, target, weight, ignore_index, reduction)
    output = _loss.CrossEntropyFunction.apply(logits, prepared, reduction, smoothing)
    return _unbatched_output(output, input, reduction)


def _class_index_target(input, target, weight, ignore_index, reduction):
    """(input batched, ``ClassIndexTarget``) after torch's checks: a (C,) input is a batch of one."""
    _loss.check_class_index_targets(input, target, weight)
    batched = input.view(1, -1) if input.dim() == 1 else input
    target = target.reshape(1) if input.dim() == 1 else target
    prepared = _loss.ClassIndexTarget.prepare(
        target, ignore_index, weight, batched.shape[1], opmath_dtype(input.dtype), reduction
    )
    return batched, prepared


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    """Negative log-likelihood as torch.nn.functional.nll_loss, through ``NLLLossFunction``:
    ℓ_i = −input[i, t_i] · w[t_i] for kept samples (t_i ≠ ignore_index), 0 for ignored ones; 'mean' divides by
    Σ w[t_i] over the kept ones.

    input log-probabilities (C,), (N, C) or (N, C, d1, ...); target (), (N,) or (N, d1, ...) (int64, or uint8 for
    (C,) and (N, C) inputs).
    """
    reduction = _reduction_name(size_average, reduce, reduction)
    batched, prepared = _class_index_target(input, target, weight, ignore_index, reduction)
    output = _loss.NLLLossFunction.apply(batched, prepared, reduction)
    return _unbatched_output(output, input, reduction)


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    """Mean squared error as torch.nn.functional.mse_loss: ℓ = (x − y)², 'mean' = Σ ℓ / numel
    (``MSELossFunction``), or with a weight of the input's shape ℓ = (x − y)² · w, 'mean' = Σ ℓ / Σ w
    (``WeightedMSELossFunction``). Input and target broadcast, with torch's warning when their sizes differ;
    dtypes promote as torch's (the weighted loss also takes integers)."""
    if target.size() != input.size():
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
            "This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=3,  # the caller, past autocast's wrapper
        )
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    if weight is None:
        return _mse_loss(input, target, reduction)
    return _weighted_mse_loss(input, target, weight, reduction)


def _mse_loss(input, target, reduction):
    """mse_loss without a weight (torch's aten::mse_loss)."""
    expanded_input, expanded_target = torch.broadcast_tensors(input, target)
    reduction = _reduction_name(None, None, reduction)
    dtype = torch.result_type(expanded_input, expanded_target)
    require_floating(dtype, "mse_cpu")
    compute = opmath_dtype(dtype)
    input, target = torch.broadcast_tensors(input.to(compute), target.to(compute))
    return _loss.MSELossFunction.apply(input, target, reduction, dtype)


def _weighted_mse_loss(input, target, weight, reduction):
    """mse_loss with a weight (torch's composite of pow, mul and sum)."""
    expanded_input, expanded_target = torch.broadcast_tensors(input, target)
    if weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")
    dtype, compute = _loss.weighted_mse_dtypes(expanded_input, expanded_target, weight, reduction)
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"Invalid reduction mode: {reduction}. Expected one of 'none', 'mean', 'sum'.")
    divisor = weight.sum() if reduction == "mean" else None  # in the weight's dtype, as torch's
    if compute is not None:
        input, target, weight = input.to(compute), target.to(compute), weight.to(compute)
    input, target = torch.broadcast_tensors(input, target)
    return _loss.WeightedMSELossFunction.apply(input, target, weight.expand(input.shape), reduction, divisor, dtype)


# -------------------------------------------------------------------------------------------------- normalization


def _per_channel(tensor):
    """A (C,) view, or None (torch.batch_norm accepts any shape holding C values)."""
    return None if tensor is None else tensor.reshape(-1)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-05):
    """Layer normalization as torch.nn.functional.layer_norm, through ``LayerNormFunction``:
    y = γ ⊙ (x − μ) / √(σ² + ε) + β, μ and the biased σ² over the trailing dims given by normalized_shape.
    γ and β of the input's dtype, or float32 ones for a float16/bfloat16 input (mixed precision)."""
    normalized_shape = _norm.check_layer_norm_args(input, normalized_shape, weight, bias)
    return _norm.LayerNormFunction.apply(input, len(normalized_shape), weight, bias, eps)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-05):
    """Batch normalization as torch.nn.functional.batch_norm, per channel (dim 1) of an (N, C, d1, ...) input.

    training=True: normalize with the batch's mean and biased variance over (N, d1, ...) (``BatchNormFunction``)
    and, when given, update running_mean/running_var in place: r ← (1 − momentum)·r + momentum·batch statistic,
    with the unbiased variance. training=False: normalize with the running statistics
    (``BatchNormEvalFunction``, an affine map). Parameters and running statistics of the input's dtype, or float32
    ones for a float16/bfloat16 input (mixed precision).
    """
    _norm.check_batch_norm_args(input, training, eps)
    _check_momentum("batch_norm", momentum)
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


def _check_momentum(function, momentum):
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(
            f"{function}(): argument 'momentum' (position 7) must be float, not {type(momentum).__name__}"
        )


def _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                update_running_stats=_norm.update_running_stats):
    """torch.batch_norm (ATen's, below torch.nn.functional's own checks), which batch_norm and instance_norm run;
    in training ``update_running_stats`` is given the running statistics and the batch's (instance_norm's averages
    the batch's over the samples)."""
    if input.numel() == 0:  # nothing to normalize; as torch, the running statistics stay as they are
        output = input.clone()
        output = output if weight is None else output * weight.select(0, 0)
        return output if bias is None else output + bias.select(0, 0)
    _norm.check_batch_norm_inputs(input, running_mean, running_var, weight, bias, training)
    folded = _norm.batch_norm_folds(input, weight, bias, running_mean, running_var)
    weight, bias = _per_channel(weight), _per_channel(bias)
    if not training:
        running_mean, running_var = _per_channel(running_mean), _per_channel(running_var)
        return _norm.BatchNormEvalFunction.apply(input, running_mean, running_var, weight, bias, eps, folded)
    output, batch_mean, batch_var = _norm.BatchNormFunction.apply(input, weight, bias, eps, folded)
    if running_mean is not None:
        values_per_channel = input.numel() // input.shape[1]
        update_running_stats(running_mean, running_var, batch_mean, batch_var, values_per_channel, momentum)
    return output


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-05):
    """Instance normalization as torch.nn.functional.instance_norm: each (sample, channel) plane of an
    (N, C, d1, ...) input normalized over its own d1·… values, y = γ_c·(x − μ_nc)/√(σ²_nc + ε) + β_c.

    As torch defines it: batch normalization of the input viewed as one sample of N·C channels
    (``BatchNormFunction``; with use_input_stats=False ``BatchNormEvalFunction`` and the running statistics), with
    γ, β and the running statistics repeated N times. The running statistics take part in γ's dtype (else the
    input's, when the mean's differs). In training each repeat is updated as batch_norm's, and the statistics are set
    to the repeats' mean over the batch: m_c ← (1 − momentum)·m_c + momentum·mean_n μ_nc (v_c alike, unbiased),
    computed from the batch's statistics averaged over the samples and rounded once (torch rounds every repeat to
    the statistics' dtype, then their mean).
    """
    if use_input_stats and math.prod(input.shape[2:]) == 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {input.size()}")
    _check_momentum("instance_norm", momentum)
    if not use_input_stats and (running_mean is None or running_var is None):
        raise RuntimeError("Expected running_mean and running_var to be defined when use_input_stats is false")
    batch, channels = input.size(0), input.size(1)
    statistics_dtype = input.dtype if weight is None else weight.dtype
    weight, bias = (None if tensor is None else tensor.repeat(batch) for tensor in (weight, bias))
    running = [running_mean, running_var]
    if running_mean is not None and running_mean.dtype != statistics_dtype:  # torch converts both, by the mean's
        if running_var is None:
            raise RuntimeError("Expected a proper Tensor but got None (or an undefined Tensor in C++) for argument "
                               "#0 'self'")
        running = [tensor.to(statistics_dtype) for tensor in running]
    running = [None if tensor is None else tensor.repeat(batch) for tensor in running]

    def update_averaged(_repeated_mean, _repeated_var, batch_mean, batch_var, count, momentum):
        averaged = (statistic.view(batch, channels).mean(0) for statistic in (batch_mean, batch_var))
        _norm.update_running_stats(running_mean, running_var, *averaged, count, momentum)

    one_sample = input.contiguous().view(1, batch * channels, *input.shape[2:])
    # (for an empty batch torch sets the statistics to the mean of no repeats, NaN; they are left as they are here)
    output = _batch_norm(one_sample, *running, weight, bias, use_input_stats, momentum, eps, update_averaged)
    if use_input_stats and batch > 0 and one_sample.numel() == 0:
        # nothing normalized, nothing updated: torch still sets the statistics to their repeats' mean (the same
        # values, through the statistics' dtype; for an integer dtype, the mean's error)
        with torch.no_grad():
            for statistic, repeats in zip((running_mean, running_var), running):
                if statistic is not None:
                    statistic.copy_(repeats.view(batch, channels).mean(0))
    return output.view(input.shape)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-05):
    """Group normalization as torch.nn.functional.group_norm, through ``GroupNormFunction``: the C channels of an
    (N, C, d1, ...) input split into num_groups groups, each sample's group normalized over its C/G·d1·… values,
    y = γ_c·(x − μ)/√(σ² + ε) + β_c. γ, β of shape (C,), of the input's dtype or float32 ones for a
    float16/bfloat16 input (mixed precision)."""
    _norm.check_group_norm_args(input, num_groups, weight, bias)
    return _norm.GroupNormFunction.apply(input, num_groups, weight, bias, eps)


def normalize(input, p=2.0, dim=1, eps=1e-12, out=None):
    """Lₚ normalization as torch.nn.functional.normalize, through ``NormalizeFunction``: v / max(‖v‖ₚ, ε) for each
    slice v along dim (an int, a sequence of ints, or None for all dims). p a number (0, ±∞ too) or 'fro' (2).
    With out, the result is written there and is not differentiable (torch raises if input requires grad)."""
    if isinstance(p, str):
        if p != "fro" or not (dim is None or isinstance(dim, int) or len(dim) <= 2):
            raise NotImplementedError(f"normalize: p={p!r} is a matrix norm, which has no hand-written twin here; "
                                      "p is a number or 'fro'")
        p = 2.0
    p = 2.0 if p is None else p
    dims = [dim] if isinstance(dim, int) else dim
    output = _norm.NormalizeFunction.apply(input, p, dims, eps)
    if out is None:
        return output
    if torch.is_grad_enabled() and input.requires_grad:
        raise RuntimeError("div(): functions with out=... arguments don't support automatic differentiation, but "
                           "one of the arguments requires grad.")
    # torch.div's out= semantics (resizing, dtype casting and its errors); multiplying by 1 changes nothing
    return torch.mul(output, 1, out=out)


# ------------------------------------------------------------------------------------------------------ attention


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
                                 enable_gqa=False):
    """Attention as torch.nn.functional.scaled_dot_product_attention, through ``ScaledDotProductAttentionFunction``:
    O = softmax(s · Q Kᵀ + B) V, s = 1/√E unless ``scale`` is given, dropout with probability ``dropout_p`` on the
    softmax's output (always, as torch's: pass 0 in evaluation).

    query (..., L, E), key (..., S, E), value (..., S, Eᵥ), the leading dims broadcast; output (..., L, Eᵥ).
    attn_mask broadcast to (..., L, S): bool (True: may attend, False: −∞ added) or float (added). is_causal: query
    i attends to keys 0..i (no attn_mask with it). enable_gqa: key and value may have fewer heads (dim −3), each
    shared by a group of query heads. A query whose every key is masked gets output 0, as torch's. float16 and
    bfloat16 are computed in float32 and rounded once. torch's behaviour beyond the formula is kept: 3-D inputs are
    a batch of one, no queries or no values give zeros without computing, the output is laid out as the kernel torch
    would pick lays it out, errors of torch's types in torch's order.
    """
    _attention.check_sdpa_args(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    dropout_p, scale = float(dropout_p), None if scale is None else float(scale)
    if query.dim() == key.dim() == value.dim() == 3:
        output = scaled_dot_product_attention(query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0),
                                              _attention.as_batch_of_one(attn_mask), dropout_p, is_causal,
                                              scale=scale, enable_gqa=enable_gqa)
        return output.squeeze(0)
    if _attention.has_nothing_to_attend(query, value):
        return _attention.empty_attention(query, key, value)
    fused = _attention.fused_kernel_runs(query, key, value, attn_mask, dropout_p, enable_gqa)
    if fused and dropout_p < 0:
        raise RuntimeError("scaled_dot_product_attention_flash_attention: Currently do not support dropout > 0")
    bias = _attention.additive_mask(attn_mask, is_causal, query, key)
    key, value = _attention.expand_groups(query, key, value, enable_gqa)
    output_shape = _attention.check_computable(query, _attention.scores_shape(query, key, bias), value, dropout_p)
    if not query.is_floating_point():  # integers and no scores to compute: torch's empty result of their dtype
        return query.new_empty(output_shape)
    output, _ = _attention.attention(query, key, value, bias, dropout_p, _attention.sdpa_scales(query, scale),
                                     zero_masked_rows=True, like_query=fused)
    return output


def multi_head_attention_forward(
    query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, bias_k, bias_v, add_zero_attn,
    dropout_p, out_proj_weight, out_proj_bias, training=True, key_padding_mask=None, need_weights=True,
    attn_mask=None, use_separate_proj_weight=False, q_proj_weight=None, k_proj_weight=None, v_proj_weight=None,
    static_k=None, static_v=None, average_attn_weights=True, is_causal=False,
):
    """Multi-head attention as torch.nn.functional.multi_head_attention_forward, the step torch.nn.MultiheadAttention
    runs: project the inputs (``linear``), attend in each of ``num_heads`` heads of embed_dim / num_heads features
    (``ScaledDotProductAttentionFunction``), concatenate the heads and project the result (``linear``).

    query (L, N, E) or unbatched (L, E), key and value (S, N, E_k|E_v) or (S, E_k|E_v). Masks: key_padding_mask
    (N, S) or (S,), attn_mask (L, S) or (N·num_heads, L, S), bool (True: masked out) or float (added). With
    need_weights the heads attend as torch's code does there (the queries scaled by 1/√head_dim, a plain softmax: a
    query with every key masked gets NaN) and the attention weights after dropout are returned too, averaged over
    the heads with average_attn_weights; without, through ``scaled_dot_product_attention``. Dropout only when
    training. Returns (output, weights or None). torch's argument checks and errors, by torch's own helpers.
    """
    is_batched = F._mha_shape_check(query, key, value, key_padding_mask, attn_mask, num_heads)
    if not is_batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt_len, bsz, embed_dim = query.shape
    src_len = key.shape[0]
    key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                         other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                         target_type=query.dtype)
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                           "method `generate_square_subsequent_mask` to create this mask.")
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None  # scaled_dot_product_attention's is_causal stands for the mask
    else:
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        is_causal = is_causal and key_padding_mask is None
    if embed_dim != embed_dim_to_check:
        raise AssertionError(f"was expecting embedding dimension of {embed_dim_to_check}, but got {embed_dim}")
    head_dim = embed_dim // num_heads
    if head_dim * num_heads != embed_dim:
        raise AssertionError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
    if use_separate_proj_weight and key.shape[:2] != value.shape[:2]:
        raise AssertionError(f"key's sequence and batch dims {key.shape[:2]} do not match value's {value.shape[:2]}")
    if not use_separate_proj_weight and key.shape != value.shape:
        raise AssertionError(f"key shape {key.shape} does not match value shape {value.shape}")
    q, k, v = _in_projection(query, key, value, in_proj_weight, in_proj_bias, use_separate_proj_weight,
                             q_proj_weight, k_proj_weight, v_proj_weight)
    if attn_mask is not None:
        expected = (tgt_len, src_len) if attn_mask.dim() == 2 else (bsz * num_heads, tgt_len, src_len)
        if attn_mask.dim() not in (2, 3):
            raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        if attn_mask.shape != expected:
            raise RuntimeError(f"The shape of the {attn_mask.dim()}D attn_mask is {attn_mask.shape}, but should be "
                               f"{expected}.")
        attn_mask = attn_mask.unsqueeze(0) if attn_mask.dim() == 2 else attn_mask
    if (bias_k is None) != (bias_v is None):
        raise AssertionError(f"bias_{'k' if bias_v is None else 'v'} is set but bias_{'v' if bias_v is None else 'k'}"
                             " is None")
    if bias_k is not None:
        if static_k is not None or static_v is not None:
            raise AssertionError(f"bias cannot be added to static {'key' if static_k is not None else 'value'}.")
        k, v = torch.cat([k, bias_k.repeat(1, bsz, 1)]), torch.cat([v, bias_v.repeat(1, bsz, 1)])
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
    # reshape, not view as torch's: the same view here, and under vmap a batched q's layout may not allow one
    q = q.reshape(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = _heads_first(k, static_k, "static_k", bsz * num_heads, head_dim)
    v = _heads_first(v, static_v, "static_v", bsz * num_heads, head_dim)
    if add_zero_attn:
        zeros = torch.zeros((bsz * num_heads, 1, head_dim), dtype=k.dtype, device=k.device)
        k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros.to(v.dtype)], dim=1)
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
    src_len = k.size(1)
    if key_padding_mask is not None:
        F._check_key_padding_mask(key_padding_mask, src_len, bsz)
        key_padding_mask = (key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, num_heads, -1, -1)
                            .reshape(bsz * num_heads, 1, src_len))
        attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
    dropout_p = dropout_p if training else 0.0
    if need_weights:
        attn_output, weights = _heads_attending_with_weights(q, k, v, attn_mask, dropout_p, is_causal)
        weights = weights.reshape(bsz, num_heads, tgt_len, src_len)
        weights = (weights.mean(dim=1) if average_attn_weights else weights).to(_autocast.softmax_dtype(q))
        attn_output = attn_output.transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
    else:
        if attn_mask is not None:
            attn_mask = (attn_mask.unsqueeze(0) if attn_mask.size(0) == 1 and attn_mask.dim() == 3 else
                         attn_mask.view(bsz, num_heads, -1, src_len))
        q, k, v = (t.reshape(bsz, num_heads, t.size(1), head_dim) for t in (q, k, v))
        attn_output = scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
        attn_output = attn_output.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)
        weights = None
    attn_output = linear(attn_output, out_proj_weight, out_proj_bias)
    attn_output = attn_output.reshape(tgt_len, bsz, attn_output.size(1))
    if not is_batched:
        attn_output = attn_output.squeeze(1)
        weights = None if weights is None else weights.squeeze(0)
    return attn_output, weights


def _in_projection(query, key, value, in_proj_weight, in_proj_bias, separate, q_proj_weight, k_proj_weight,
                   v_proj_weight):
    """(q, k, v) = (query W_qᵀ + b_q, key W_kᵀ + b_k, value W_vᵀ + b_v) by ``linear``, with torch's checks in its
    order (torch's ``_in_projection_packed`` and ``_in_projection``): the weights packed in in_proj_weight (3E, E),
    one product for self-attention (q is k is v) and one for k and v when k is v, or given separately."""
    biases = (None,) * 3
    if separate:
        for name, weight in (("q", q_proj_weight), ("k", k_proj_weight), ("v", v_proj_weight)):
            if weight is None:
                raise AssertionError(f"use_separate_proj_weight is True but {name}_proj_weight is None")
        if in_proj_bias is not None:
            biases = tuple(in_proj_bias.chunk(3))
        _check_projection_shapes(query, key, value, (q_proj_weight, k_proj_weight, v_proj_weight), *biases)
        weights = (q_proj_weight, k_proj_weight, v_proj_weight)
    else:
        if in_proj_weight is None:
            raise AssertionError("use_separate_proj_weight is False but in_proj_weight is None")
        if key is value:
            return _packed_in_projection(query, key, in_proj_weight, in_proj_bias)
        weights = tuple(in_proj_weight.chunk(3))
        if in_proj_bias is not None:
            biases = tuple(in_proj_bias.chunk(3))
    (w_q, w_k, w_v), (b_q, b_k, b_v) = weights, biases  # torch's unpacking: a ValueError for fewer than 3 chunks
    return linear(query, w_q, b_q), linear(key, w_k, b_k), linear(value, w_v, b_v)


def _packed_in_projection(query, key, in_proj_weight, in_proj_bias):
    """Self-attention (query is key is value): the three projections as one product with the packed weight; with
    key is value, query's projection and one product for both key's and value's."""
    embed_dim = query.size(-1)
    parts = 3 if query is key else 2
    if parts == 2:
        weight_q, in_proj_weight = in_proj_weight.split([embed_dim, embed_dim * 2])
        bias_q, in_proj_bias = (None, None) if in_proj_bias is None else in_proj_bias.split([embed_dim, embed_dim * 2])
        query_projected = linear(query, weight_q, bias_q)
    projected = linear(key, in_proj_weight, in_proj_bias)
    projected = projected.unflatten(-1, (parts, embed_dim)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
    return (projected[0], projected[1], projected[2]) if parts == 3 else (query_projected, projected[0], projected[1])


def _check_projection_shapes(query, key, value, weights, *biases):
    """torch's ``_in_projection`` checks: W_q (E, E), W_k (E, E_k), W_v (E, E_v), each bias (E,)."""
    embed_dim = query.size(-1)
    for name, weight, features in zip(("query", "key", "value"), weights, (embed_dim, key.size(-1), value.size(-1))):
        if weight.shape != (embed_dim, features):
            raise AssertionError(f"expecting {name} weights shape of {(embed_dim, features)}, but got {weight.shape}")
    for name, bias in zip(("query", "key", "value"), biases):
        if bias is not None and bias.shape != (embed_dim,):
            raise AssertionError(f"expecting {name} bias shape of {(embed_dim,)}, but got {bias.shape}")


def _heads_first(projected, static, name, batch_heads, head_dim):
    """(S, N, E) → (N·heads, S, head_dim), or the given static key/value after torch's checks."""
    if static is None:
        return projected.reshape(projected.shape[0], batch_heads, head_dim).transpose(0, 1)
    if static.size(0) != batch_heads:
        raise AssertionError(f"expecting {name}.size(0) of {batch_heads}, but got {static.size(0)}")
    if static.size(2) != head_dim:
        raise AssertionError(f"expecting {name}.size(2) of {head_dim}, but got {static.size(2)}")
    return static


def _heads_attending_with_weights(q, k, v, attn_mask, dropout_p, is_causal):
    """torch's need_weights branch: softmax((q/√head_dim) kᵀ + mask) (plain softmax: NaN for a query with every
    key masked), dropout (torch.nn.functional.dropout's ValueError for p > 1), times v; (output, weights after
    dropout), each (N·heads, L, ·). torch's errors in its order: is_causal without a mask, a mask of another dtype
    than the scaled queries (its baddbmm), integer keys (the queries were scaled to float), then dropout_p."""
    if is_causal and attn_mask is None:
        raise AssertionError("FIXME: is_causal not implemented for need_weights")
    scaled_dtype = q.dtype if q.is_floating_point() else torch.get_default_dtype()
    if attn_mask is not None and attn_mask.dtype != scaled_dtype:
        raise RuntimeError(f"expected scalar type {scalar_type_name(scaled_dtype)} but found "
                           f"{scalar_type_name(attn_mask.dtype)}")
    integer = not q.is_floating_point()
    if integer and q.size(0) * q.size(1) * k.size(1):
        raise RuntimeError(f"expected scalar type {scalar_type_name(scaled_dtype)} but found "
                           f"{scalar_type_name(k.dtype)}")
    if dropout_p > 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {dropout_p}")
    if integer:  # no scores to compute: torch's zeros of the integer dtype
        return q.new_zeros((q.size(0), q.size(1), v.size(-1))), q.new_zeros((q.size(0), q.size(1), k.size(1)))
    scales = (math.sqrt(1.0 / float(q.size(-1))), 1)
    return _attention.attention(q, k, v, attn_mask, dropout_p, scales, zero_masked_rows=False, need_weights=True)

# ------------------------------------------------------------------------------------------------------- autocast
# Under torch.autocast each function casts its tensor arguments by torch's policy for the native op, then runs with
# autocast off (manual_conv.autocast); outside autocast it is the function defined above.
for _name in _autocast.POLICIES:
    globals()[_name] = _autocast.follows_policy(globals()[_name])
del _name
