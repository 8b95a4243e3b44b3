"""Pooling's autograd Functions: max, average, adaptive average and max, and global average pooling, forward and
backward by hand.

Notation (docs/derivations.md, "Pooling"): x the input (N, C, H, W) or unbatched (C, H, W), y the output, δ = ∂L/∂y;
k, s, p, d are kernel size, stride, padding and dilation. The Functions take what PyTorch's pooling kernels take
(3-D or 4-D input, checked arguments in pairs of ints); ``check_pool2d_args`` and ``check_adaptive_pool2d_args``
raise PyTorch's errors, in PyTorch's order.

As PyTorch's: outputs and input gradients are channels_last exactly when the input suggests it (c10's rule, so
1-channel tensors follow the layout they were made in), with the strides of ``torch.empty(..., memory_format=)``;
float16/bfloat16 sums are computed in float32 and rounded once; no window sum multiplies a structural zero into
data (a padding tap is skipped, never multiplied), so ±∞ and NaN propagate exactly as in PyTorch.

Every backward is linear in δ and written with differentiable tensor ops (slice-adds, scatter-add, index_add), so
double backward works: the second derivative routes the incoming gradient the way the forward routed x.

Forward mode (jvp), with ẋ the input's tangent: the average poolings are linear, so ẏ is the same pooling of ẋ (the
Function applied to ẋ); max pooling is linear where the arg-max is fixed, so ẏ is ẋ gathered at the saved arg-max.
vmap: each Function's ``vmap`` folds the vmapped dim into the batch dim (``fold_into_batch``), which pooling
treats plane by plane, and calls the same Function: the batched call runs by hand and stays differentiable. The
backwards allocate their gradients like δ (``_new_zeros``), so they run under vmap too (per-sample gradients).
"""
import torch
import torch.nn.functional as F

from ..backend import compiled_cpu_layers, compiled_layers
from ._utils import (Function, _pair, not_implemented_for, opmath_dtype, scalar_type_name,
                     suggests_channels_last)
from .conv_reference import im2col


def pooling_output_size(size, kernel, stride, padding, dilation, ceil_mode):
    """H_out = ⌊(H + 2p − d(k − 1) − 1 [+ s − 1 with ceil_mode]) / s⌋ + 1.

    With ceil_mode the last window may hang over the bottom/right edge, but it must start inside the input or its
    left padding; a window starting at (H_out − 1)·s ≥ H + p would see only padding and is dropped.
    """
    rounding = stride - 1 if ceil_mode else 0
    out = (size + 2 * padding - dilation * (kernel - 1) - 1 + rounding) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def pool_memory_format(input):
    """The layout of a pooling's output and input gradient, as PyTorch chooses it: channels_last when the input
    suggests it (a 4-D tensor only), else contiguous."""
    return torch.channels_last if suggests_channels_last(input) else torch.contiguous_format


def _new_empty(shape, like, memory_format, dtype=None):
    """A tensor of ``shape`` on ``like``'s device, laid out as ``torch.empty(shape, memory_format=...)`` lays it out.
    Made by ``like.new_empty_strided``, so under vmap it is batched when ``like`` is: a backward (or a forward
    called on a tangent by a jvp) that writes batched values into it in place then runs under vmap."""
    strides = torch.empty(shape, device="meta", memory_format=memory_format).stride()
    return like.new_empty_strided(shape, strides, dtype=dtype or like.dtype)


def _new_zeros(shape, like, memory_format, dtype=None):
    """Zeros made as ``_new_empty``."""
    return _new_empty(shape, like, memory_format, dtype).zero_()


def fold_into_batch(tensor, batch_dim, batch_size, sample_dim=None):
    """vmap's ``batch_dim`` of ``tensor`` moved first and folded into the pooling's batch dim, and the function that
    unfolds a result: a batch of 4-D samples (B, N, C, H, W) → (B·N, C, H, W), of 3-D samples (B, C, H, W) as it is
    (a batch of unbatched samples). An unbatched tensor (batch_dim None) is expanded to B copies (a view).
    ``sample_dim``: the samples' number of dims (3 or 4), when it is not ``tensor``'s own."""
    tensor = tensor.unsqueeze(0).expand(batch_size, *tensor.shape) if batch_dim is None else tensor.movedim(
        batch_dim, 0)
    if (sample_dim or tensor.dim() - 1) == 3:
        return tensor, lambda result: result
    samples = tensor.shape[1]
    return tensor.flatten(0, 1), lambda result: result.unflatten(0, (batch_size, samples))


def gather_at_indices(tensor, indices):
    """out[..., w] = tensor[..., indices[..., w]] in every plane: the values at the arg-maxes (flat indices h·W + w
    into the plane), of ``indices``' shape. Max pooling's jvp (ẏ = ẋ at the arg-max) and the derivative of its
    backward's scatter-add."""
    planes = indices.shape[:-2]
    flat_tensor = tensor.reshape(*planes, tensor.shape[-2] * tensor.shape[-1])
    return flat_tensor.gather(-1, indices.reshape(*planes, indices.shape[-2] * indices.shape[-1])).view(indices.shape)


def _plane_shape(input_shape, output_size):
    """The input's leading dims ((N, C) or (C,)) followed by the output's plane."""
    return (*input_shape[:-2], *output_size)


def _as_batch(tensor):
    """An unbatched (C, H, W) tensor as a batch of one (a view), a batch as it is."""
    return tensor if tensor.dim() == 4 else tensor.unsqueeze(0)


