"""LayerNorm and BatchNorm by hand: normalize, scale and shift, with the compact closed-form backward.

Both normalize x over a set R of n values (LayerNorm: the trailing ``normalized_shape`` dims of each sample;
BatchNorm in training: every dim but the channel, i.e. (N, H, W) per channel) and then apply an affine map:

    μ = mean_R(x),  σ² = mean_R((x − μ)²)  (biased),  r = 1/√(σ² + ε),  x̂ = (x − μ)·r,  y = γ ⊙ x̂ + β.

Backward (docs/derivations.md, "Normalization"), with g = dL/dy and ĝ = g ⊙ γ:

    dL/dx = r · (ĝ − mean_R(ĝ) − x̂ ⊙ mean_R(ĝ ⊙ x̂))
    dL/dγ = Σ g ⊙ x̂,   dL/dβ = Σ g                          (summed over the dims γ is broadcast along)

instead of autograd through the forward's mean/variance graph. Each formula is evaluated in the arrangement of
PyTorch's CPU kernel (given in each Function's docstring): the same value, and the same terms multiplied and added,
so an inf or NaN in x, γ, β or g spreads to the same places as in torch. Each backward recomputes μ and r from the
saved input with differentiable tensor operations, so the backward is itself differentiable: double backward
(gradgradcheck) works, as in PyTorch. float16/bfloat16 inputs are computed in float32 and rounded once, with
parameters of their dtype or float32 ones (torch's mixed precision).

Forward mode (jvp), with ẋ, γ̇, β̇ the tangents (docs/derivations.md, "Normalization"): differentiating x̂ = (x − μ)·r,

    μ̇ = mean_R(ẋ),  (σ²)˙ = 2·mean_R((x − μ) ⊙ ẋ),  ṙ = −r³·mean_R((x − μ) ⊙ ẋ) = −r²·mean_R(x̂ ⊙ ẋ),
    ẋ̂ = r·(ẋ − mean_R(ẋ) − x̂ ⊙ mean_R(x̂ ⊙ ẋ)),     ẏ = γ ⊙ ẋ̂ + γ̇ ⊙ x̂ + β̇,

the backward's closed form transposed (the same three terms: the Jacobian of x ↦ x̂ is symmetric). Each jvp is made
of differentiable tensor operations on tensors saved for it (``ctx.save_for_forward``), so jacfwd, hessian and
batched forward gradients work through it.

vmap: every Function here has ``generate_vmap_rule``: forward, backward and jvp are torch operations that vmap
batches, with no Python control flow on values, so a vmapped call computes each slice's own statistics (BatchNorm:
each vmapped instance its own batch statistics, as a loop would). Under vmap the output's layout is not chosen
(``laid_out_like``): a slice of a batch has none of its own.
"""
import contextlib
import math

import torch
from torch._C._functorch import TransformType
from torch._functorch import pyfunctorch

from ._utils import (Function, is_vmapped, laid_out_like, not_implemented_for, opmath_dtype,
                     require_floating, scalar_type_name, suggests_channels_last)


def mean_and_variance(input, dims):
    """μ and the biased σ² of ``input`` over ``dims`` (kept), in the dtype torch's kernels compute in."""
    mean = input.mean(dims, keepdim=True, dtype=opmath_dtype(input.dtype))
    centered = input - mean
    return mean, (centered * centered).mean(dims, keepdim=True)


def _affine(normalized, weight, bias):
    """y = x̂ ⊙ γ + β, γ and β optional and already broadcastable."""
    output = normalized if weight is None else normalized * weight
    return output if bias is None else output + bias


def _normalized_tangent(tangent, normalized, rstd, dims):
    """ẋ̂ = r·(ẋ − mean_R(ẋ) − x̂ ⊙ mean_R(x̂ ⊙ ẋ)), the tangent of x̂ = (x − μ)·r, R = ``dims`` (None: no ẋ)."""
    if tangent is None:
        return None
    tangent = tangent.to(rstd.dtype)
    centered = tangent - tangent.mean(dims, keepdim=True)
    return rstd * (centered - normalized * (normalized * tangent).mean(dims, keepdim=True))


def _affine_tangent(normalized, normalized_tangent, weight, weight_tangent, bias_tangent):
    """ẏ = γ ⊙ ẋ̂ + γ̇ ⊙ x̂ + β̇ for y = γ ⊙ x̂ + β (a missing γ is 1; terms without a tangent left out), all
    broadcastable, in x̂'s dtype."""
    terms = []
    if normalized_tangent is not None:
        terms.append(normalized_tangent if weight is None else normalized_tangent * weight)
    if weight_tangent is not None:
        terms.append(normalized * weight_tangent.to(normalized.dtype))
    if bias_tangent is not None:
        terms.append(bias_tangent.to(normalized.dtype).expand_as(normalized))
    return sum(terms[1:], terms[0]) if terms else torch.zeros_like(normalized)


def _sum_over(tensor, dims, keepdim=False):
    """Σ over ``dims``; none to sum (an unbatched LayerNorm input, a GroupNorm input without a plane) leaves the
    tensor as it is, where ``tensor.sum(())`` would sum everything."""
    return tensor.sum(dims, keepdim=keepdim) if dims else tensor


