"""Conv2d's autograd Functions: forward and backward by hand, each backward built from the others.

Three bilinear maps make up a convolution layer and its gradients (docs/derivations.md, "Conv2d"):

    y  = conv(x, w)                     Conv2dFunction            (forward)
    dx = conv_transpose(δ, w)           ConvTranspose2dFunction   (input gradient; also the transposed conv layer)
    dw = weight_grad(x, δ)              Conv2dWeightGradFunction  (weight gradient)

Each one's derivative is made of the other two, so every backward below calls Functions of this module: the
backward is itself differentiable and double backward (gradgradcheck, gradient penalties, Hessian-vector
products) works to any order. Being bilinear, each one's jvp is the sum of two calls of itself (one tangent in
each slot), and its vmap folds the vmapped dim into N or into the groups (ops/conv_vmap.py): torch.func's jvp,
jacfwd, jacrev, hessian and per-sample gradients run through these Functions. The numerical work is done by the
active backend's kernels (``manual_conv.backend.conv_kernels()``: the Python reference or the compiled
``torch.ops.manual_conv``).
Argument checks that PyTorch does for conv2d/conv_transpose2d live here too, with PyTorch's messages.
"""
import functools
import numbers

from typing import NamedTuple

import torch

from ..backend import conv_kernels, get_backend
from . import conv_vmap
from ._utils import Function, is_vmapped, laid_out_like, not_implemented_for, opmath_dtype, suggests_channels_last
from .conv_reference import first_rows_and_columns


def _same_memory_format(output, input, weight):
    """torch's convolutions lay out their output and the gradients of their input and weight channels_last when
    the input or the weight suggests channels_last (``Tensor.suggest_memory_format``, which settles 1-channel
    tensors by their strides); so do we, allocating in that format (a 1-channel result gets channels_last
    strides too).

    Inside a torch.func transform (a backward under vmap or grad) or gradcheck's legacy vmap, the tensors are
    wrappers: a buffer allocated here would be a plain tensor, which cannot take a batched or grad-tracked value
    in place, so the layout is made by ``contiguous`` (whose per-sample strides a transform does not show anyway);
    under vmap not at all (vmap has no channels_last copy, and a slice of a batch has no layout of its own).
    """
    channels_last = suggests_channels_last(input) or suggests_channels_last(weight)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if conv_vmap.is_transformed(output):
        if is_vmapped(output) or conv_vmap.is_legacy_batched(output):
            return output
        return output.contiguous(memory_format=memory_format)
    return laid_out_like(output, output, memory_format, output.dtype)


def _in_opmath(kernel, *args):
    """kernel(*args), on CPU float16/bfloat16 tensors computed in float32 and rounded once: torch's CPU
    convolutions accumulate in float32, where the kernels' own half-precision GEMMs and col2im would round every
    partial sum (and a bias added after the GEMM once more). CUDA keeps the half-precision GEMMs, which
    accumulate in float32 themselves. A complex tensor's lazy conjugate (the backwards' w̄) is resolved here."""
    first = [arg for arg in args if isinstance(arg, torch.Tensor)][0]
    dtype = first.dtype
    compute = opmath_dtype(dtype) if first.device.type == "cpu" else dtype
    args = [arg.resolve_conj().to(compute) if isinstance(arg, torch.Tensor) else arg for arg in args]
    return kernel(*args).to(dtype)