def _pool_windows(x, fill, kernel_size, stride, padding, dilation, output_size):
    """cols[n, c, i, j, y, x'] = x_pad[n, c, y·s_H + i·d_H, x'·s_W + j·d_W], x (4-D) padded with ``fill``: a view.

    Shape (N, C, kH, kW, H_out, W_out). Beyond the padding p, ceil_mode's last window may need up to s − 1 more
    rows/columns at the bottom/right: they get ``fill`` too. ``cols[:, :, i, j]`` is tap (i, j) of every window,
    a strided view of x_pad: the pooling loops below run over the few taps, each step over all windows at once.
    """
    (kh, kw), (ph, pw), (dh, dw) = kernel_size, padding, dilation
    (h_out, w_out), (sh, sw) = output_size, stride
    h, w = x.shape[2:]
    extra_h = max(0, (h_out - 1) * sh + dh * (kh - 1) + 1 - (h + 2 * ph))
    extra_w = max(0, (w_out - 1) * sw + dw * (kw - 1) + 1 - (w + 2 * pw))
    sides = (pw, pw + extra_w, ph, ph + extra_h)
    x_pad = F.pad(x, sides, value=fill) if any(sides) else x
    return im2col(x_pad, kernel_size, stride, (0, 0), dilation)[..., :h_out, :w_out]


def _tap_coordinates(output_size, kernel, stride, padding, dilation, device):
    """coord[i, y] = y·s − p + i·d: the input row (or column) that tap i of window y reads; < 0 is padding."""
    taps, windows = torch.arange(kernel, device=device), torch.arange(output_size, device=device)
    return taps[:, None] * dilation + windows * stride - padding


def _first_inside(coordinates, dilation):
    """The first tap's coordinate that falls inside the input (≥ 0), per window: the start moved on by whole
    dilation steps, as PyTorch's ``while (start < 0) start += dilation``."""
    start = coordinates[0]
    return start + (-start).clamp(min=0).add(dilation - 1).div(dilation, rounding_mode="floor") * dilation


def _lowest(dtype):
    return -torch.inf if dtype.is_floating_point else torch.iinfo(dtype).min


def _scan_taps(cols, best, winner):
    """The running maximum over the taps of every window, in PyTorch's scan order (row by row), into ``best``
    (filled with the dtype's lowest value), and the winner into ``winner`` (zeros): 1 + the number of the tap that
    set it, 0 if none beat the lowest value. A tap wins when it is strictly greater than the best so far (ties keep
    the first maximum) or is NaN (the last NaN wins).

    torch.maximum gives the running value under both rules (a NaN, once seen, stays). The winner is updated as
    winner += wins·(t + 1 − winner), a select written as integer arithmetic: torch.where is a scalar loop on CPU,
    several times slower than these vectorised ops. Both are updated in place, keeping their layout.
    """
    kh, kw = cols.shape[2:4]
    for t in range(kh * kw):
        tap = cols[:, :, t // kw, t % kw]
        wins = tap > best
        if tap.dtype.is_floating_point:
            wins |= tap.isnan()
        torch.maximum(best, tap, out=best)
        winner += wins * (t + 1 - winner)


def _arg_max_jvp(ctx, input_tangent, *_):
    """The max poolings' jvp: ẏ = ẋ at the arg-maxes saved for forward (the indices have no tangent)."""
    (indices,) = ctx.saved_tensors
    return gather_at_indices(input_tangent, indices), None


class MaxPool2dFunction(Function):
    """y[n, c, y, x] = max_{i, j} x_pad[n, c, y·s + i·d, x·s + j·d], with x_pad padded by −∞ (the dtype's lowest
    value for integers).

    Returns (y, indices): indices[n, c, y, x] = h·W + w, the position in the input plane of the arg-max. It is
    found as PyTorch's kernel finds it, scanning the taps row by row and taking a tap when it is strictly greater
    than the best so far or is NaN: so ties go to the first maximum, a NaN is the maximum (the last NaN wins and
    propagates to y), and an all −∞ window keeps its first tap inside the input (padding never wins).

    Backward: y depends on one input only, with slope 1, so the gradient is routed to the arg-max:
        ∂L/∂x[n, c, h, w] = Σ_{(y, x): indices[n, c, y, x] = h·W + w} δ[n, c, y, x]
    (overlapping windows that share an arg-max add up). That is a scatter-add, linear in δ
    (``MaxPool2dBackwardFunction``); its own derivative is the gather δ[n, c, y, x] ← G[n, c, indices[n, c, y, x]],
    so double backward works (ties and NaN fixed by the saved indices; the derivative with respect to x is 0 almost
    everywhere).

    Forward mode (jvp): where the arg-max is fixed (no ties), y is x read at the indices, so
        ẏ[n, c, y, x] = ẋ[n, c, indices[n, c, y, x]]
    the gather of ẋ at the saved arg-maxes (the indices have no tangent). vmap: the vmapped dim folded into N.

    Forward kernel: on 'cpp' the compiled ``torch.ops.manual_conv.max_pool2d`` (floating point), else the tap scan.
    """

    @staticmethod
    def forward(input, kernel_size, stride, padding, dilation, ceil_mode):
        if compiled_layers(input):
            return torch.ops.manual_conv.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)
        h, w = input.shape[-2:]
        output_size = tuple(
            pooling_output_size(*args, ceil_mode) for args in zip((h, w), kernel_size, stride, padding, dilation)
        )
        memory_format = pool_memory_format(input)
        lowest = _lowest(input.dtype)
        output = torch.empty(_plane_shape(input.shape, output_size), dtype=input.dtype, device=input.device,
                             memory_format=memory_format).fill_(lowest)
        winner = _new_zeros(output.shape, output, memory_format, torch.uint8 if kernel_size[0] * kernel_size[1] < 255
                            else torch.int64)
        cols = _pool_windows(_as_batch(input), lowest, kernel_size, stride, padding, dilation, output_size)
        _scan_taps(cols, _as_batch(output), _as_batch(winner))  # views, filled in place
        rows, columns = (
            _tap_coordinates(*args, input.device) for args in zip(output_size, kernel_size, stride, padding, dilation)
        )
        # positions[t, y, x]: the input-plane index h·W + w that winner t of window (y, x) stands for; winner 0 (no
        # tap beat the lowest value: an all −∞ window) is the window's first tap inside the input
        first_inside = _first_inside(rows, dilation[0])[:, None] * w + _first_inside(columns, dilation[1])
        positions = torch.stack([first_inside] + [rows[i][:, None] * w + columns[j]
                                                  for i in range(kernel_size[0]) for j in range(kernel_size[1])])
        windows = output_size[0] * output_size[1]
        window_number = torch.arange(windows, device=input.device).view(output_size)
        indices = torch.empty_like(output, dtype=torch.int64)  # winner's layout, which is output's
        torch.take(positions.view(-1), winner.long().mul_(windows).add_(window_number), out=indices)
        return output, indices

    @staticmethod
    def setup_context(ctx, inputs, output):
        input = inputs[0]
        _, indices = output
        ctx.mark_non_differentiable(indices)
        # No tensor of zeros for the indices' gradient (a fill as large as y: 0.5 ms a step for the MNIST net's
        # pooling, as much again for its dropout's mask); backward then gets None for y's gradient when it is
        # undefined (gradcheck calls it so).
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(indices)
        ctx.save_for_forward(indices)
        ctx.input_shape = input.shape
        ctx.channels_last = suggests_channels_last(input)

    @staticmethod
    def backward(ctx, grad_output, _grad_indices):
        (indices,) = ctx.saved_tensors
        grad_input = None if grad_output is None else max_pool2d_input_grad(grad_output, indices, ctx.input_shape,
                                                                           ctx.channels_last)
        return grad_input, None, None, None, None, None

    jvp = staticmethod(_arg_max_jvp)

    @staticmethod
    def vmap(info, in_dims, input, *pool_args):
        folded, unfold = fold_into_batch(input, in_dims[0], info.batch_size)
        output, indices = MaxPool2dFunction.apply(folded, *pool_args)
        return (unfold(output), unfold(indices)), (0, 0)