class LayerNormFunction(Function):
    """y = ((x − μ)·r)·γ + β, μ and σ² (r = 1/√(σ² + ε)) over R, the last ``normalized_ndim`` dims of each sample
    (n values); γ, β of shape normalized_shape, optional. The output is contiguous, as torch's.

    Backward, with g = dL/dy, ĝ = g ⊙ γ, sums over R, arranged as torch's kernel (x itself rather than x − μ):
        ds = Σ ĝ ⊙ x,   db = Σ ĝ,   b = (db·μ − ds)·r³/n,   c = −b·μ − db·r/n
        dL/dx = r·ĝ + b·x + c                           (= r·(ĝ − mean(ĝ) − x̂ ⊙ mean(ĝ ⊙ x̂)), expanded)
        dL/dγ = Σ_{leading dims} g ⊙ (r·x − r·μ),   dL/dβ = Σ_{leading dims} g

    Forward mode (jvp), means over R:  ẋ̂ = r·(ẋ − mean(ẋ) − x̂ ⊙ mean(x̂ ⊙ ẋ)),   ẏ = γ ⊙ ẋ̂ + γ̇ ⊙ x̂ + β̇
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, normalized_ndim, weight, bias, eps):
        mean, variance = mean_and_variance(input, _last_dims(normalized_ndim))
        output = _affine((input - mean) * torch.rsqrt(variance + eps), weight, bias)
        return laid_out_like(output, input, torch.contiguous_format, input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.normalized_ndim, weight, bias, ctx.eps = inputs
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def jvp(ctx, input_tangent, _, weight_tangent, bias_tangent, _eps):
        input, weight = ctx.saved_tensors
        dims = _last_dims(ctx.normalized_ndim)
        mean, variance = mean_and_variance(input, dims)
        rstd = torch.rsqrt(variance + ctx.eps)
        normalized = (input - mean) * rstd
        output_tangent = _affine_tangent(normalized, _normalized_tangent(input_tangent, normalized, rstd, dims),
                                         weight, weight_tangent, bias_tangent)
        return output_tangent.to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        dims = _last_dims(ctx.normalized_ndim)
        count = math.prod(input.shape[input.dim() - ctx.normalized_ndim:])
        mean, variance = mean_and_variance(input, dims)
        rstd = torch.rsqrt(variance + ctx.eps)
        grad = grad_output.to(opmath_dtype(grad_output.dtype))
        needs_input, _, needs_weight, needs_bias, _ = ctx.needs_input_grad
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            grad_normalized = grad if weight is None else grad * weight
            ds = (grad_normalized * input).sum(dims, keepdim=True)
            db = grad_normalized.sum(dims, keepdim=True)
            b = (db * mean - ds) * rstd * rstd * rstd / count
            c = -b * mean - db * rstd / count
            grad_input = laid_out_like(rstd * grad_normalized + b * input + c, input, torch.contiguous_format,
                                       input.dtype)
        leading_dims = tuple(range(input.dim() - ctx.normalized_ndim))
        if needs_weight:
            grad_weight = _parameter_grad(_sum_over(grad * (rstd * input - rstd * mean), leading_dims), weight.dtype)
        if needs_bias:
            grad_bias = _parameter_grad(_sum_over(grad, leading_dims), ctx.bias_dtype)
        return grad_input, None, grad_weight, grad_bias, None


def _last_dims(count):
    return tuple(range(-count, 0))


# GroupNorm. Its statistics are taken over the dims of a view, (N, C, d1, ...) → (N, G, C/G, d1, ...), splitting the
# channel dim in two (always possible without a copy, whatever the layout): reductions over dims 2, 3, ... of that
# view are the groups'. torch's CPU kernel normalizes in the folded arrangement y = x·α + b (α = r·γ, b = β − μ·α)
# for channels_last input and for contiguous input with γ or β; contiguous input without them gets (x − μ)·r.


def _grouped(tensor, num_groups):
    """(N, C, d1, ...) → the view (N, G, C/G, d1, ...)."""
    batch, channels, *plane = tensor.shape
    return tensor.view(batch, num_groups, channels // num_groups, *plane)


def _per_channel_of_group(statistic, shape):
    """A statistic of each sample's groups (N, G, 1, ...) repeated for each channel of its group: (N, C, 1, ...),
    to broadcast along the input itself (an output computed on the grouped view would be a view of it)."""
    batch, channels, *plane = shape
    groups = statistic.shape[1]
    ones = [1] * len(plane)
    return statistic.expand(batch, groups, channels // groups, *ones).reshape(batch, channels, *ones)


def _group_view(parameter, num_groups, ndim):
    """(C,) → (1, G, C/G, 1, ...), to broadcast along a grouped view of ``ndim`` dims; None stays None."""
    return None if parameter is None else parameter.view(1, num_groups, -1, *[1] * (ndim - 3))


class GroupNormFunction(Function):
    """y = γ_c·(x − μ)·r + β_c, with μ and the biased σ² (r = 1/√(σ² + ε)) of each sample's group of C/G channels
    (n = C/G·d1·… values), γ, β of shape (C,), optional; N ≥ 0, C and the plane non-empty, C divisible by G.
    Arranged as torch's CPU kernel: y = x·α + b, α = r·γ_c, b = β_c − α·μ (channels_last input, or γ or β given),
    else y = (x − μ)·r. The output and the input's gradient take the input's suggested memory format, as torch's.

    Backward, with g = dL/dy, sums over each channel's plane first, then over the group's channels, as torch's
    kernel (docs/derivations.md, "GroupNorm"; the same closed form as LayerNorm's, with R a group):
        ds_c = Σ_plane g ⊙ x,   db_c = Σ_plane g,   ds = Σ_{c ∈ group} ds_c·γ_c,   db = Σ_{c ∈ group} db_c·γ_c
        b = (db·μ − ds)·r³/n,   c = −b·μ − db·r/n,   dL/dx = r·γ_c·g + b·x + c
        dL/dγ_c = Σ_N (ds_c − db_c·μ)·r,   dL/dβ_c = Σ_N db_c

    Forward mode (jvp), LayerNorm's over each group R:  ẋ̂ = r·(ẋ − mean(ẋ) − x̂ ⊙ mean(x̂ ⊙ ẋ)),
    ẏ = γ_c·ẋ̂ + γ̇_c·x̂ + β̇_c
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, num_groups, weight, bias, eps):
        memory_format = _suggested_format(input)
        if input.shape[0] == 0:  # nothing to normalize (torch computes nothing either, in any dtype)
            return torch.empty_like(input, memory_format=memory_format)
        grouped = _grouped(input, num_groups)
        mean, variance = mean_and_variance(grouped, tuple(range(2, grouped.dim())))
        rstd = torch.rsqrt(variance + eps)
        mean, rstd = (_per_channel_of_group(statistic, input.shape) for statistic in (mean, rstd))
        if weight is None and bias is None and memory_format == torch.contiguous_format:
            output = (input - mean) * rstd
        else:
            weight, bias = (_channel_view(parameter, input.dim()) for parameter in (weight, bias))
            scale = rstd if weight is None else rstd * weight
            shift = -(scale * mean) if bias is None else bias - scale * mean
            output = input * scale + shift
        # rounded once, for float16/bfloat16
        return laid_out_like(output, input, memory_format, input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.num_groups, weight, bias, ctx.eps = inputs
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)

    @staticmethod
    def jvp(ctx, input_tangent, _, weight_tangent, bias_tangent, _eps):
        input, weight = ctx.saved_tensors
        groups = ctx.num_groups
        grouped = _grouped(input, groups)
        dims = tuple(range(2, grouped.dim()))
        mean, variance = mean_and_variance(grouped, dims)
        rstd = torch.rsqrt(variance + ctx.eps)
        normalized = (grouped - mean) * rstd
        normalized_tangent = None if input_tangent is None else _normalized_tangent(
            _grouped(input_tangent, groups), normalized, rstd, dims)
        weight, weight_tangent, bias_tangent = (_group_view(parameter, groups, grouped.dim()) for parameter in
                                                (weight, weight_tangent, bias_tangent))
        output_tangent = _affine_tangent(normalized, normalized_tangent, weight, weight_tangent, bias_tangent)
        return output_tangent.reshape(input.shape).to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        groups = ctx.num_groups
        needs_input, _, needs_weight, needs_bias, _ = ctx.needs_input_grad
        grouped = _grouped(input, groups)
        plane, count = tuple(range(3, grouped.dim())), math.prod(input.shape[1:]) // groups
        mean, variance = mean_and_variance(grouped, (2, *plane))
        rstd = torch.rsqrt(variance + ctx.eps)
        grad = _grouped(grad_output, groups).to(rstd.dtype)
        ds = _sum_over(grad * grouped, plane, keepdim=True)
        db = _sum_over(grad, plane, keepdim=True)
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            gamma = _group_view(weight, groups, grouped.dim())
            ds_group = (ds if gamma is None else ds * gamma).sum(2, keepdim=True)
            db_group = (db if gamma is None else db * gamma).sum(2, keepdim=True)
            b = (db_group * mean - ds_group) * rstd * rstd * rstd * (1 / count)
            c = -b * mean - db_group * rstd * (1 / count)
            grad_input = (rstd if gamma is None else rstd * gamma) * grad + b * grouped + c
            grad_input = laid_out_like(grad_input.reshape(input.shape), input, _suggested_format(input), input.dtype)
        if needs_weight:
            grad_weight = ((ds - db * mean) * rstd).sum(0).reshape(-1).to(weight.dtype)
        if needs_bias:
            grad_bias = db.sum(0).reshape(-1).to(ctx.bias_dtype)
        return grad_input, None, grad_weight, grad_bias, None


