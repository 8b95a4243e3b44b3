"""Fake kernels and autograd formulas of the compiled ops ``torch.ops.manual_conv.*`` (built from csrc/): the conv
core (im2col, and Winograd F(2×2, 3×3) for 3×3 stride-1 layers) and the compiled layers (max pooling's forward
and backward, ReLU's backward, dropout's mask).

The fake kernels give the output's shape and dtype without computing it, so FakeTensor, ``torch.compile`` and
``torch.export`` trace through the ops (with symbolic sizes too). The autograd formulas make the three core
ops each other's derivatives, so the compiled path is differentiable to any order. With δ = grad_output, the
three ops are bilinear maps and each backward is the adjoint of one of their arguments:

    y  = conv2d(x, w) + b                 dx = conv2d_input_grad(δ, w)      dw = conv2d_weight_grad(x, δ)   db = Σδ
    gx = conv2d_input_grad(δ, w)          dδ = conv2d(G, w)                 dw = conv2d_weight_grad(G, δ)
    gw = conv2d_weight_grad(x, δ)         dx = conv2d_input_grad(δ, G)      dδ = conv2d(x, G)
    gb = conv2d_bias_grad(δ)              dδ = G broadcast over (N, H, W)
where G is the gradient arriving at the op's output. The conv ops' vmap rules (register_vmap) are ops/conv_vmap.py's
folds, as the Functions'. ReLU's backward gx = relu_backward(δ, y) (0 where y ≤ 0,
else δ) is linear in δ, so dδ = relu_backward(G, y); its derivative with respect to y is 0 almost everywhere (as
PyTorch's threshold_backward), so none flows to y. max_pool2d's backward is the scatter-add of G to the arg-maxes
(``max_pool2d_input_grad`` in ops/pool.py, which runs the op max_pool2d_backward on CPU), registered here for
direct calls of the op (MaxPool2dFunction calls the op only in its forward). max_pool2d_backward's
gx = scatter-add of δ to the indices is linear in δ, so dδ = the gather of G at the indices.

Layers reach the two max-pool ops through Functions with a jvp and a vmap rule (ops/pool.py), so forward mode and
vmap never meet the ops there; for direct calls the ops get vmap rules here (``torch.library.register_vmap``), the
same folding as the Functions': the vmapped dim folded into the batch dim (N), which pooling treats plane by plane.
The other vmap rules, at the end: relu_backward is element-wise, so a batch is one more dim; dropout_mask follows torch's randomness modes for random ops under vmap.
"""
import torch

import manual_conv._C  # noqa: F401  (loads the library that defines the ops registered below)

from . import conv_vmap
from ._utils import suggests_channels_last
from .conv_reference import first_rows_and_columns
from .pool import fold_into_batch, gather_at_indices, max_pool2d_input_grad, pool_memory_format, pooling_output_size

_ops = torch.ops.manual_conv


