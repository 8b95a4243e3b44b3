"""Pooling's autograd Functions: max, average and adaptive average pooling, forward and backward by hand.

Windows come from the same ``as_strided`` view as the convolution (``conv_reference.im2col``), on an input padded
by hand: with -∞ for max pooling (a pad never wins), with zeros for average pooling (a pad adds nothing). Notation
(docs/derivations.md, "Pooling"): x the input (N, C, H, W), y the output (N, C, H_out, W_out), δ = ∂L/∂y; k, s, p, d
are kernel size, stride, padding and dilation. The Functions take checked arguments (pairs of ints);
``check_pool2d_args`` raises PyTorch's errors. MaxPool2dFunction takes 3-D or 4-D input, as PyTorch's kernel, and
lays out its outputs and input gradient as PyTorch does: channels_last exactly when the input suggests it (c10's
rule, so 1-channel tensors follow the layout they were made in), with the strides of ``torch.empty(...,
memory_format=)``; the other Functions take batched 4-D input (``manual_conv.functional`` handles unbatched input).

Every backward is linear in δ and written with differentiable tensor ops (scatter-add, strided slices, matmul), so
double backward works: the second derivative routes the incoming gradient the way the forward routed x.
"""
import torch
import torch.nn.functional as F

from ..backend import compiled_cpu_layers, compiled_layers
from ._utils import Function, _pair, not_implemented_for, opmath_dtype, suggests_channels_last
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


def _new_zeros(shape, like, memory_format, dtype=None):
    """Zeros of ``shape`` on ``like``'s device, laid out as ``torch.empty(shape, memory_format=...)`` lays them out."""
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format).zero_()


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