def _parameter_grad(grad, dtype):
    """A parameter's gradient contiguous and in the parameter's dtype, as torch's (unbatched input: nothing summed,
    the gradient from above could have any layout)."""
    return laid_out_like(grad, grad, torch.contiguous_format, dtype)


# BatchNorm. torch's CPU kernel takes one of two arrangements: when the input is contiguous or channels_last and the
# parameters contiguous, the folded one, y = x·α + b per channel (α = r·γ, b = β − μ·α); otherwise the centered one,
# y = ((x − μ)·r)·γ + β. Equal values, but not the same inf/NaN: with γ = inf, x·α + b is NaN where x and μ have the
# same sign, ((x − μ)·r)·γ is ±inf. ``folded`` says which; the output's layout follows the same choice.


def _channel_dims(input):
    """Every dim of an (N, C, d1, ...) input but the channel."""
    return (0, *range(2, input.dim()))


def _channel_view(parameter, ndim):
    """(C,) → (1, C, 1, ...) to broadcast along every dim of an (N, C, ...) input but the channel."""
    return None if parameter is None else parameter.view(1, -1, *[1] * (ndim - 2))


def _is_dense(tensor):
    """Contiguous or channels_last (ATen's ``is_contiguous`` in Normalization.cpp). A vmapped slice is asked the
    first only: vmap cannot query another memory format, and a slice's layout chooses nothing there anyway."""
    channels_last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(tensor.dim())
    if is_vmapped(tensor):
        return tensor.is_contiguous()
    return tensor.is_contiguous() or (channels_last is not None and tensor.is_contiguous(memory_format=channels_last))