class Conv2dFunction(Function):
    """y[n, o, y, x] = b[o] + Σ_{c ∈ group(o), i, j} w[o, c, i, j] · x_pad[n, c, y·s + i·d, x·s + j·d].

    Backward, with δ = dL/dy (and w̄, x̄ the complex conjugates: PyTorch's convention for complex gradients,
    the adjoint of a complex-linear map; for real tensors w̄ = w):
        dL/dx = ConvTranspose2dFunction(δ, w̄): col2im(w̄ᵀ δ), equally the full correlation of the stride-spread,
                padded δ with the 180°-rotated kernel;
        dL/dw = Conv2dWeightGradFunction(x̄, δ): correlation of the input with δ;
        dL/db = Σ_{n, y, x} δ.
    Forward mode (jvp), with ẋ, ẇ, ḃ the tangents: y is bilinear in (x, w) and affine in b, so
        ẏ = conv(ẋ, w) + conv(x, ẇ) + ḃ          (no conjugates: the map itself is complex-bilinear).
    vmap: the batched dim folded into N (x batched) or into the groups (w batched): ops/conv_vmap.py.
    """

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups):
        if conv_vmap.is_legacy_batched(input, weight, bias):
            return conv_vmap.run_legacy_batched(conv_vmap.vmap_conv2d, Conv2dFunction.forward, input, weight, bias,
                                                stride, padding, dilation, groups)
        output = _in_opmath(conv_kernels().conv2d, input, weight, bias, stride, padding, dilation, groups)
        return _same_memory_format(output, input, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, _, *conv_args = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)
        ctx.conv_args = conv_args
        ctx.output_shape = output.shape

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent, *_):
        input, weight = ctx.saved_tensors
        return _bilinear_tangent(lambda x, w, b: Conv2dFunction.apply(x, w, b, *ctx.conv_args),
                                 input, weight, input_tangent, weight_tangent, bias_tangent, ctx.output_shape)

    @staticmethod
    def vmap(info, in_dims, *args):
        return conv_vmap.vmap_conv2d(Conv2dFunction.apply, info, in_dims, *args)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        maps = differentiable_maps()
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            grad_input = _same_memory_format(
                maps.input_grad(grad_output, weight.conj(), input.shape, *ctx.conv_args), input, weight)
        if needs_weight:
            grad_weight = _same_memory_format(
                maps.weight_grad(input.conj(), grad_output, weight.shape, *ctx.conv_args), input, weight)
        if needs_bias:
            grad_bias = maps.bias_grad(grad_output)
        return grad_input, grad_weight, grad_bias, None, None, None, None


class ConvTranspose2dFunction(Function):
    """y = convᵀ(x; w) + b: the adjoint of conv2d(·; w) applied to x, with output shape ``output_size``.

    y[n, c, h, w'] = b[c] + Σ_{o, i, j} w[o, c, i, j] · x[n, o, y, x] over y·s + i·d = h + p (and likewise for w').
    It is conv2d's input gradient with x in the role of δ, so conv2d's backward uses it with bias None. When
    output_padding reaches past the stride, conv2d of an output_size tensor has more rows than x: x stands for
    its first rows, and the backward keeps the first rows of conv2d's result.
    Backward, with g = dL/dy (conjugates as in Conv2dFunction):
        dL/dx = Conv2dFunction(g, w̄)                  (the adjoint of the adjoint is the conv);
        dL/dw = Conv2dWeightGradFunction(g, x̄)        (g in the role of the conv's input, x in the role of δ);
        dL/db = Σ_{n, h, w'} g.
    Forward mode (jvp): bilinear in (x, w), affine in b, so ẏ = convᵀ(ẋ; w) + convᵀ(x; ẇ) + ḃ.
    vmap: as Conv2dFunction's, with output_size folded alike (ops/conv_vmap.py).
    """

    @staticmethod
    def forward(input, weight, bias, output_size, stride, padding, dilation, groups):
        if conv_vmap.is_legacy_batched(input, weight, bias):
            return conv_vmap.run_legacy_batched(conv_vmap.vmap_conv_transpose2d, ConvTranspose2dFunction.forward,
                                                input, weight, bias, output_size, stride, padding, dilation, groups)
        output = _in_opmath(_transposed_conv, input, weight, bias, output_size, stride, padding, dilation, groups)
        return _same_memory_format(output, input, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, _, output_size, *conv_args = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)
        ctx.output_size = output_size
        ctx.conv_args = conv_args

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent, *_):
        input, weight = ctx.saved_tensors
        return _bilinear_tangent(
            lambda x, w, b: ConvTranspose2dFunction.apply(x, w, b, ctx.output_size, *ctx.conv_args),
            input, weight, input_tangent, weight_tangent, bias_tangent, ctx.output_size)

    @staticmethod
    def vmap(info, in_dims, *args):
        return conv_vmap.vmap_conv_transpose2d(ConvTranspose2dFunction.apply, info, in_dims, *args)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        maps = differentiable_maps()
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            grad_input = maps.conv2d(grad_output, weight.conj(), None, *ctx.conv_args)
            grad_input = _same_memory_format(first_rows_and_columns(grad_input, input.shape), input, weight)
        if needs_weight:
            grad_weight = _same_memory_format(
                maps.weight_grad(grad_output, input.conj(), weight.shape, *ctx.conv_args), input, weight)
        if needs_bias:
            grad_bias = maps.bias_grad(grad_output)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None