class MaxPool2dFunction(Function):
    """y[n, c, y, x] = max_{i, j} x_pad[n, c, y·s + i·d, x·s + j·d], with x_pad padded by −∞ (the dtype's lowest
    value for integers).

    Returns (y, indices): indices[n, c, y, x] = h·W + w, the position in the input plane of the arg-max. It is
    found as PyTorch's kernel finds it, scanning the taps row by row and taking a tap when it is strictly greater
    than the best so far or is NaN: so ties go to the first maximum, a NaN is the maximum (the last NaN wins and
    propagates to y), and an all −∞ window keeps its first tap inside the input (padding never wins).

    Backward: y depends on one input only, with slope 1, so the gradient is routed to the arg-max:
        ∂L/∂x[n, c, h, w] = Σ_{(y, x): indices[n, c, y, x] = h·W + w} δ[n, c, y, x]
    (overlapping windows that share an arg-max add up). That is a scatter-add, linear in δ; its own derivative
    is the gather δ[n, c, y, x] ← G[n, c, indices[n, c, y, x]], so double backward works (ties and NaN fixed by the
    saved indices; the derivative with respect to x is 0 almost everywhere).

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
        ctx.input_shape = input.shape
        ctx.channels_last = suggests_channels_last(input)

    @staticmethod
    def backward(ctx, grad_output, _grad_indices):
        (indices,) = ctx.saved_tensors
        grad_input = None if grad_output is None else max_pool2d_input_grad(grad_output, indices, ctx.input_shape,
                                                                           ctx.channels_last)
        return grad_input, None, None, None, None, None


def max_pool2d_input_grad(grad_output, indices, input_shape, channels_last):
    """∂L/∂x[n, c, p] = Σ_{windows w: indices[n, c, w] = p} δ[n, c, w]: a scatter-add into the input planes, for
    MaxPool2dFunction and the compiled max_pool2d's registered autograd (ops/library.py); channels_last (the
    input's layout) or contiguous. On 'cpp' a CPU tensor takes the compiled
    ``torch.ops.manual_conv.max_pool2d_backward``, the same sums in the same order as torch's kernel, one plane at a
    time while it is in cache (float16/bfloat16 sums of overlapping windows round after every add there, as in
    torch's kernel; here they are summed in float32 and rounded once). Differentiable too: ops/library.py registers
    the compiled op's derivative, a gather."""
    if compiled_cpu_layers(grad_output):
        return torch.ops.manual_conv.max_pool2d_backward(grad_output, indices, input_shape, channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    grad_input = _new_zeros(input_shape, grad_output, memory_format, opmath_dtype(grad_output.dtype))
    # flattening (H, W) is a view of either layout, so the scatter writes into grad_input
    grad_input.flatten(-2).scatter_add_(-1, indices.flatten(-2), grad_output.flatten(-2).to(grad_input.dtype))
    return grad_input.to(grad_output.dtype)


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


class AvgPool2dFunction(Function):
    """y[n, c, y, x] = (1 / D[y, x]) · Σ_{i, j} x_pad[n, c, y·s + i, x·s + j], with x_pad padded by zeros.

    D is divisor_override when given, else the window's size counted as ``_window_counts`` does (D = D_H[y]·D_W[x]).
    Integer inputs divide with truncation, as PyTorch does.

    Backward: every input in window (y, x) gets the same share of its gradient,
        ∂L/∂x[n, c, h, w] = Σ_{windows (y, x) containing (h, w)} δ[n, c, y, x] / D[y, x]
    computed as one strided slice-add of δ/D per kernel tap (i, j) into the padded input plane, then cropped.
    Linear in δ and built from differentiable ops: double backward works.
    """

    @staticmethod
    def forward(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        n, c, h, w = input.shape
        output_size = tuple(
            pooling_output_size(*args, 1, ceil_mode) for args in zip((h, w), kernel_size, stride, padding)
        )
        cols = _pool_windows(input, 0, kernel_size, stride, padding, (1, 1), output_size)
        sums = sum(cols[:, :, i, j] for i in range(kernel_size[0]) for j in range(kernel_size[1]))
        divisor = _avg_pool_divisor((h, w), output_size, kernel_size, stride, padding, count_include_pad,
                                    divisor_override, input.device)
        if input.dtype.is_floating_point:
            return sums / divisor
        return torch.div(sums, divisor, rounding_mode="trunc").to(input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, *pool_args = inputs
        ctx.input_shape = input.shape
        ctx.pool_args = pool_args

    @staticmethod
    def backward(ctx, grad_output):
        kernel_size, stride, padding, _, count_include_pad, divisor_override = ctx.pool_args
        (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
        n, c, h, w = ctx.input_shape
        h_out, w_out = grad_output.shape[2:]
        divisor = _avg_pool_divisor((h, w), (h_out, w_out), kernel_size, stride, padding, count_include_pad,
                                    divisor_override, grad_output.device)
        share = grad_output / divisor
        # the padded plane as tall/wide as the windows reach (ceil_mode's overhang included)
        padded = grad_output.new_zeros(n, c, max(h + 2 * ph, (h_out - 1) * sh + kh),
                                       max(w + 2 * pw, (w_out - 1) * sw + kw))
        for i in range(kh):
            for j in range(kw):
                padded[:, :, i:i + (h_out - 1) * sh + 1:sh, j:j + (w_out - 1) * sw + 1:sw] += share
        grad_input = padded[:, :, ph:ph + h, pw:pw + w]
        return grad_input, None, None, None, None, None, None


def adaptive_average_matrix(size, output_size, dtype, device):
    """A[i, h] = 1 / (e_i − b_i) for b_i ≤ h < e_i, else 0, with b_i = ⌊i·H / H_out⌋, e_i = ⌈(i + 1)·H / H_out⌉.

    Row i averages window i; the windows cover the input and neighbours overlap when H is not a multiple of H_out.
    """
    i = torch.arange(output_size, device=device)
    start = i * size // output_size
    end = ((i + 1) * size + output_size - 1) // output_size
    h = torch.arange(size, device=device)
    inside = (h >= start[:, None]) & (h < end[:, None])
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


class AdaptiveAvgPool2dFunction(Function):
    """y[n, c] = A_H · x[n, c] · A_Wᵀ, with A the averaging matrices of ``adaptive_average_matrix``.

    The mean over a rectangle is the mean over its rows of the means over its columns, so the 2-D windows
    (rows b_i..e_i, columns b_j..e_j) separate into one matrix per dim.
    Backward: y is linear in x, so ∂L/∂x[n, c] = A_Hᵀ · δ[n, c] · A_W (each input gets 1/size of every window
    holding it). Made of matmuls: double backward works.
    """

    @staticmethod
    def forward(input, output_size):
        rows, cols = (
            adaptive_average_matrix(size, out, input.dtype, input.device)
            for size, out in zip(input.shape[2:], output_size)
        )
        return rows @ input @ cols.T

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, output_size = inputs
        ctx.input_shape = input.shape
        ctx.output_size = output_size

    @staticmethod
    def backward(ctx, grad_output):
        rows, cols = (
            adaptive_average_matrix(size, out, grad_output.dtype, grad_output.device)
            for size, out in zip(ctx.input_shape[2:], ctx.output_size)
        )
        return rows.T @ grad_output @ cols, None


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
    """Raise PyTorch's error, in PyTorch's order, for pooling arguments it rejects. Numbers are already pairs."""
    # PyTorch's kernels: max pooling for every dtype but bool, average pooling for floating ones and int64
    supported = input.dtype != torch.bool if op == "max_pool2d" else (
        input.dtype.is_floating_point or input.dtype == torch.int64
    )
    if not supported:
        raise not_implemented_for(op, input.dtype)
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


def check_adaptive_pool2d_args(input, output_size):
    """Raise PyTorch's error for adaptive_avg_pool2d arguments it rejects."""
    if len(output_size) != 2:
        raise RuntimeError("adaptive_avg_pool2d: output_size must be 2")
    if any(size < 0 for size in output_size):
        raise RuntimeError(
            "adaptive_avg_pool2d: elements of output_size must be greater than or equal to 0 but received "
            f"{{{output_size[0]}, {output_size[1]}}}"
        )
    if input.dim() not in (3, 4):
        raise RuntimeError(f"adaptive_avg_pool2d(): Expected 3D or 4D tensor, but got {list(input.shape)}")
    for dim in range(input.dim() - 2, input.dim()):
        if input.shape[dim] == 0:
            raise RuntimeError(
                "adaptive_avg_pool2d(): Expected input to have non-zero size for non-batch dimensions, but input "
                f"has sizes {list(input.shape)} with dimension {dim} being empty"
            )
    if not input.dtype.is_floating_point:
        raise not_implemented_for("adaptive_avg_pool2d", input.dtype)