def _dense_format(tensor):
    """The format of a dense tensor, contiguous winning a tie (ATen's ``suggest_memory_format_contig``)."""
    if tensor.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last_3d if tensor.dim() == 5 else torch.channels_last


def _suggested_format(tensor):
    """``tensor.suggest_memory_format()``: c10's rule for 4-D tensors; channels_last_3d for a 5-D tensor laid out so."""
    if suggests_channels_last(tensor):
        return torch.channels_last
    if tensor.dim() == 5 and tensor.is_contiguous(memory_format=torch.channels_last_3d) and not tensor.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


def batch_norm_folds(input, *parameters):
    """Whether torch's CPU batch_norm takes the folded arrangement for this call (see above)."""
    return _is_dense(input) and all([parameter is None or parameter.is_contiguous() for parameter in parameters])


def _output_format(input, folded):
    return _dense_format(input) if folded else _suggested_format(input)


def _grad_input_format(input, grad_output):
    """The layout of torch's batch_norm input gradient: the input's, contiguous winning a tie when input and
    gradient are both dense and alike."""
    if _is_dense(input) and _is_dense(grad_output) and _suggested_format(input) == _suggested_format(grad_output):
        return _dense_format(input)
    return _suggested_format(input)


def _normalize_per_channel(input, mean, invstd, weight, bias, folded):
    """y = x·α + b with α = r·γ, b = β − μ·α (folded), or y = ((x − μ)·r)·γ + β; μ, r, γ, β of shape (1, C, 1, ...)."""
    if folded:
        alpha = invstd if weight is None else invstd * weight
        shift = -(mean * alpha) if bias is None else bias - mean * alpha
        return input * alpha + shift
    return _affine((input - mean) * invstd, weight, bias)