def _transposed_conv(input, weight, bias, output_size, stride, padding, dilation, groups):
    output = conv_kernels().conv2d_input_grad(input, weight, output_size, stride, padding, dilation, groups)
    if bias is not None:
        output += bias.view(1, -1, 1, 1)
    return output


class Conv2dWeightGradFunction(Function):
    """dL/dw[o, c, i, j] = Σ_{n, y, x} δ[n, o, y, x] · x_pad[n, c, y·s + i·d, x·s + j·d].

    Bilinear in (x, δ). Backward, with G = the gradient arriving at dL/dw (conjugates as in Conv2dFunction):
        d/dx = ConvTranspose2dFunction(δ̄, G)    (as conv2d's input gradient, with G in the role of the weight);
        d/dδ = Conv2dFunction(x̄, G)             (as conv2d's forward, with G in the role of the weight).
    Forward mode (jvp), bilinear in (x, δ) (no conjugates in the map itself):
        (dL/dw)˙ = weight_grad(ẋ, δ) + weight_grad(x, δ̇).
    vmap: the batched dim folded into the groups, x (N, B·C, H, W) and δ (N, B·O, H', W') giving (B·O, C/g, k, k):
    the per-sample gradients' map (ops/conv_vmap.py).
    """

    @staticmethod
    def forward(input, grad_output, weight_size, stride, padding, dilation, groups):
        if conv_vmap.is_legacy_batched(input, grad_output):
            return conv_vmap.run_legacy_batched(conv_vmap.vmap_conv2d_weight_grad, Conv2dWeightGradFunction.forward,
                                                input, grad_output, weight_size, stride, padding, dilation, groups)
        return _in_opmath(conv_kernels().conv2d_weight_grad, input, grad_output, weight_size, stride, padding,
                          dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, grad_output, weight_size, *conv_args = inputs
        ctx.save_for_backward(input, grad_output)
        ctx.save_for_forward(input, grad_output)
        ctx.weight_size = weight_size
        ctx.conv_args = conv_args

    @staticmethod
    def jvp(ctx, input_tangent, grad_output_tangent, *_):
        input, grad_output = ctx.saved_tensors
        return _bilinear_tangent(
            lambda x, g, _: Conv2dWeightGradFunction.apply(x, g, ctx.weight_size, *ctx.conv_args),
            input, grad_output, input_tangent, grad_output_tangent, None, ctx.weight_size)

    @staticmethod
    def vmap(info, in_dims, *args):
        return conv_vmap.vmap_conv2d_weight_grad(Conv2dWeightGradFunction.apply, info, in_dims, *args)

    @staticmethod
    def backward(ctx, grad_grad_weight):
        input, grad_output = ctx.saved_tensors
        maps = differentiable_maps()
        grad_input = grad_grad_output = None
        if ctx.needs_input_grad[0]:
            grad_input = maps.input_grad(grad_output.conj(), grad_grad_weight, input.shape, *ctx.conv_args)
        if ctx.needs_input_grad[1]:
            grad_grad_output = maps.conv2d(input.conj(), grad_grad_weight, None, *ctx.conv_args)
            grad_grad_output = first_rows_and_columns(grad_grad_output, grad_output.shape)
        return grad_input, grad_grad_output, None, None, None, None, None


class Conv2dBiasGradFunction(Function):
    """dL/db[o] = Σ_{n, y, x} δ[n, o, y, x]. Backward: a sum's gradient is copied to every summand, G[o] → δ[n, o, y, x].

    Forward mode (jvp): linear in δ, so (dL/db)˙ = Σ_{n, y, x} δ̇ = bias_grad(δ̇).
    vmap: the batched dim folded into the channels, (N, B·O, H', W') → (B·O) (ops/conv_vmap.py).
    """

    @staticmethod
    def forward(grad_output):
        if conv_vmap.is_legacy_batched(grad_output):
            return conv_vmap.run_legacy_batched(conv_vmap.vmap_conv2d_bias_grad, Conv2dBiasGradFunction.forward,
                                                grad_output)
        return _in_opmath(conv_kernels().conv2d_bias_grad, grad_output)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.grad_output_shape = inputs[0].shape

    @staticmethod
    def jvp(ctx, grad_output_tangent):
        return Conv2dBiasGradFunction.apply(grad_output_tangent)

    @staticmethod
    def vmap(info, in_dims, grad_output):
        return conv_vmap.vmap_conv2d_bias_grad(Conv2dBiasGradFunction.apply, info, in_dims, grad_output)

    @staticmethod
    def backward(ctx, grad_grad_bias):
        return grad_grad_bias.view(1, -1, 1, 1).expand(ctx.grad_output_shape)


def _bilinear_tangent(bilinear, first, second, first_tangent, second_tangent, bias_tangent, output_shape):
    """The jvp of y = bilinear(a, b, bias): ẏ = bilinear(ȧ, b, ḃias) + bilinear(a, ḃ, None), the terms whose
    tangent is None left out (ḃias alone broadcast over the output's (N, H, W))."""
    tangent = None
    if first_tangent is not None:
        tangent = bilinear(first_tangent, second, bias_tangent)
        bias_tangent = None
    if second_tangent is not None:
        term = bilinear(first, second_tangent, bias_tangent)
        tangent = term if tangent is None else tangent + term
        bias_tangent = None
    if bias_tangent is not None:
        tangent = bias_tangent.view(1, -1, 1, 1).expand(output_shape).clone()
    return tangent


class BilinearMaps(NamedTuple):
    """The four maps conv's backwards are made of, with the compiled ops' signatures, each differentiable again."""

    conv2d: object  # (input, weight, bias, stride, padding, dilation, groups)
    input_grad: object  # (grad_output, weight, input_size, stride, padding, dilation, groups)
    weight_grad: object  # (input, grad_output, weight_size, stride, padding, dilation, groups)
    bias_grad: object  # (grad_output)


def _input_grad_function(grad_output, weight, input_size, *conv_args):
    return ConvTranspose2dFunction.apply(grad_output, weight, None, input_size, *conv_args)


_FUNCTION_MAPS = BilinearMaps(
    Conv2dFunction.apply, _input_grad_function, Conv2dWeightGradFunction.apply, Conv2dBiasGradFunction.apply
)


def differentiable_maps():
    """What the backwards call: this module's Functions, on both backends (on 'cpp' their kernels are the compiled
    ops, ``conv_kernels()``), so that a backward is made of Functions with a jvp and a vmap rule: double backward,
    forward-over-reverse (hessian, jvp of a gradient) and vmap of a gradient (per-sample gradients) work on both.

    While torch.compile traces on 'cpp', the compiled ops themselves: Dynamo traces a Function's backward to
    build its graph and cannot trace a nested Function.apply there, where it traces an op with a registered
    autograd and fake kernel (ops/library.py), so a model on 'cpp' compiles for training without a graph break.
    """
    if get_backend() == "cpp" and torch.compiler.is_compiling():
        ops = conv_kernels()  # the compiled ops of the algorithm that runs (manual_conv/algorithm.py)
        return BilinearMaps(*(functools.partial(_in_opmath, op) for op in (
            ops.conv2d, ops.conv2d_input_grad, ops.conv2d_weight_grad, ops.conv2d_bias_grad)))
    return _FUNCTION_MAPS


def check_conv2d_args(name, input, weight, bias, stride, padding, dilation, groups, transposed=False,
                      end_padding=(0, 0)):
    """Raise PyTorch's error for arguments conv2d (or conv_transpose2d) rejects. Numbers are already pairs;
    ``end_padding`` is the extra bottom/right zero row/column of padding='same' with an odd total."""
    for argument, value in (("input", input), ("weight", weight), ("bias", bias)):
        if not isinstance(value, torch.Tensor) and not (argument == "bias" and value is None):
            raise TypeError(f"{name}(): argument '{argument}' must be Tensor, not {type(value).__name__}")
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"{name}(): argument 'groups' must be int, not {type(groups).__name__}")
    if input.dim() not in (3, 4):
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to {name}, but got input of size: {list(input.shape)}"
        )
    if weight.dim() != 4:
        raise RuntimeError(f"{name}: expected a 4-D weight, but got weight of size {list(weight.shape)}")
    if input.dtype != weight.dtype or (bias is not None and bias.dtype != input.dtype):
        other = "weight" if input.dtype != weight.dtype else "bias"
        other_dtype = weight.dtype if other == "weight" else bias.dtype
        raise RuntimeError(
            f"Input type ({_dtype_name(input.dtype)}) and {other} type ({_dtype_name(other_dtype)}) should be the same"
        )
    if input.device != weight.device or (bias is not None and bias.device != input.device):
        raise RuntimeError(f"{name}: expected input, weight and bias on one device, but got input on {input.device}, "
                           f"weight on {weight.device}" + ("" if bias is None else f", bias on {bias.device}"))
    if any(s <= 0 for s in stride):
        raise RuntimeError("non-positive stride is not supported")
    if any(p < 0 for p in padding):
        raise RuntimeError("negative padding is not supported")
    if any(d <= 0 for d in dilation):
        raise RuntimeError(f"dilation should be greater than zero, but got {list(dilation)}")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if weight.shape[0] < groups:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be at least {groups} at dimension 0, "
            f"but got weight of size {list(weight.shape)} instead"
        )
    if weight.shape[0] % groups:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
            f"but got weight of size [{list(weight.shape)}] instead"
        )
    batched_shape = list(input.shape) if input.dim() == 4 else [1, *input.shape]
    in_channels = weight.shape[0] if transposed else weight.shape[1] * groups
    out_channels = weight.shape[1] * groups if transposed else weight.shape[0]
    prefix = f"Given transposed=1, weight of size {list(weight.shape)}" if transposed else (
        f"Given groups={groups}, weight of size {list(weight.shape)}"
    )
    if batched_shape[1] != in_channels:
        raise RuntimeError(
            f"{prefix}, expected input{batched_shape} to have {in_channels} channels, "
            f"but got {batched_shape[1]} channels instead"
        )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_channels):
        raise RuntimeError(
            f"Given {'transposed=1, ' if transposed else ''}weight of size {list(weight.shape)}, expected bias to be "
            f"1-dimensional with {out_channels} elements, but got bias of size {list(bias.shape)} instead"
        )
    if not transposed:
        padded = [size + 2 * p + end for size, p, end in zip(batched_shape[2:], padding, end_padding)]
        kernel = [d * (k - 1) + 1 for k, d in zip(weight.shape[2:], dilation)]
        if any(p < k for p, k in zip(padded, kernel)):
            raise RuntimeError(
                f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel size: "
                f"({kernel[0]} x {kernel[1]}). Kernel size can't be greater than actual input size"
            )