def _output_size(size, kernel, stride, padding, dilation):
    """floor((size + 2p - d(k - 1) - 1) / s) + 1, also for symbolic sizes."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_4d(name, tensor):
    torch._check(tensor.dim() == 4, lambda: f"manual_conv: expected {name} to be 4-D, but got {tensor.dim()}-D")


@torch.library.register_fake("manual_conv::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    _check_4d("input", input)
    _check_4d("weight", weight)
    output_height, output_width = (
        _output_size(input.shape[axis], weight.shape[axis], stride[axis - 2], padding[axis - 2], dilation[axis - 2])
        for axis in (2, 3)
    )
    return input.new_empty((input.shape[0], weight.shape[0], output_height, output_width))


@torch.library.register_fake("manual_conv::conv2d_input_grad")
def _conv2d_input_grad_fake(grad_output, weight, input_size, stride, padding, dilation, groups):
    _check_4d("grad_output", grad_output)
    return grad_output.new_empty(input_size)


@torch.library.register_fake("manual_conv::conv2d_weight_grad")
def _conv2d_weight_grad_fake(input, grad_output, weight_size, stride, padding, dilation, groups):
    _check_4d("input", input)
    return input.new_empty(weight_size)


@torch.library.register_fake("manual_conv::conv2d_bias_grad")
def _conv2d_bias_grad_fake(grad_output):
    _check_4d("grad_output", grad_output)
    return grad_output.new_empty((grad_output.shape[1],))


@torch.library.register_fake("manual_conv::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    """(N, C, H_out, W_out) or unbatched (C, H_out, W_out), channels_last when the input suggests it."""
    torch._check(input.dim() in (3, 4), lambda: f"manual_conv: expected a 3-D or 4-D input, but got {input.dim()}-D")
    output_height, output_width = (
        pooling_output_size(input.shape[axis - 2], kernel_size[axis], stride[axis], padding[axis], dilation[axis],
                            ceil_mode)
        for axis in (0, 1)
    )
    output_size = (*input.shape[:-2], output_height, output_width)
    memory_format = pool_memory_format(input)
    return (torch.empty(output_size, dtype=input.dtype, device=input.device, memory_format=memory_format),
            torch.empty(output_size, dtype=torch.int64, device=input.device, memory_format=memory_format))


@torch.library.register_fake("manual_conv::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, indices, input_size, channels_last):
    torch._check(grad_output.dim() == len(input_size),
                 lambda: "manual_conv: expected grad_output to have as many dims as input_size")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(input_size, dtype=grad_output.dtype, device=grad_output.device, memory_format=memory_format)


@torch.library.register_fake("manual_conv::relu_backward")
def _relu_backward_fake(grad_output, output):
    """The kernel's layout rule (csrc/layers_core.cpp): grad_output's strides when empty_like keeps them (it is
    dense) and output has them too, else contiguous."""
    torch._check(grad_output.shape == output.shape,
                 lambda: "manual_conv: expected grad_output and output of the same size")
    grad_input = torch.empty_like(grad_output)
    if grad_input.stride() == grad_output.stride() == output.stride():
        return grad_input
    return grad_output.new_empty(grad_output.shape)


@torch.library.register_fake("manual_conv::dropout_mask")
def _dropout_mask_fake(input, keep_probability):
    return torch.empty_like(input)


def _save_two_tensors_and_conv_args(ctx, inputs, output):
    """Every op but the bias gradient: two tensors, one size list, then stride, padding, dilation, groups."""
    first, second, _, *conv_args = inputs
    ctx.save_for_backward(first, second)
    ctx.conv_args = conv_args


def _conv2d_backward(ctx, grad):
    """y = conv2d(x, w) + b:  dx = conv2d_input_grad(G, w̄), dw = conv2d_weight_grad(x̄, G), db = Σ G (w̄, x̄ complex
    conjugates, as in ops/conv.py; the ops resolve them)."""
    input, weight = ctx.saved_tensors
    needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
    grad_input = _ops.conv2d_input_grad(grad, weight.conj(), input.shape, *ctx.conv_args) if needs_input else None
    grad_weight = _ops.conv2d_weight_grad(input.conj(), grad, weight.shape, *ctx.conv_args) if needs_weight else None
    grad_bias = _ops.conv2d_bias_grad(grad) if needs_bias else None
    return grad_input, grad_weight, grad_bias, None, None, None, None


def _conv2d_input_grad_backward(ctx, grad):
    """gx = conv2d_input_grad(δ, w), the adjoint of conv2d(·, w):  dδ = conv2d(G, w̄), dw = conv2d_weight_grad(G, δ̄)."""
    grad_output, weight = ctx.saved_tensors
    needs_grad_output, needs_weight = ctx.needs_input_grad[:2]
    grad_grad_output = None
    if needs_grad_output:
        grad_grad_output = first_rows_and_columns(_ops.conv2d(grad, weight.conj(), None, *ctx.conv_args),
                                                  grad_output.shape)
    grad_weight = (_ops.conv2d_weight_grad(grad, grad_output.conj(), weight.shape, *ctx.conv_args)
                   if needs_weight else None)
    return grad_grad_output, grad_weight, None, None, None, None, None


def _conv2d_weight_grad_backward(ctx, grad):
    """gw = conv2d_weight_grad(x, δ):  dx = conv2d_input_grad(δ̄, G), dδ = conv2d(x̄, G)."""
    input, grad_output = ctx.saved_tensors
    needs_input, needs_grad_output = ctx.needs_input_grad[:2]
    grad_input = _ops.conv2d_input_grad(grad_output.conj(), grad, input.shape, *ctx.conv_args) if needs_input else None
    grad_grad_output = None
    if needs_grad_output:
        grad_grad_output = first_rows_and_columns(_ops.conv2d(input.conj(), grad, None, *ctx.conv_args),
                                                  grad_output.shape)
    return grad_input, grad_grad_output, None, None, None, None, None


def _conv2d_bias_grad_setup_context(ctx, inputs, output):
    ctx.grad_output_shape = inputs[0].shape


def _conv2d_bias_grad_backward(ctx, grad):
    """gb[o] = Σ_{n,y,x} δ[n, o, y, x]:  dδ[n, o, y, x] = G[o]."""
    return grad.view(1, -1, 1, 1).expand(ctx.grad_output_shape)


torch.library.register_autograd(
    "manual_conv::conv2d", _conv2d_backward, setup_context=_save_two_tensors_and_conv_args
)
torch.library.register_autograd(
    "manual_conv::conv2d_input_grad", _conv2d_input_grad_backward, setup_context=_save_two_tensors_and_conv_args
)
torch.library.register_autograd(
    "manual_conv::conv2d_weight_grad", _conv2d_weight_grad_backward, setup_context=_save_two_tensors_and_conv_args
)
torch.library.register_autograd(
    "manual_conv::conv2d_bias_grad", _conv2d_bias_grad_backward, setup_context=_conv2d_bias_grad_setup_context
)


# Winograd F(2×2, 3×3) (csrc/winograd_core.h): the same three bilinear maps for 3×3 stride-1 convolutions, with the
# conv core's signatures and shapes, so the same fake kernels. Their derivatives are the table above written with
# the Winograd ops themselves (and conv2d_bias_grad), so a layer computed by Winograd stays Winograd to any order.
for _name, _fake in (("conv2d", _conv2d_fake), ("conv2d_input_grad", _conv2d_input_grad_fake),
                     ("conv2d_weight_grad", _conv2d_weight_grad_fake)):
    torch.library.register_fake(f"manual_conv::winograd_{_name}")(_fake)


def _winograd_conv2d_backward(ctx, grad):
    """y = winograd_conv2d(x, w) + b:  dx = winograd_conv2d_input_grad(G, w), dw = winograd_conv2d_weight_grad(x, G)."""
    input, weight = ctx.saved_tensors
    needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
    grad_input = _ops.winograd_conv2d_input_grad(grad, weight, input.shape, *ctx.conv_args) if needs_input else None
    grad_weight = (_ops.winograd_conv2d_weight_grad(input, grad, weight.shape, *ctx.conv_args) if needs_weight
                   else None)
    grad_bias = _ops.conv2d_bias_grad(grad) if needs_bias else None
    return grad_input, grad_weight, grad_bias, None, None, None, None


def _winograd_conv2d_input_grad_backward(ctx, grad):
    """gx = winograd_conv2d_input_grad(δ, w):  dδ = winograd_conv2d(G, w), dw = winograd_conv2d_weight_grad(G, δ)."""
    grad_output, weight = ctx.saved_tensors
    needs_grad_output, needs_weight = ctx.needs_input_grad[:2]
    grad_grad_output = _ops.winograd_conv2d(grad, weight, None, *ctx.conv_args) if needs_grad_output else None
    grad_weight = (_ops.winograd_conv2d_weight_grad(grad, grad_output, weight.shape, *ctx.conv_args) if needs_weight
                   else None)
    return grad_grad_output, grad_weight, None, None, None, None, None


def _winograd_conv2d_weight_grad_backward(ctx, grad):
    """gw = winograd_conv2d_weight_grad(x, δ):  dx = winograd_conv2d_input_grad(δ, G), dδ = winograd_conv2d(x, G)."""
    input, grad_output = ctx.saved_tensors
    needs_input, needs_grad_output = ctx.needs_input_grad[:2]
    grad_input = (_ops.winograd_conv2d_input_grad(grad_output, grad, input.shape, *ctx.conv_args) if needs_input
                  else None)
    grad_grad_output = _ops.winograd_conv2d(input, grad, None, *ctx.conv_args) if needs_grad_output else None
    return grad_input, grad_grad_output, None, None, None, None, None


torch.library.register_autograd(
    "manual_conv::winograd_conv2d", _winograd_conv2d_backward, setup_context=_save_two_tensors_and_conv_args
)
torch.library.register_autograd(
    "manual_conv::winograd_conv2d_input_grad", _winograd_conv2d_input_grad_backward,
    setup_context=_save_two_tensors_and_conv_args
)
torch.library.register_autograd(
    "manual_conv::winograd_conv2d_weight_grad", _winograd_conv2d_weight_grad_backward,
    setup_context=_save_two_tensors_and_conv_args
)


def _register_conv_vmap(prefix, grouped_ops):
    """vmap of the four conv ops (or the three Winograd ones), by ops/conv_vmap.py's folds: the same rules as the
    Functions', calling the op itself. A fold into the groups makes a grouped call, which Winograd does not
    compute (algorithm.py): it runs on ``grouped_ops``, the im2col ones, where the groups are more than one."""
    def op(name):
        ungrouped, grouped = getattr(_ops, prefix + name), getattr(grouped_ops, name)
        return lambda *args: (ungrouped if args[-1] == 1 else grouped)(*args)

    conv2d, input_grad, weight_grad = op("conv2d"), op("conv2d_input_grad"), op("conv2d_weight_grad")

    def conv2d_rule(info, in_dims, *args):
        return conv_vmap.vmap_conv2d(conv2d, info, in_dims, *args)

    def input_grad_rule(info, in_dims, grad_output, weight, input_size, *conv_args):
        def transposed(grad_output, weight, _bias, input_size, *conv_args):
            return input_grad(grad_output, weight, list(input_size), *conv_args)
        return conv_vmap.vmap_conv_transpose2d(transposed, info, (*in_dims[:2], None), grad_output, weight, None,
                                               input_size, *conv_args)

    def weight_grad_rule(info, in_dims, *args):
        return conv_vmap.vmap_conv2d_weight_grad(weight_grad, info, in_dims, *args)

    torch.library.register_vmap(f"manual_conv::{prefix}conv2d", conv2d_rule)
    torch.library.register_vmap(f"manual_conv::{prefix}conv2d_input_grad", input_grad_rule)
    torch.library.register_vmap(f"manual_conv::{prefix}conv2d_weight_grad", weight_grad_rule)


_register_conv_vmap("", _ops)
_register_conv_vmap("winograd_", _ops)
torch.library.register_vmap(
    "manual_conv::conv2d_bias_grad",
    lambda info, in_dims, grad_output: conv_vmap.vmap_conv2d_bias_grad(_ops.conv2d_bias_grad, info, in_dims,
                                                                       grad_output))


def _max_pool2d_setup_context(ctx, inputs, output):
    _, indices = output
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(indices)
    ctx.input_shape = inputs[0].shape
    ctx.channels_last = suggests_channels_last(inputs[0])


def _max_pool2d_backward(ctx, grad, _grad_indices):
    """y = max over each window, indices = its arg-max:  dx = the scatter-add of G to the arg-maxes (ops/pool.py),
    laid out as the input."""
    (indices,) = ctx.saved_tensors
    return max_pool2d_input_grad(grad, indices, ctx.input_shape, ctx.channels_last), None, None, None, None, None


torch.library.register_autograd(
    "manual_conv::max_pool2d", _max_pool2d_backward, setup_context=_max_pool2d_setup_context
)


def _save_second_input(ctx, inputs, output):
    """max_pool2d_backward's indices, relu_backward's output: what their derivatives gather or select by."""
    ctx.save_for_backward(inputs[1])


def _max_pool2d_backward_backward(ctx, grad):
    """gx[n, c, p] = Σ_{w: indices[n, c, w] = p} δ[n, c, w]:  dδ[n, c, w] = G[n, c, indices[n, c, w]] (a gather)."""
    (indices,) = ctx.saved_tensors
    return gather_at_indices(grad, indices), None, None, None


torch.library.register_autograd(
    "manual_conv::max_pool2d_backward", _max_pool2d_backward_backward, setup_context=_save_second_input
)


@torch.library.register_vmap("manual_conv::max_pool2d")
def _max_pool2d_vmap(info, in_dims, input, *pool_args):
    """vmap over the input: a batch of (N, C, H, W) samples pooled as B·N images (unbatched samples as B images)."""
    folded, unfold = fold_into_batch(input, in_dims[0], info.batch_size)
    output, indices = _ops.max_pool2d(folded, *pool_args)
    return (unfold(output), unfold(indices)), (0, 0)


@torch.library.register_vmap("manual_conv::max_pool2d_backward")
def _max_pool2d_backward_vmap(info, in_dims, grad_output, indices, input_size, channels_last):
    """vmap over δ and/or the indices: both folded into N (an unbatched one expanded to the batch), the input size's
    batch dim scaled to match."""
    samples = len(input_size)
    folded, unfold = fold_into_batch(grad_output, in_dims[0], info.batch_size, samples)
    folded_indices, _ = fold_into_batch(indices, in_dims[1], info.batch_size, samples)
    folded_size = (folded.shape[0], *input_size[-3:])
    return unfold(_ops.max_pool2d_backward(folded, folded_indices, folded_size, channels_last)), 0


def _relu_backward_backward(ctx, grad):
    """gx = relu_backward(δ, y):  dδ = relu_backward(G, y) (linear in δ), dy = 0 (a step function of y)."""
    (output,) = ctx.saved_tensors
    grad_grad_output = _ops.relu_backward(grad, output) if ctx.needs_input_grad[0] else None
    return grad_grad_output, None


torch.library.register_autograd(
    "manual_conv::relu_backward", _relu_backward_backward, setup_context=_save_second_input
)


# vmap rules (torch.func.vmap) of the compiled layers' ops, which a backward or a mask draw can receive batched.
def _relu_backward_vmap(info, in_dims, grad_output, output):
    """relu_backward is element-wise: the two tensors aligned batch-first (an unbatched one expanded), one call."""
    grad_output, output = (
        tensor.movedim(dim, 0) if dim is not None else tensor.expand(info.batch_size, *tensor.shape)
        for tensor, dim in zip((grad_output, output), in_dims))
    return _ops.relu_backward(grad_output, output), 0


def _dropout_mask_vmap(info, in_dims, input, keep_probability):
    """As torch's random ops under vmap, and as the Python path's ``empty_like(x).bernoulli_(q)`` there: randomness
    'error' raises vmap's error, 'same' draws one mask of a sample's shape for every sample (unbatched), 'different'
    draws the stacked input's mask at once, in its memory order as bernoulli_ does (the same numbers as the
    Python path's)."""
    if info.randomness == "error":
        raise RuntimeError("vmap: called random operation while in randomness error mode. Please either use the "
                           "'same' or 'different' randomness flags on vmap or perform the randomness operation out "
                           "of vmap")
    (dim,) = in_dims[:1]
    if info.randomness == "same":
        return _ops.dropout_mask(input.select(dim, 0), keep_probability), None
    return _ops.dropout_mask(input, keep_probability), dim


torch.library.register_vmap("manual_conv::relu_backward", _relu_backward_vmap)
torch.library.register_vmap("manual_conv::dropout_mask", _dropout_mask_vmap)