class BatchNormFunction(Function):
    """Training mode: y = γ_c · (x − μ_c) · r_c + β_c, μ_c and the biased σ²_c (r_c = 1/√(σ²_c + ε)) over
    R = (N, d1, ...) (n values) for each channel c of an (N, C, d1, ...) input, arranged as torch's kernel (see
    ``folded`` above). Also returns μ_c and σ²_c (not differentiable) for the running statistics.

    Backward, with g = dL/dy, arranged as torch's kernel:
        k_c = (Σ_R (x − μ_c)·g)·r_c²/n
        dL/dx = ((g − Σ_R g / n) − (x − μ_c)·k_c)·r_c·γ_c   (= γ_c r_c (g − mean_R(g) − x̂ ⊙ mean_R(g ⊙ x̂)))
        dL/dγ_c = (Σ_R (x − μ_c)·g)·r_c,   dL/dβ_c = Σ_R g

    Forward mode (jvp), means over R:  ẋ̂ = r_c·(ẋ − mean(ẋ) − x̂ ⊙ mean(x̂ ⊙ ẋ)),   ẏ = γ_c·ẋ̂ + γ̇_c·x̂ + β̇_c.
    The batch statistics are outputs marked non-differentiable (they only feed the running statistics, which have
    no tangent in torch either), and autograd refuses a tangent for those: None, though theirs would be
    μ̇_c = mean(ẋ) and (σ²_c)˙ = 2·mean((x − μ_c) ⊙ ẋ).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias, eps, folded):
        ndim = input.dim()
        mean, variance = mean_and_variance(input, _channel_dims(input))
        output = _normalize_per_channel(input, mean, torch.rsqrt(variance + eps), _channel_view(weight, ndim),
                                        _channel_view(bias, ndim), folded)
        output = laid_out_like(output, input, _output_format(input, folded), input.dtype)
        return output, mean.reshape(-1), variance.reshape(-1)

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, weight, bias, ctx.eps, _ = inputs
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)
        ctx.mark_non_differentiable(*outputs[1:])

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent, _eps, _folded):
        input, weight = ctx.saved_tensors
        ndim, dims = input.dim(), _channel_dims(input)
        mean, variance = mean_and_variance(input, dims)
        rstd = torch.rsqrt(variance + ctx.eps)
        normalized = (input - mean) * rstd
        output_tangent = _affine_tangent(normalized, _normalized_tangent(input_tangent, normalized, rstd, dims),
                                         _channel_view(weight, ndim), _channel_view(weight_tangent, ndim),
                                         _channel_view(bias_tangent, ndim))
        return output_tangent.to(input.dtype), None, None

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_variance):
        input, weight = ctx.saved_tensors
        dims, count = _channel_dims(input), input.numel() // input.shape[1]
        mean, variance = mean_and_variance(input, dims)
        invstd = torch.rsqrt(variance + ctx.eps)
        centered = input - mean
        grad_sum = grad_output.sum(dims, keepdim=True, dtype=invstd.dtype)
        dot = (centered * grad_output).sum(dims, keepdim=True)
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            k = dot * invstd * invstd / count
            grad_input = (grad_output - grad_sum / count - centered * k) * invstd
            grad_input = grad_input if weight is None else grad_input * _channel_view(weight, input.dim())
            grad_input = laid_out_like(grad_input, input, _grad_input_format(input, grad_output), input.dtype)
        if needs_weight:
            grad_weight = (dot * invstd).reshape(-1).to(weight.dtype)
        if needs_bias:
            grad_bias = grad_sum.reshape(-1).to(ctx.bias_dtype)
        return grad_input, grad_weight, grad_bias, None, None


class BatchNormEvalFunction(Function):
    """Evaluation mode: y = γ_c · (x − m_c) · r_c + β_c with the running statistics m, v as constants,
    r_c = 1/√(v_c + ε): an affine map per channel, arranged as torch's kernel (see ``folded`` above).

    Backward, with g = dL/dy, R = (N, d1, ...):
        dL/dx = g·r_c·γ_c,   dL/dγ_c = (Σ_R (x − m_c)·g)·r_c,   dL/dβ_c = Σ_R g

    Forward mode (jvp):  ẏ = ẋ·r_c·γ_c + γ̇_c·(x − m_c)·r_c + β̇_c  (m, v constants: a tangent of the running
    statistics is ignored, as torch's batch_norm_jvp ignores it)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, running_mean, running_var, weight, bias, eps, folded):
        ndim = input.dim()
        mean, invstd = _running_statistics(running_mean, running_var, eps, ndim)
        output = _normalize_per_channel(input, mean, invstd, _channel_view(weight, ndim), _channel_view(bias, ndim),
                                        folded)
        return laid_out_like(output, input, _output_format(input, folded), input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, running_mean, running_var, weight, bias, ctx.eps, _ = inputs
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(input, running_mean, running_var, weight)
        ctx.save_for_forward(input, running_mean, running_var, weight)

    @staticmethod
    def jvp(ctx, input_tangent, _mean_tangent, _var_tangent, weight_tangent, bias_tangent, _eps, _folded):
        input, running_mean, running_var, weight = ctx.saved_tensors
        ndim = input.dim()
        mean, invstd = _running_statistics(running_mean, running_var, ctx.eps, ndim)
        normalized = (input - mean) * invstd
        input_tangent = None if input_tangent is None else input_tangent.to(invstd.dtype) * invstd
        output_tangent = _affine_tangent(normalized, input_tangent, _channel_view(weight, ndim),
                                         _channel_view(weight_tangent, ndim), _channel_view(bias_tangent, ndim))
        return output_tangent.to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        input, running_mean, running_var, weight = ctx.saved_tensors
        ndim, dims = input.dim(), _channel_dims(input)
        mean, invstd = _running_statistics(running_mean, running_var, ctx.eps, ndim)
        needs_input, _, _, needs_weight, needs_bias = ctx.needs_input_grad[:5]
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            grad_input = grad_output * invstd
            grad_input = grad_input if weight is None else grad_input * _channel_view(weight, ndim)
            grad_input = laid_out_like(grad_input, input, _grad_input_format(input, grad_output), input.dtype)
        if needs_weight:
            grad_weight = (((input - mean) * grad_output).sum(dims) * invstd.reshape(-1)).to(weight.dtype)
        if needs_bias:
            grad_bias = grad_output.sum(dims, dtype=invstd.dtype).to(ctx.bias_dtype)
        return grad_input, None, None, grad_weight, grad_bias, None, None


def _running_statistics(running_mean, running_var, eps, ndim):
    """m and r = 1/√(v + ε) as (1, C, 1, ...), in the dtype torch computes them in."""
    dtype = opmath_dtype(running_mean.dtype)
    mean, variance = running_mean.to(dtype), running_var.to(dtype)
    return _channel_view(mean, ndim), _channel_view(torch.rsqrt(variance + eps), ndim)


def update_running_stats(running_mean, running_var, batch_mean, batch_var, count, momentum):
    """m ← momentum · μ_batch + (1 − momentum) · m,  v ← momentum · σ²_batch · n / (n − 1) + (1 − momentum) · v.

    The running variance takes the unbiased estimate (n values per channel), normalisation the biased one. Computed
    in the batch statistics' dtype (float32 at least) and rounded once into the statistics' own dtype. Under
    torch.func's grad, jvp or hessian the statistics arrive wrapped by those transforms, which refuse any in-place
    write into a tensor captured from outside them; no derivative flows through the update (the batch statistics
    are non-differentiable outputs), so it is made below those transforms on the tensors they wrap, as native
    batch_norm's kernel makes it (vmap's batches are kept: each instance updates its own statistics).
    """
    with torch.no_grad(), _below_derivative_transforms():
        statistics = (running_mean, running_var, batch_mean, batch_var)
        running_mean, running_var, batch_mean, batch_var = map(_without_derivative_wrappers, statistics)
        for running, batch in ((running_mean, batch_mean), (running_var, batch_var * (count / (count - 1)))):
            running.copy_(momentum * batch + (1 - momentum) * running.to(batch.dtype))


def _without_derivative_wrappers(tensor):
    """``tensor`` without the wrappers of torch.func's grad and jvp transforms around it (down to a vmap batch)."""
    if torch.compiler.is_compiling():  # Dynamo cannot trace functorch's queries (and has no such wrappers)
        return tensor
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(tensor) and not functorch.is_batchedtensor(tensor):
        tensor = functorch.get_unwrapped(tensor)
    return tensor


@contextlib.contextmanager
def _below_derivative_transforms():
    """Leaves the innermost torch.func grad and jvp transforms for the block (down to a vmap, or to none): they refuse
    any in-place write into a tensor captured from outside them, which the running statistics are."""
    with contextlib.ExitStack() as stack:
        while not torch.compiler.is_compiling():
            interpreter = torch._C._functorch.peek_interpreter_stack()
            if interpreter is None or interpreter.key() not in (TransformType.Grad, TransformType.Jvp):
                break
            stack.enter_context(pyfunctorch.temporarily_pop_interpreter_stack())
        yield


# F.normalize: every slice along ``dims`` divided by its p-norm, or by ε where that is smaller.


def vector_norm(input, p, dims):
    """n = ‖x‖_p over ``dims`` (kept; None: all), real for complex x, in float32 for float16/bfloat16: torch's
    vector-norm reduction, a building block like sum or amax ((Σ|x|^p)^(1/p); max |x| for p = ∞, min for −∞, the
    count of nonzeros for p = 0), with its errors (a non-floating input, the ∞-norm of nothing)."""
    dtype = torch.float32 if opmath_dtype(input.dtype) != input.dtype else None
    return torch.linalg.vector_norm(input, p, dims, keepdim=True, dtype=dtype)


def _conj(tensor):
    return tensor.conj() if tensor.is_complex() else tensor


def _norm_backward(grad_norm, x, p, norm):
    """dL/dn · ∂n/∂x for n = ‖x‖_p, arranged as torch's norm_backward (its masks included: 0 where n = 0 for
    p ≥ 2 and 1 < p < 2, where x = 0 for p < 1). ∂n/∂x_i = sgn(x_i)·|x_i|^(p−1)/n^(p−1), which is x_i/n for p = 2 and
    sgn(x_i) for p = 1; for p = ±∞ the derivative of the max (min) of |x|, shared among the slice's x with |x| = n
    (or NaN). None for p = 0: the count of nonzeros is piecewise constant."""
    if p == 0:
        return None
    if p == 1:
        return x.sgn() * grad_norm
    if p == 2:
        return grad_norm * torch.where(norm == 0, 0.0, x / norm)
    if math.isinf(p):
        magnitude = x.abs()
        winners = (magnitude == norm) | magnitude.isnan()
        return x.sgn() * ((grad_norm / winners.sum_to_size(norm.shape)) * winners)
    if p < 1:
        scaled = x.sgn() * torch.where(x == 0, 0.0, x.abs().pow(p - 1))
        return scaled * grad_norm * norm.pow(1 - p)
    scale = torch.where(norm == 0, 0.0, grad_norm / norm.pow(p - 1))
    scaled = x.sgn() * x.abs().pow(p - 1) if p < 2 else x * x.abs().pow(p - 2)
    return scaled * scale


class NormalizeFunction(Function):
    """y = x / d with d = max(n, ε), n = ‖x‖_p over ``dims`` (None: all) broadcast back: each slice scaled to unit
    p-norm, or divided by ε where its norm is smaller. Complex x too (n is real). float16/bfloat16 are computed in
    float32 and rounded once (torch rounds n, d and y each to the input's dtype).

    Backward (docs/derivations.md, "F.normalize"), with g = dL/dy and sums over ``dims``, arranged as torch's
    autograd evaluates the chain rule through the quotient, the clamp and the norm:
        dL/dd = Σ −g ⊙ conj((x/d)/d)   (its real part),        dL/dn = dL/dd where n ≥ ε, else 0
        dL/dx = g/d + dL/dn · ∂n/∂x      (``_norm_backward``: x/n for p = 2, sgn(x) for p = 1, none for p = 0)
    The backward recomputes n from the saved x with differentiable operations: double backward works.

    Forward mode (jvp), sums over ``dims``, with ∂n/∂x from ``_norm_backward`` (dL/dn = 1) and ṅ real:
        ṅ = Re Σ conj(∂n/∂x) ⊙ ẋ,   ḋ = ṅ where n ≥ ε, else 0,   ẏ = ẋ/d − x·ḋ/d²
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, p, dims, eps):
        denominator = vector_norm(input, p, dims).clamp_min(eps)
        return (input / denominator.expand_as(input)).to(input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.p, ctx.dims, ctx.eps = inputs
        ctx.save_for_backward(input)
        ctx.save_for_forward(input)

    @staticmethod
    def jvp(ctx, input_tangent, _p, _dims, _eps):
        (input,) = ctx.saved_tensors
        x, tangent = input.to(opmath_dtype(input.dtype)), input_tangent.to(opmath_dtype(input_tangent.dtype))
        norm = vector_norm(x, ctx.p, ctx.dims)
        denominator = norm.clamp_min(ctx.eps)
        output_tangent = tangent / denominator
        norm_derivative = _norm_backward(torch.ones_like(norm), x, ctx.p, norm)
        if norm_derivative is not None:
            norm_tangent = (_conj(norm_derivative) * tangent).sum_to_size(norm.shape)
            norm_tangent = norm_tangent.real if norm_tangent.is_complex() else norm_tangent
            denominator_tangent = torch.where(norm >= ctx.eps, norm_tangent, 0.0)
            output_tangent = output_tangent - x * (denominator_tangent / (denominator * denominator))
        return output_tangent.to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        x, grad = input.to(opmath_dtype(input.dtype)), grad_output.to(opmath_dtype(grad_output.dtype))
        norm = vector_norm(x, ctx.p, ctx.dims)
        denominator = norm.clamp_min(ctx.eps)
        grad_input = grad / denominator
        grad_denominator = -grad * _conj((x / denominator) / denominator)
        if grad_denominator.is_complex():
            grad_denominator = grad_denominator.real
        grad_norm = torch.where(norm >= ctx.eps, grad_denominator.sum_to_size(norm.shape), 0.0)
        through_norm = _norm_backward(grad_norm, x, ctx.p, norm)
        if through_norm is not None:
            grad_input = grad_input + through_norm
        return grad_input.to(grad_output.dtype), None, None, None


# Argument checks with PyTorch's errors and exception classes, in PyTorch's order.


def check_parameter_dtypes(input, *parameters):
    """ATen's CPU rule (mixed_data_type.h): the parameters given share the input's dtype, or, when the first of
    them does not, all are float32 and the input float16/bfloat16 (mixed precision)."""
    if not check_mixed_dtypes(input, *parameters):
        check_same_dtypes(input, *parameters)


def check_mixed_dtypes(input, *parameters):
    """The mixed-precision half of ``check_parameter_dtypes``, which ATen checks before its kernel: whether the
    first parameter given has another dtype than the input (then all must be float32, the input float16/bfloat16)."""
    dtypes = [parameter.dtype for parameter in parameters if parameter is not None]
    if not dtypes or dtypes[0] == input.dtype:
        return False
    if any(dtype != torch.float32 for dtype in dtypes):
        raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")
    if input.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")
    return True


def check_same_dtypes(input, *parameters):
    """The other half, which ATen's kernel checks as it reads the parameters: each has the input's dtype."""
    for parameter in parameters:
        if parameter is not None and parameter.dtype != input.dtype:
            raise RuntimeError(f"expected scalar type {scalar_type_name(input.dtype)} but found "
                               f"{scalar_type_name(parameter.dtype)}")


def check_layer_norm_args(input, normalized_shape, weight, bias):
    """normalized_shape a non-empty sequence of ints that ends the input's shape; γ, β of that shape; dtypes."""
    if isinstance(normalized_shape, torch.Size):
        normalized_shape = list(normalized_shape)
    if not isinstance(normalized_shape, (list, tuple)):
        raise TypeError(
            "layer_norm(): argument 'normalized_shape' (position 2) must be tuple of ints, "
            f"not {type(normalized_shape).__name__}"
        )
    for position, size in enumerate(normalized_shape):
        if isinstance(size, bool) or not isinstance(size, int) and not (torch.is_tensor(size) and size.numel() == 1):
            raise TypeError(
                "layer_norm(): argument 'normalized_shape' (position 2) must be tuple of ints, but found element "
                f"of type {type(size).__name__} at pos {position}"
            )
    normalized_shape = [int(size) for size in normalized_shape]
    check_parameter_dtypes(input, weight, bias)
    if not normalized_shape:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one element, "
            f"but got normalized_shape = {normalized_shape}"
        )
    for name, parameter in (("weight", weight), ("bias", bias)):
        if parameter is not None and list(parameter.shape) != normalized_shape:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
                f"{list(parameter.shape)} and normalized_shape = {normalized_shape}"
            )
    if list(input.shape[input.dim() - len(normalized_shape):]) != normalized_shape or input.dim() < len(
        normalized_shape
    ):
        raise RuntimeError(
            f"Given normalized_shape={normalized_shape}, expected input with shape "
            f"[*, {', '.join(map(str, normalized_shape))}], but got input of size{list(input.shape)}"
        )
    require_floating(input.dtype, "LayerNormKernelImpl")
    return normalized_shape