def check_elements(input, weight, transposed=False):
    """Raise torch's error for a batched input or a weight without elements.

    torch sends an input with a batch of 0 or 0 channels down a path of its own that checks no dtype and indexes
    the weight's first element (IndexError when it has none); any other input or kernel without elements is
    rejected with RuntimeError.
    """
    if input.shape[0] == 0 or input.shape[1] == 0:
        if input.shape[1] > 0 and weight.numel() == 0:
            raise IndexError("select(): index 0 out of range for tensor of size [0] at dimension 0")
        return
    if input.numel() == 0:
        raise RuntimeError(
            f"Only zero batch or zero channel inputs are supported, but got input shape: {list(input.shape)}"
        )
    if transposed and weight.shape[1] == 0:
        raise RuntimeError(f"non-empty 2D or 4D weight tensor expected, but got: {list(weight.shape)}")
    if weight.numel() == 0:
        raise RuntimeError(
            f"kernel size should be greater than zero, but got kernel_height: {weight.shape[2]} "
            f"kernel_width: {weight.shape[3]}"
        )


def check_dtype(input, dilation, transposed=False):
    """Raise torch's error for a dtype its CPU convolutions do not compute: conv2d computes every floating,
    complex and integer dtype, but dilated no integer dtype but int64, and neither does conv_transpose2d. An input
    without elements takes torch's path for such inputs, which checks no dtype."""
    dtype = input.dtype
    if input.numel() == 0 or dtype.is_floating_point or dtype.is_complex or dtype == torch.int64:
        return
    if transposed:
        raise not_implemented_for("slow_conv_transpose2d_out_cpu", dtype)
    if dtype == torch.bool:
        raise not_implemented_for("slow_conv2d_cpu", dtype)
    if any(d != 1 for d in dilation):
        raise not_implemented_for("slow_conv_dilated<>", dtype)


