"""vmap of the four convolution maps, by folding the vmapped dim B into a dim the map already treats independently.

One rule per map, shared by the autograd Functions' ``vmap`` staticmethods (ops/conv.py, which pass their own
``.apply``, so the batched call stays differentiable and runs by hand) and by the compiled ops'
``torch.library.register_vmap`` rules (ops/library.py, which pass the op). Each takes ``(info, in_dims, *args)`` as
both APIs do and returns ``(output, out_dim)``. With x (N, C, H, W), w (O, C/g, k, k), δ (N, O, H', W'):

    y  = conv2d(x, w, b)     only x batched: x → (B·N, C, H, W), y (B, N, O, ...)
                             w batched: w → (B·O, C/g, k, k), x → (N, B·C, H, W) (the same x repeated when it
                             is not batched), groups B·g, y (N, B, O, ...)
    gx = input_grad(δ, w)    (conv_transpose2d) the same with δ in the role of x: (B·N, C, ...) or (N, B·C, ...)
    gw = weight_grad(x, δ)   always groups: x → (N, B·C, H, W), δ → (N, B·O, H', W'), groups B·g, giving
                             gw (B·O, C/g, k, k): the per-sample gradients' map
    gb = bias_grad(δ)        δ → (N, B·O, H', W'), gb (B·O)

A batched bias is folded with a batched weight (B·O entries, b-major as the filters); with an unbatched weight it
is added after the unbatched-bias call (y + b[B, 1, O, 1, 1]: for float16/bfloat16 one rounding more than the
loop's). Group b·g + j of a folded call reads channels b·C + j·C/g … and filters b·O + j·O/g …: exactly slice b's
group j, so every output element is the sum the loop's call computes (up to rounding: a GEMM's blocking, or a
grouped fold running im2col where the loop's call would run Winograd).
"""
from types import SimpleNamespace

import torch


def _into_batch(tensor, dim):
    """(…B at dim…, N, …) → (B·N, …): the vmapped dim folded into dim 0, slice b first."""
    return tensor.movedim(dim, 0).flatten(0, 1)


def _into_channels(tensor, dim, size):
    """(N, C, …) batched at dim → (N, B·C, …), slice b's channels at b·C; an unbatched tensor (dim None) repeated."""
    if dim is None:
        return tensor.repeat(1, size, *(1,) * (tensor.dim() - 2))
    return tensor.movedim(dim, 1).flatten(1, 2)


def _into_filters(tensor, dim, size):
    """(O, …) batched at dim → (B·O, …), slice b's at b·O; an unbatched one (dim None) repeated."""
    if dim is None:
        return tensor.repeat(size, *(1,) * (tensor.dim() - 1))
    return _into_batch(tensor, dim)


def _folded_bias(bias, bias_dim, size):
    return None if bias is None else _into_filters(bias, bias_dim, size)


def _add_batched_bias(output, bias, bias_dim):
    """output (B or 1, N, O, H, W) + bias[b, o]: a batched bias with an unbatched weight."""
    return output + bias.movedim(bias_dim, 0)[:, None, :, None, None]