class MaxPool2dBackwardFunction(Function):
    """Max pooling's backward as a Function of δ: gx[n, c, p] = Σ_{windows w: indices[n, c, w] = p} δ[n, c, w], a
    scatter-add into the input planes, laid out channels_last (the input's layout) or contiguous.

    On 'cpp' a CPU tensor takes the compiled ``torch.ops.manual_conv.max_pool2d_backward``, the same sums in the
    same order as torch's kernel, one plane at a time while it is in cache (float16/bfloat16 sums of overlapping
    windows round after every add there, as in torch's kernel; here they are summed in float32 and rounded once).
    A Function rather than the op itself, so that its derivatives are this one's on both backends:
    Backward: gx is linear in δ, and the adjoint of a scatter-add is the gather: dδ[n, c, w] = G[n, c, indices[n, c, w]].
    Forward mode (jvp): linear in δ, so ġx is the same scatter-add of δ̇ (forward-over-reverse through max pooling).
    vmap: the vmapped dim folded into N (an unbatched δ or indices expanded to the batch).
    """

    @staticmethod
    def forward(grad_output, indices, input_shape, channels_last):
        if compiled_cpu_layers(grad_output):
            return torch.ops.manual_conv.max_pool2d_backward(grad_output, indices, input_shape, channels_last)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        grad_input = _new_zeros(input_shape, grad_output, memory_format, opmath_dtype(grad_output.dtype))
        # (H, W) viewed as one dim (a view of either layout), so the scatter writes into grad_input; view and
        # reshape rather than flatten, which the legacy vmap of gradcheck's batched checks cannot batch
        planes, windows = indices.shape[:-2], indices.shape[-2] * indices.shape[-1]
        grad_input.view(*planes, input_shape[-2] * input_shape[-1]).scatter_add_(
            -1, indices.reshape(*planes, windows), grad_output.reshape(*planes, windows).to(grad_input.dtype))
        return grad_input.to(grad_output.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, indices, *ctx.scatter_args = inputs
        ctx.save_for_backward(indices)
        ctx.save_for_forward(indices)

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        return gather_at_indices(grad, indices), None, None, None

    @staticmethod
    def jvp(ctx, grad_output_tangent, *_):
        (indices,) = ctx.saved_tensors
        return MaxPool2dBackwardFunction.apply(grad_output_tangent, indices, *ctx.scatter_args)

    @staticmethod
    def vmap(info, in_dims, grad_output, indices, input_shape, channels_last):
        samples = len(input_shape)
        folded, unfold = fold_into_batch(grad_output, in_dims[0], info.batch_size, samples)
        folded_indices, _ = fold_into_batch(indices, in_dims[1], info.batch_size, samples)
        folded_shape = (folded.shape[0], *input_shape[-3:])
        return unfold(MaxPool2dBackwardFunction.apply(folded, folded_indices, folded_shape, channels_last)), 0


def max_pool2d_input_grad(grad_output, indices, input_shape, channels_last):
    """∂L/∂x = the scatter-add of δ to the arg-maxes (``MaxPool2dBackwardFunction``), for the max poolings and the
    compiled max_pool2d's registered autograd (ops/library.py). While torch.compile traces, its kernel itself (the
    compiled op on 'cpp', whose registered autograd is the same gather): Dynamo traces a backward, but not a
    Function applied inside it."""
    if torch.compiler.is_compiling():
        return MaxPool2dBackwardFunction.forward(grad_output, indices, input_shape, channels_last)
    return MaxPool2dBackwardFunction.apply(grad_output, indices, input_shape, channels_last)


def _window_counts(size, output_size, kernel, stride, padding, count_include_pad, device):
    """How many taps of each window along one dim count in the divisor, as PyTorch clips windows:
    a window starts at t = y·s − p and ends at min(t + k, H + p) (ceil_mode's overhang beyond the padding never
    counts); count_include_pad=False also drops the padding, leaving min(t + k, H) − max(t, 0)."""
    start = torch.arange(output_size, device=device) * stride - padding
    end = (start + kernel).clamp(max=size + padding)
    if count_include_pad:
        return end - start
    return end.clamp(max=size) - start.clamp(min=0)


def _avg_pool_divisor(input_size, output_size, kernel_size, stride, padding, count_include_pad, divisor_override,
                      device):
    """D[y, x]: divisor_override, or the product of the per-dim window counts (shape (H_out, W_out))."""
    if divisor_override is not None:
        return divisor_override
    counts_h, counts_w = (
        _window_counts(*args, count_include_pad, device)
        for args in zip(input_size, output_size, kernel_size, stride, padding)
    )
    return counts_h[:, None] * counts_w[None, :]


def _taps_inside(size, output_size, kernel, stride, padding):
    """For each tap i of the windows along one dim: (windows, inputs), the slice of windows y whose tap i reads
    inside the input, at h = y·s − p + i ∈ [0, H), and the strided slice of those rows h. Taps that read only
    padding for every window are left out: padding adds nothing to a sum."""
    taps = []
    for i in range(kernel):
        first = max(0, -((i - padding) // stride))  # the first y with y·s − p + i ≥ 0
        end = min(output_size, (size - 1 + padding - i) // stride + 1)  # past the last y with h ≤ H − 1
        if first < end:
            row = first * stride - padding + i
            taps.append((slice(first, end), slice(row, row + (end - first - 1) * stride + 1, stride)))
    return taps


def _window_taps(input_size, output_size, kernel_size, stride, padding):
    """For every tap (i, j) that reads inside the input for some window: (windows, inputs), the (rows, columns)
    slices of the windows it reads inside and of the input elements it reads there (``_taps_inside`` along each
    dim), for ``_plane_view``."""
    rows, columns = (_taps_inside(*args) for args in zip(input_size, output_size, kernel_size, stride, padding))
    return [((window_rows, window_columns), (input_rows, input_columns))
            for window_rows, input_rows in rows for window_columns, input_columns in columns]


def _plane_view(tensor, rows, columns):
    """tensor[..., rows, columns] for slices ``rows`` and ``columns``, a view. A slice of a whole dim is left out:
    an index that selects all of a tensor makes torch's indexing call aten::alias, which the legacy vmap of
    gradcheck's batched checks cannot batch."""
    for dim, index in ((-2, rows), (-1, columns)):
        if index.indices(tensor.shape[dim]) != (0, tensor.shape[dim], 1):
            tensor = tensor[..., index, :] if dim == -2 else tensor[..., index]
    return tensor


class AvgPool2dFunction(Function):
    """y[n, c, y, x] = (1 / D[y, x]) · Σ_{i, j: inside} x[n, c, y·s − p + i, x·s − p + j]: the window's sum over
    the taps that read inside the input (zero padding adds nothing, so it is skipped rather than added), divided
    by D, divisor_override or the window's size counted as ``_window_counts`` does (D = D_H[y]·D_W[x]).

    Computed tap by tap: for each (i, j), the input's strided slice that tap reads is added to the windows that
    read inside the input, as PyTorch's kernel adds them (row by row, in float32 for float16/bfloat16). Integer
    (int64) inputs sum exactly and divide with truncation, as PyTorch does.

    Backward: every input in window (y, x) gets the same share of its gradient,
        ∂L/∂x[n, c, h, w] = Σ_{windows (y, x) containing (h, w)} δ[n, c, y, x] / D[y, x]
    the adjoint of the forward: for each tap, the windows' slice of δ/D added into the input's strided slice.
    Linear in δ and built from differentiable slice-adds: double backward works.

    Forward mode (jvp): y is linear in x, so ẏ = avg_pool2d(ẋ), this Function applied to the tangent.
    vmap: the vmapped dim folded into N.
    """

    @staticmethod
    def forward(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        h, w = input.shape[-2:]
        output_size = tuple(
            pooling_output_size(*args, 1, ceil_mode) for args in zip((h, w), kernel_size, stride, padding)
        )
        sums = _new_zeros(_plane_shape(input.shape, output_size), input, pool_memory_format(input),
                          opmath_dtype(input.dtype))
        for windows, inputs in _window_taps((h, w), output_size, kernel_size, stride, padding):
            _plane_view(sums, *windows).add_(_plane_view(input, *inputs))  # add_, not +=: no setitem to batch
        divisor = _avg_pool_divisor((h, w), output_size, kernel_size, stride, padding, count_include_pad,
                                    divisor_override, input.device)
        if input.dtype.is_floating_point:
            return sums.div_(divisor).to(input.dtype)
        return sums.div_(divisor, rounding_mode="trunc")

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, *pool_args = inputs
        ctx.input_shape = input.shape
        ctx.memory_format = pool_memory_format(input)
        ctx.pool_args = pool_args

    @staticmethod
    def backward(ctx, grad_output):
        kernel_size, stride, padding, _, count_include_pad, divisor_override = ctx.pool_args
        input_size, output_size = ctx.input_shape[-2:], grad_output.shape[-2:]
        divisor = _avg_pool_divisor(input_size, output_size, kernel_size, stride, padding, count_include_pad,
                                    divisor_override, grad_output.device)
        share = grad_output.to(opmath_dtype(grad_output.dtype)) / divisor
        grad_input = _new_zeros(ctx.input_shape, share, ctx.memory_format)
        for windows, inputs in _window_taps(input_size, output_size, kernel_size, stride, padding):
            _plane_view(grad_input, *inputs).add_(_plane_view(share, *windows))
        return grad_input.to(grad_output.dtype), None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        return AvgPool2dFunction.apply(input_tangent, *ctx.pool_args)

    @staticmethod
    def vmap(info, in_dims, input, *pool_args):
        folded, unfold = fold_into_batch(input, in_dims[0], info.batch_size)
        return unfold(AvgPool2dFunction.apply(folded, *pool_args)), 0


def _adaptive_windows(size, output_size, device):
    """Window i along one dim spans rows b_i ≤ h < e_i, b_i = ⌊i·H / H_out⌋, e_i = ⌈(i + 1)·H / H_out⌉; neighbours
    overlap by a row when H_out does not divide H. Returns (taps, sizes): for every t < the largest size, the
    windows i with a t-th row (e_i − b_i > t) and those rows b_i + t; and every window's size e_i − b_i."""
    bounds = [(i * size // output_size, -(-(i + 1) * size // output_size)) for i in range(output_size)]
    as_tensor = lambda values: torch.tensor(values, dtype=torch.int64, device=device)  # noqa: E731
    taps = []
    for t in range(max((end - begin for begin, end in bounds), default=0)):
        windows = [i for i, (begin, end) in enumerate(bounds) if end - begin > t]
        taps.append((as_tensor(windows), as_tensor([bounds[i][0] + t for i in windows])))
    return taps, as_tensor([end - begin for begin, end in bounds])


def _window_sums(x, dim, taps, size, memory_format, dtype):
    """out[..., i, ...] = Σ_t x[..., b_i + t, ...] along ``dim``: each window's sum of its rows, tap by tap (its
    t-th rows, index_select, added into their windows, index_add), in ``dtype``. Nothing is multiplied by a zero
    weight, and no temporary is larger than out."""
    shape = list(x.shape)
    shape[dim] = size
    sums = _new_zeros(shape, x, memory_format, dtype)
    for windows, rows in taps:
        sums.index_add_(dim, windows, x.index_select(dim, rows).to(dtype))
    return sums


def _window_shares(share, dim, taps, size, memory_format):
    """The adjoint of ``_window_sums``: out[..., h, ...] = Σ_{windows i ∋ h} share[..., i, ...] along ``dim``, tap
    by tap (the windows' shares, index_select, added into their t-th rows, index_add)."""
    shape = list(share.shape)
    shape[dim] = size
    grad = _new_zeros(shape, share, memory_format)
    for windows, rows in taps:
        grad.index_add_(dim, rows, share.index_select(dim, windows))
    return grad


class AdaptiveAvgPool2dFunction(Function):
    """y[n, c, i, j] = (1 / (|R_i|·|C_j|)) · Σ_{h ∈ R_i, w ∈ C_j} x[n, c, h, w], with R_i = [b_i, e_i) and C_j the
    windows of ``_adaptive_windows`` along H and W.

    The sum over a rectangle is the sum over its rows of the sums over its columns, so it is taken one dim at a
    time, each a sum of the rows (columns) in every window, ``_window_sums``: the product with the 0/1 window
    matrix of docs/derivations.md, without multiplying its zeros into x (0·∞ would be NaN). In float32 for
    float16/bfloat16, rounded once.
    Backward: y is linear in x, and each input gets 1/size of the gradient of every window holding it:
        ∂L/∂x[n, c, h, w] = Σ_{i: h ∈ R_i} Σ_{j: w ∈ C_j} δ[n, c, i, j] / (|R_i|·|C_j|)
    the adjoint window sums, ``_window_shares``, one dim at a time. Made of index_select and index_add: double
    backward works. As PyTorch, a backward with no output element per plane (no channels in a batch, or an
    output size 0) is an error.

    Forward mode (jvp): linear, so ẏ = adaptive_avg_pool2d(ẋ), this Function applied to the tangent.
    vmap: the vmapped dim folded into N.
    """

    @staticmethod
    def forward(input, output_size):
        memory_format = pool_memory_format(input)
        output_shape = _plane_shape(input.shape, output_size)
        if torch.Size(output_shape).numel() == 0:  # nothing to compute, whatever the dtype (as PyTorch)
            return _new_zeros(output_shape, input, memory_format)
        (taps_h, sizes_h), (taps_w, sizes_w) = (
            _adaptive_windows(size, out, input.device) for size, out in zip(input.shape[-2:], output_size)
        )
        dtype = opmath_dtype(input.dtype)
        rows = _window_sums(input, -2, taps_h, output_size[0], memory_format, dtype)
        sums = _window_sums(rows, -1, taps_w, output_size[1], memory_format, dtype)
        return sums.div_(sizes_h[:, None] * sizes_w).to(input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.input_shape, ctx.output_size = inputs[0].shape, inputs[1]
        ctx.memory_format = pool_memory_format(inputs[0])

    @staticmethod
    def backward(ctx, grad_output):
        for dim in range(1, grad_output.dim()):
            if grad_output.shape[dim] == 0:
                raise RuntimeError(
                    "adaptive_avg_pool2d_backward(): Expected grad_output to have non-zero size for non-batch "
                    f"dimensions, but grad_output has sizes {list(grad_output.shape)} with dimension {dim} being empty"
                )
        height, width = ctx.input_shape[-2:]
        (taps_h, sizes_h), (taps_w, sizes_w) = (
            _adaptive_windows(*sizes, grad_output.device) for sizes in zip((height, width), grad_output.shape[-2:])
        )
        share = grad_output.to(opmath_dtype(grad_output.dtype)) / (sizes_h[:, None] * sizes_w)
        columns = _window_shares(share, -1, taps_w, width, ctx.memory_format)
        grad_input = _window_shares(columns, -2, taps_h, height, ctx.memory_format)
        return grad_input.to(grad_output.dtype), None

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        return AdaptiveAvgPool2dFunction.apply(input_tangent, ctx.output_size)

    @staticmethod
    def vmap(info, in_dims, input, output_size):
        folded, unfold = fold_into_batch(input, in_dims[0], info.batch_size)
        return unfold(AdaptiveAvgPool2dFunction.apply(folded, output_size)), 0


def _adaptive_bounds(size, output_size, device):
    """(begins, lasts, steps): b_i and e_i − 1 of every window i along one dim (see ``_adaptive_windows``), as
    tensors, and the longest window's length (a Python int: no data-dependent size for torch.compile)."""
    begins = [i * size // output_size for i in range(output_size)]
    lasts = [-(-(i + 1) * size // output_size) - 1 for i in range(output_size)]
    steps = max(last - begin for begin, last in zip(begins, lasts)) + 1
    return (*(torch.tensor(values, dtype=torch.int64, device=device) for values in (begins, lasts)), steps)


def _scan_adaptive_windows(x, dim, bounds, best, winner):
    """The running maximum along ``dim`` over each adaptive window's rows b_i, b_i + 1, ..., into ``best`` and the
    winning step into ``winner``, by ``_scan_taps``'s rule (strictly greater, or NaN). Step t reads row
    min(b_i + t, e_i − 1): a window shorter than the longest reads its last row again, which never beats itself
    (a NaN wins again, at the same row). Returns the row of each window's winner, b_i for none (all −∞)."""
    begins, lasts, steps = bounds
    for t in range(steps):
        tap = x.index_select(dim, torch.minimum(begins + t, lasts))
        wins = tap > best
        wins |= tap.isnan()
        torch.maximum(best, tap, out=best)
        winner += wins * (t + 1 - winner)
    shape = [1] * best.dim()
    shape[dim] = -1
    return torch.minimum(begins.view(shape) + (winner.long() - 1).clamp_(min=0), lasts.view(shape))


class AdaptiveMaxPool2dFunction(Function):
    """y[n, c, i, j] = max_{h ∈ R_i, w ∈ C_j} x[n, c, h, w], with R_i = [b_i, e_i) and C_j the windows of
    ``_adaptive_windows`` along H and W (b_i = ⌊i·H/H_out⌋, e_i = ⌈(i + 1)·H/H_out⌉).

    Returns (y, indices): indices[n, c, i, j] = h·W + w, the arg-max in the input plane, found as PyTorch's kernel
    finds it: scanning each window row by row and taking a value when it is strictly greater than the best so far
    or is NaN, from −∞ and the window's first position. So ties go to the first maximum in row-major order, a NaN
    is the maximum (the last NaN wins), and a window of −∞ keeps its first position.

    The scan is taken one dim at a time, as the max over a rectangle is the max over its rows of each row's max:
    each row's winner over the columns of C_j first (``_scan_adaptive_windows`` along W), then the winner among
    the rows of R_i of those (along H). The two-step scan picks the same winner as the row-major one: the first
    row holding the window's maximum, at its first column holding it (or the last NaN in the last row holding one).

    Backward, as max pooling's (y depends on its arg-max only, with slope 1): a scatter-add of δ to the indices,
        ∂L/∂x[n, c, h, w] = Σ_{(i, j): indices[n, c, i, j] = h·W + w} δ[n, c, i, j]
    (``max_pool2d_input_grad``, compiled on 'cpp'), whose derivative is the gather of G at the indices: double
    backward works. As PyTorch, a backward with no output element per plane is an error.

    Forward mode (jvp), as max pooling's: ẏ[n, c, i, j] = ẋ[n, c, indices[n, c, i, j]], ẋ gathered at the arg-maxes.
    vmap: the vmapped dim folded into N.
    """

    @staticmethod
    def forward(input, output_size):
        memory_format = pool_memory_format(input)
        output = torch.empty(_plane_shape(input.shape, output_size), dtype=input.dtype, device=input.device,
                             memory_format=memory_format)
        indices = torch.empty_like(output, dtype=torch.int64)
        if output.numel() == 0:
            return output, indices
        x = _as_batch(input)
        height, width = x.shape[-2:]
        rows_bounds, columns_bounds = (
            _adaptive_bounds(size, out, input.device) for size, out in zip((height, width), output_size)
        )
        counter = torch.uint8 if max(rows_bounds[2], columns_bounds[2]) < 255 else torch.int64
        # each row's maximum over the columns of every window C_j: (N, C, H, W_out)
        row_best = _new_zeros((*x.shape[:-1], output_size[1]), x, memory_format).fill_(-torch.inf)
        columns = _scan_adaptive_windows(x, -1, columns_bounds, row_best,
                                         _new_zeros(row_best.shape, x, memory_format, counter))
        best = _as_batch(output).fill_(-torch.inf)
        rows = _scan_adaptive_windows(row_best, -2, rows_bounds, best,
                                      _new_zeros(best.shape, x, memory_format, counter))
        torch.gather(columns, -2, rows, out=_as_batch(indices))
        _as_batch(indices).add_(rows * width)
        return output, indices

    setup_context = staticmethod(MaxPool2dFunction.setup_context)  # the indices saved, none of their gradient

    @staticmethod
    def backward(ctx, grad_output, _grad_indices):
        if grad_output is None:
            return None, None
        for dim in range(1, grad_output.dim()):
            if grad_output.shape[dim] == 0:
                raise RuntimeError(
                    "adaptive_max_pool2d_backward(): Expected grad_output to have non-zero size for non-batch "
                    f"dimensions, but grad_output has sizes {list(grad_output.shape)} with dimension {dim} being "
                    "empty"
                )
        (indices,) = ctx.saved_tensors
        return max_pool2d_input_grad(grad_output, indices, ctx.input_shape, ctx.channels_last), None

    jvp = staticmethod(_arg_max_jvp)

    @staticmethod
    def vmap(info, in_dims, input, output_size):
        folded, unfold = fold_into_batch(input, in_dims[0], info.batch_size)
        output, indices = AdaptiveMaxPool2dFunction.apply(folded, output_size)
        return (unfold(output), unfold(indices)), (0, 0)


class GlobalAvgPool2dFunction(Function):
    """y[..., 0, 0] = (1 / (H·W)) · Σ_{h, w} x[..., h, w]: adaptive average pooling to 1×1, the mean over the plane.

    PyTorch computes this case as ``input.mean((-1, -2), keepdim=True)``, so it takes what the mean takes: any
    number of leading dims, complex input, an empty plane (0/0: NaN); channels_last input gives channels_last
    output. The sum runs in float32 for float16/bfloat16, as the mean's, and is rounded once.
    Backward: ∂L/∂x[..., h, w] = δ[..., 0, 0] / (H·W), δ broadcast over the plane and divided, as the mean's (the
    gradient is then contiguous, as PyTorch's). Linear in δ: double backward works.
    Forward mode (jvp): linear, so ẏ = the mean of ẋ over the plane, this Function applied to the tangent.
    vmap: the vmapped dim moved first, one more leading dim.
    """

    @staticmethod
    def forward(input):
        count = input.shape[-2] * input.shape[-1]
        mean = input.sum((-2, -1), keepdim=True, dtype=opmath_dtype(input.dtype)).div_(count).to(input.dtype)
        return _new_empty(mean.shape, input, pool_memory_format(input)).copy_(mean)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.input_shape = inputs[0].shape
        # H·W taken here, where torch.compile traces it with the forward: under dynamic shapes Dynamo could not
        # divide by a product of symbolic sizes formed in the backward.
        ctx.count = inputs[0].shape[-2] * inputs[0].shape[-1]

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output.expand(ctx.input_shape) / ctx.count

    @staticmethod
    def jvp(ctx, input_tangent):
        return GlobalAvgPool2dFunction.apply(input_tangent)

    @staticmethod
    def vmap(info, in_dims, input):
        return GlobalAvgPool2dFunction.apply(input.movedim(in_dims[0], 0)), 0


# ------------------------------------------------------------------------------------------- argument checks


def _pool_pair(value, op, name, wording):
    """An int or 1-2 ints -> a pair, as PyTorch's pooling accepts, with its message for the wrong count."""
    if isinstance(value, (list, tuple)) and len(value) not in (1, 2):
        raise RuntimeError(f"{op}: {name} {wording}")
    return _pair(value, name)


def normalize_pool2d_args(op, kernel_size, stride, padding, dilation=1):
    """kernel_size, stride (None or [] means kernel_size), padding, dilation -> four pairs."""
    kernel_size = _pool_pair(kernel_size, op, "kernel_size", "must either be a single int, or a tuple of two ints")
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = kernel_size
    stride = _pool_pair(stride, op, "stride", "must either be omitted, a single int, or a tuple of two ints")
    padding = _pool_pair(padding, op, "padding", "must either be a single int, or a tuple of two ints")
    dilation = _pool_pair(dilation, op, "dilation", "must be either a single int, or a tuple of two ints")
    return kernel_size, stride, padding, dilation


def _half(value):
    """C++ integer division by 2 (truncates toward zero), as PyTorch's checks compute it."""
    return int(value / 2)


def check_pool2d_args(op, input, kernel_size, stride, padding, dilation, ceil_mode):
    """Raise PyTorch's error, in PyTorch's order, for pooling arguments it rejects. Numbers are already pairs.

    The shape checks come first; the dtype is checked last, when PyTorch's kernel is dispatched (also for an
    empty batch): max pooling computes every dtype but bool and complex, average pooling floating ones and int64.
    """
    for k, s, p, d in zip(kernel_size, stride, padding, dilation):
        if s == 0:
            raise RuntimeError("stride should not be zero")
        if p < 0:
            raise RuntimeError(f"pad must be non-negative, but got pad: {p}")
        if p > _half((k - 1) * d + 1):
            raise RuntimeError(
                f"pad should be at most half of effective kernel size, but got pad={p}, kernel_size={k} and "
                f"dilation={d}"
            )
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    if kh <= 0 or kw <= 0:
        raise RuntimeError(f"kernel size should be greater than zero, but got kH: {kh} kW: {kw}")
    if sh <= 0 or sw <= 0:
        raise RuntimeError(f"stride should be greater than zero, but got dH: {sh} dW: {sw}")
    if dh <= 0 or dw <= 0:
        raise RuntimeError(f"dilation should be greater than zero, but got dilationH: {dh} dilationW: {dw}")
    plane_sizes = input.shape[1:] if input.dim() == 4 else input.shape
    if input.dim() not in (3, 4) or 0 in plane_sizes:
        raise RuntimeError(
            "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but got:"
            f"{list(input.shape)}"
        )
    if _half(kw) < pw or _half(kh) < ph:
        raise RuntimeError(
            "pad should be smaller than or equal to half of kernel size, but got "
            f"padW = {pw}, padH = {ph}, kW = {kw}, kH = {kh}"
        )
    channels, h, w = input.shape[-3:]
    h_out, w_out = (
        pooling_output_size(*args, ceil_mode) for args in zip((h, w), kernel_size, stride, padding, dilation)
    )
    if h_out < 1 or w_out < 1:
        raise RuntimeError(
            f"Given input size: ({channels}x{h}x{w}). Calculated output size: ({channels}x{h_out}x{w_out}). "
            "Output size is too small"
        )
    if op == "max_pool2d":
        supported = input.dtype != torch.bool and not input.dtype.is_complex
    else:
        supported = input.dtype.is_floating_point or input.dtype == torch.int64
    if not supported:
        raise not_implemented_for(op, input.dtype)


def check_adaptive_pool2d_args(input, output_size):
    """Raise PyTorch's error for adaptive_avg_pool2d arguments it rejects. An output of 1×1 is the mean over the
    plane (``GlobalAvgPool2dFunction``), with the mean's checks: a floating or complex dtype, at least 2 dims.
    Otherwise a 3-D or 4-D input with a non-empty plane, and a floating dtype when there is an output to compute
    (PyTorch dispatches its kernel only then)."""
    if len(output_size) != 2:
        raise RuntimeError("adaptive_avg_pool2d: output_size must be 2")
    if any(size < 0 for size in output_size):
        raise RuntimeError(
            "adaptive_avg_pool2d: elements of output_size must be greater than or equal to 0 but received "
            f"{{{output_size[0]}, {output_size[1]}}}"
        )
    if tuple(output_size) == (1, 1):
        if not (input.dtype.is_floating_point or input.dtype.is_complex):
            raise RuntimeError("mean(): could not infer output dtype. Input dtype must be either a floating point "
                               f"or complex dtype. Got: {scalar_type_name(input.dtype)}")
        if input.dim() < 2:
            raise IndexError(f"Dimension out of range (expected to be in range of [{-max(input.dim(), 1)}, "
                             f"{max(input.dim(), 1) - 1}], but got -2)")
        return
    if input.dim() not in (3, 4):
        raise RuntimeError(f"adaptive_avg_pool2d(): Expected 3D or 4D tensor, but got {list(input.shape)}")
    for dim in range(input.dim() - 2, input.dim()):
        if input.shape[dim] == 0:
            raise RuntimeError(
                "adaptive_avg_pool2d(): Expected input to have non-zero size for non-batch dimensions, but input "
                f"has sizes {list(input.shape)} with dimension {dim} being empty"
            )
    if input.shape[:-2].numel() * output_size[0] * output_size[1] > 0 and not input.dtype.is_floating_point:
        raise not_implemented_for("adaptive_avg_pool2d", input.dtype)
    if input.dtype.is_complex and input.requires_grad and torch.is_grad_enabled():  # an empty output, then
        raise RuntimeError(
            "_adaptive_avg_pool2d does not support automatic differentiation for outputs with complex dtype."
        )


def check_adaptive_max_pool2d_args(input, output_size):
    """Raise PyTorch's error for adaptive_max_pool2d arguments it rejects, in its order: a 3-D or 4-D input with
    non-empty dims after the first, two output sizes, none negative, a floating dtype (also for an empty batch or
    output)."""
    if input.dim() not in (3, 4):
        raise RuntimeError(f"adaptive_max_pool2d(): Expected 3D or 4D tensor, but got: {list(input.shape)}")
    for dim in range(1, input.dim()):
        if input.shape[dim] == 0:
            raise RuntimeError(
                "adaptive_max_pool2d(): Expected input to have non-zero size for non-batch dimensions, but input "
                f"has sizes {list(input.shape)} with dimension {dim} being empty"
            )
    if len(output_size) != 2:
        raise RuntimeError("adaptive_max_pool2d(): internal error: output_size.size() must be 2")
    output_shape = _plane_shape(input.shape, output_size)
    if min(output_size) < 0:
        raise RuntimeError(f"Trying to create tensor with negative dimension {min(output_size)}: {list(output_shape)}")
    if not input.dtype.is_floating_point:
        raise not_implemented_for("adaptive_max_pool2d", input.dtype)