def transposed_output_size(input, weight, stride, padding, output_padding, groups, dilation):
    """H_out = (H − 1)·s − 2p + d(k − 1) + output_padding + 1, for both spatial dims of a batched 4-D input.

    output_padding picks among the input sizes that conv2d maps to H (when s > 1 several do), so it must be
    smaller than the stride or the dilation. A batch of 0 takes torch's path for inputs without elements, which
    checks neither that nor a positive size (only a negative one).
    """
    empty_batch = input.shape[0] == 0
    if any(op < 0 for op in output_padding):
        raise RuntimeError("negative output_padding is not supported")
    if not empty_batch and any(op >= s and op >= d for op, s, d in zip(output_padding, stride, dilation)):
        raise RuntimeError(
            "output padding must be smaller than either stride or dilation, but got "
            f"output_padding_height: {output_padding[0]} output_padding_width: {output_padding[1]} "
            f"stride_height: {stride[0]} stride_width: {stride[1]} "
            f"dilation_height: {dilation[0]} dilation_width: {dilation[1]}"
        )
    sizes = [
        (size - 1) * s - 2 * p + d * (k - 1) + op + 1
        for size, k, s, p, op, d in zip(input.shape[2:], weight.shape[2:], stride, padding, output_padding, dilation)
    ]
    output_size = (input.shape[0], weight.shape[1] * groups, *sizes)
    if empty_batch and any(size < 0 for size in sizes):
        negative = next(index for index, size in enumerate(output_size) if size < 0)
        raise RuntimeError(
            f"invalid shape dimension {output_size[negative]} at index {negative} of shape {list(output_size)}"
        )
    if not empty_batch and any(size <= 0 for size in sizes):
        raise RuntimeError(
            f"Given input size per channel: ({input.shape[2]} x {input.shape[3]}). "
            f"Calculated output size per channel: ({sizes[0]} x {sizes[1]}). Output size is too small"
        )
    return output_size


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.").replace("float32", "float").replace("float64", "double")