def check_batch_norm_args(input, training, eps):
    """What torch.nn.functional.batch_norm itself rejects, before torch.batch_norm parses its arguments."""
    if training and input.dim() == 0:
        raise IndexError("tuple index out of range")
    if training and math.prod(input.shape[:1] + input.shape[2:]) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def check_batch_norm_inputs(input, running_mean, running_var, weight, bias, training):
    """What ATen's batch_norm rejects in an input with elements, with its messages, in its order: sizes, running
    statistics that require grad or come alone, the batch mean of an integer input laid out neither contiguous nor
    channels_last, dtypes; then, under torch.func.vmap, what its batching rule rejects: a vmapped input in training
    with running statistics that are not vmapped."""
    num_features = input.shape[1] if input.dim() > 1 else 0  # ATen reads a 1-D input's channel count as 0
    for name, tensor in (("running_mean", running_mean), ("running_var", running_var)):
        if tensor is None and not training:
            raise RuntimeError(f"{name} must be defined in evaluation mode")
        if tensor is not None and tensor.numel() != num_features:
            raise RuntimeError(f"{name} should contain {num_features} elements not {tensor.numel()}")
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tensor.numel() != num_features:
            raise RuntimeError(f"{name} should contain {num_features} elements not {tensor.numel()}")
    for name, tensor in (("running_mean", running_mean), ("running_var", running_var)):
        if tensor is not None and tensor.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                f"The function 'native_batch_norm' is not differentiable with respect to argument '{name}'. "
                "This input cannot have requires_grad True."
            )
    if training and (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    out_of_range = IndexError("Dimension out of range (expected to be in range of [-1, 0], but got 1)")
    if training and input.dim() < 2:
        raise out_of_range
    parameters = (weight, bias, running_mean, running_var)
    mixed = any(parameter is not None for parameter in parameters) and next(
        parameter.dtype for parameter in parameters if parameter is not None) != input.dtype
    if training and not _is_dense(input) and not mixed and not (input.is_floating_point() or input.is_complex()):
        raise RuntimeError("mean(): could not infer output dtype. Input dtype must be either a floating point or "
                           f"complex dtype. Got: {scalar_type_name(input.dtype)}")
    if not input.is_floating_point():
        raise not_implemented_for("batch_norm", input.dtype)
    check_parameter_dtypes(input, *parameters)
    if input.dim() < 2:
        raise out_of_range
    if training and is_vmapped(input) and any(statistic is not None and not is_vmapped(statistic)
                                               for statistic in (running_mean, running_var)):
        # torch.func's batching rule of batch_norm: one running statistic cannot take a batch of updates in place
        raise RuntimeError(
            "Batch norm got a batched tensor as input while the running_mean or running_var, which will be updated "
            "in place, were not batched.\nIf you are using a module and do not need eval mode, please set "
            "`track_running_stats` to be False.If you are using a prebuilt module and do not need eval mode, please "
            "see the functorch website for resources on how to patch your module to work with vmap")


def check_group_norm_args(input, num_groups, weight, bias):
    """What torch.nn.functional.group_norm and ATen's group_norm reject, in their order: fewer than 2 dims, a
    single value per group (ValueError; num_groups = 0 divides by zero there first), then no channels, an empty
    plane, num_groups < 1 or not dividing C, γ or β not of shape (C,), mixed dtypes; for a non-empty batch the
    kernel's dtype (floating point) and parameters of the input's dtype."""
    if input.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    batch, channels, *plane = input.shape
    if batch * channels // num_groups * math.prod(plane) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{[batch * channels // num_groups, num_groups, *plane]}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"group_norm(): argument 'num_groups' (position 2) must be int, not "
                        f"{type(num_groups).__name__}")
    if channels <= 0:
        raise RuntimeError(f"Expected number of channels to be greater than 0, got {channels}")
    if math.prod(plane) <= 0:
        raise RuntimeError(f"Expected HxW to be greater than 0, got {math.prod(plane)}")
    if num_groups <= 0:
        raise RuntimeError(f"Expected num groups to be greater than 0, got {num_groups}")
    if channels % num_groups:
        raise RuntimeError("Expected number of channels in input to be divisible by num_groups, but got input of "
                           f"shape {list(input.shape)} and num_groups={num_groups}")
    for name, parameter in (("weight", weight), ("bias", bias)):
        if parameter is not None and (parameter.dim() != 1 or parameter.numel() != channels):
            raise RuntimeError(f"Expected {name} to be a vector of size equal to the number of channels in input, "
                               f"but got {name} of shape {list(parameter.shape)} and input of shape "
                               f"{list(input.shape)}")
    mixed = check_mixed_dtypes(input, weight, bias)
    if batch:
        require_floating(input.dtype, "GroupNormKernelImpl")
        if not mixed:
            check_same_dtypes(input, weight, bias)
    elif input.is_complex() and torch.is_grad_enabled() and any(
            tensor is not None and tensor.requires_grad for tensor in (input, weight, bias)):
        raise RuntimeError("native_group_norm does not support automatic differentiation for outputs with complex "
                           "dtype.")