def _vmap_linear_in_channels(call, info, input_dim, weight_dim, bias_dim, input, weight, bias, output_size, conv_args):
    """The fold shared by conv2d and its transpose: ``call(input, weight, bias, output_size, *conv_args)``, where
    output_size is the (N, C, H, W) of the transposed map's output (None for conv2d)."""
    size = info.batch_size
    *spatial_args, groups = conv_args
    if weight_dim is None:
        unbatched_bias = bias if bias_dim is None else None
        if input_dim is None:  # only the bias is batched
            output = call(input, weight, None, output_size, *conv_args).unsqueeze(0)
        else:
            folded_size = None if output_size is None else (size * output_size[0], *output_size[1:])
            output = call(_into_batch(input, input_dim), weight, unbatched_bias, folded_size, *conv_args)
            output = output.unflatten(0, (size, output.shape[0] // size))
        if bias_dim is not None:
            output = _add_batched_bias(output, bias, bias_dim)
        return output, 0
    folded_size = None if output_size is None else (output_size[0], size * output_size[1], *output_size[2:])
    output = call(_into_channels(input, input_dim, size), _into_filters(weight, weight_dim, size),
                  _folded_bias(bias, bias_dim, size), folded_size, *spatial_args, groups * size)
    return output.unflatten(1, (size, output.shape[1] // size)), 1


def vmap_conv2d(conv2d, info, in_dims, input, weight, bias, stride, padding, dilation, groups):
    """conv2d(input, weight, bias, stride, padding, dilation, groups) over any batched subset of its tensors."""
    def call(input, weight, bias, _output_size, *conv_args):
        return conv2d(input, weight, bias, *conv_args)

    return _vmap_linear_in_channels(call, info, *in_dims[:3], input, weight, bias, None,
                                    (stride, padding, dilation, groups))


def vmap_conv_transpose2d(conv_transpose2d, info, in_dims, input, weight, bias, output_size, stride, padding,
                          dilation, groups):
    """conv_transpose2d(input, weight, bias, output_size, stride, padding, dilation, groups) (conv2d's input
    gradient with input = δ, plus a bias), output_size the unbatched output's (N, C, H, W)."""
    return _vmap_linear_in_channels(conv_transpose2d, info, *in_dims[:3], input, weight, bias, tuple(output_size),
                                    (stride, padding, dilation, groups))


def vmap_conv2d_weight_grad(weight_grad, info, in_dims, input, grad_output, weight_size, stride, padding, dilation,
                            groups):
    """weight_grad(input, grad_output, weight_size, stride, padding, dilation, groups): B weight gradients as the
    B·g groups' of one call (the sum over N stays within each slice)."""
    size = info.batch_size
    input_dim, grad_output_dim = in_dims[:2]
    folded_size = (size * weight_size[0], *weight_size[1:])
    output = weight_grad(_into_channels(input, input_dim, size), _into_channels(grad_output, grad_output_dim, size),
                         folded_size, stride, padding, dilation, groups * size)
    return output.unflatten(0, (size, weight_size[0])), 0


def vmap_conv2d_bias_grad(bias_grad, info, in_dims, grad_output):
    """bias_grad(grad_output) = Σ_{n, y, x} δ: the B slices' channels side by side, (N, B·O, H', W') → (B·O)."""
    size = info.batch_size
    output = bias_grad(_into_channels(grad_output, in_dims[0], size))
    return output.unflatten(0, (size, output.shape[0] // size)), 0


def is_legacy_batched(*args):
    """Whether any argument is a tensor batched by torch's legacy vmap (``torch._vmap_internals``). (Never while
    torch.compile traces, which cannot call the test and has no such tensors.)"""
    return not torch.compiler.is_compiling() and any(
        isinstance(arg, torch.Tensor) and torch._C._functorch.is_legacy_batchedtensor(arg) for arg in args)


def is_transformed(tensor):
    """Whether ``tensor`` is a torch.func wrapper (batched, grad-tracked) or batched by the legacy vmap."""
    return is_legacy_batched(tensor) or (
        not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(tensor))


def run_legacy_batched(rule, call, *args):
    """``rule(call, info, in_dims, *args)`` on arguments batched by torch's legacy vmap, rewrapped as its output.

    gradcheck's check_batched_grad and check_batched_forward_grad vmap with ``torch._vmap_internals`` (not
    torch.func.vmap), which knows no Function's vmap rule: it runs the Function's forward on its batched tensors,
    op by op, and the Python reference kernels write tiles into buffers in place, which it cannot batch. So the
    forwards send such a call here: the batch dims are taken off (at the innermost legacy level, the only one
    gradcheck makes), folded by the same rule as torch.func.vmap's, and put back first.
    """
    level = torch._C._vmapmode_increment_nesting()
    torch._C._vmapmode_decrement_nesting()
    level -= 1  # the innermost level in force
    in_dims, unwrapped, size = [], [], None
    for arg in args:
        if isinstance(arg, torch.Tensor) and torch._C._functorch.is_legacy_batchedtensor(arg):
            arg = torch._remove_batch_dim(arg, level, 1, 0)  # the 1 only sizes unbatched tensors, none here
            in_dims.append(0)
            size = arg.shape[0]
        else:
            in_dims.append(None)
        unwrapped.append(arg)
    output, out_dim = rule(call, SimpleNamespace(batch_size=size, randomness="error"), tuple(in_dims), *unwrapped)
    # batch dim first in memory: forward AD lays a tangent out as its primal by as_strided, which the legacy vmap
    # batches only there
    return torch._add_batch_dim(output.movedim(out_dim, 0).contiguous(), 0, level)
