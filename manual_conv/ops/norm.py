"""LayerNorm and BatchNorm by hand: normalize, scale and shift, with the compact closed-form backward.

Both normalize x over a set of dims R (LayerNorm: the trailing ``normalized_shape`` dims of each sample;
BatchNorm in training: every dim but the channel, i.e. (N, H, W) per channel) and then apply an affine map:

    μ = mean_R(x),  σ² = mean_R((x − μ)²)  (biased),  x̂ = (x − μ) / √(σ² + ε),  y = γ ⊙ x̂ + β.

Backward (docs/derivations.md, "Normalization"), with g = dL/dy and ĝ = g ⊙ γ:

    dL/dx = (1/σ) · (ĝ − mean_R(ĝ) − x̂ ⊙ mean_R(ĝ ⊙ x̂))      σ = √(σ² + ε)
    dL/dγ = Σ g ⊙ x̂,   dL/dβ = Σ g                          (summed over the dims γ is broadcast along)

instead of autograd through the forward's mean/variance graph. Each backward recomputes x̂ and 1/σ from the
saved input with differentiable tensor operations, so the backward is itself differentiable: double backward
(gradgradcheck) works, as in PyTorch. BatchNorm in evaluation mode normalizes with the running statistics,
constants: an affine map per channel with its own one-line backward.
"""
import math

import torch

from ._utils import Function, require_floating


def normalize(input, dims, eps):
    """x̂ = (x − μ) / √(σ² + ε) over ``dims``; returns x̂, μ, the biased σ² and 1/√(σ² + ε) (kept dims)."""
    mean = input.mean(dims, keepdim=True)
    centered = input - mean
    var = (centered * centered).mean(dims, keepdim=True)
    inv_std = (var + eps).rsqrt()
    return centered * inv_std, mean, var, inv_std


def normalize_backward(grad_normalized, normalized, inv_std, dims):
    """dL/dx = (1/σ) · (ĝ − mean(ĝ) − x̂ ⊙ mean(ĝ ⊙ x̂)) over ``dims``, ĝ = dL/dx̂.

    x̂ depends on x directly and through μ and σ; the two mean terms are those two paths: shifting x moves μ
    (removing mean(ĝ)), scaling it moves σ (removing the component along x̂).
    """
    mean_grad = grad_normalized.mean(dims, keepdim=True)
    mean_grad_dot = (grad_normalized * normalized).mean(dims, keepdim=True)
    return inv_std * (grad_normalized - mean_grad - normalized * mean_grad_dot)


def _affine(normalized, weight, bias):
    """y = γ ⊙ x̂ + β, γ and β optional and already broadcastable."""
    output = normalized if weight is None else normalized * weight
    return output if bias is None else output + bias


def _sum_over(tensor, dims):
    """Σ over ``dims``; none to sum (an unbatched LayerNorm input) leaves the tensor as it is, where
    ``tensor.sum(())`` would sum everything."""
    return tensor.sum(dims) if dims else tensor


def _channel_view(parameter, ndim):
    """(C,) → (1, C, 1, ...) to broadcast along every dim of an (N, C, ...) input but the channel."""
    return None if parameter is None else parameter.view(1, -1, *[1] * (ndim - 2))


class LayerNormFunction(Function):
    """y = γ ⊙ (x − μ) / √(σ² + ε) + β, μ and σ² over the last ``len(normalized_shape)`` dims of each sample;
    γ, β of shape normalized_shape (optional).

    Backward, with g = dL/dy, ĝ = g ⊙ γ, R the normalized dims:
        dL/dx = (1/σ) · (ĝ − mean_R(ĝ) − x̂ ⊙ mean_R(ĝ ⊙ x̂))
        dL/dγ = Σ_{leading dims} g ⊙ x̂,   dL/dβ = Σ_{leading dims} g
    """

    @staticmethod
    def forward(input, normalized_ndim, weight, bias, eps):
        dims = tuple(range(-normalized_ndim, 0))
        return _affine(normalize(input, dims, eps)[0], weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.normalized_ndim, weight, _, ctx.eps = inputs
        ctx.save_for_backward(input, weight)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        dims = tuple(range(-ctx.normalized_ndim, 0))
        leading_dims = tuple(range(input.dim() - ctx.normalized_ndim))
        normalized, _, _, inv_std = normalize(input, dims, ctx.eps)
        needs_input, _, needs_weight, needs_bias, _ = ctx.needs_input_grad
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            grad_normalized = grad_output if weight is None else grad_output * weight
            grad_input = normalize_backward(grad_normalized, normalized, inv_std, dims)
        if needs_weight:
            grad_weight = _sum_over(grad_output * normalized, leading_dims)
        if needs_bias:
            grad_bias = _sum_over(grad_output, leading_dims)
        return grad_input, None, grad_weight, grad_bias, None


class BatchNormFunction(Function):
    """Training mode: y = γ_c · (x − μ_c) / √(σ²_c + ε) + β_c, μ_c and the biased σ²_c over (N, d1, ...) for each
    channel c of an (N, C, d1, ...) input. Also returns μ_c and σ²_c (not differentiable) for the running stats.

    Backward, with g = dL/dy, ĝ = γ_c · g, R = (N, d1, ...):
        dL/dx = (1/σ_c) · (ĝ − mean_R(ĝ) − x̂ ⊙ mean_R(ĝ ⊙ x̂))
        dL/dγ_c = Σ_R g ⊙ x̂,   dL/dβ_c = Σ_R g
    """

    @staticmethod
    def forward(input, weight, bias, eps):
        dims = (0, *range(2, input.dim()))
        normalized, mean, var, _ = normalize(input, dims, eps)
        output = _affine(normalized, _channel_view(weight, input.dim()), _channel_view(bias, input.dim()))
        return output, mean.flatten(), var.flatten()

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, weight, _, ctx.eps = inputs
        ctx.save_for_backward(input, weight)
        ctx.mark_non_differentiable(*outputs[1:])

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_var):
        input, weight = ctx.saved_tensors
        dims = (0, *range(2, input.dim()))
        normalized, _, _, inv_std = normalize(input, dims, ctx.eps)
        needs_input, needs_weight, needs_bias, _ = ctx.needs_input_grad
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            grad_normalized = grad_output if weight is None else grad_output * _channel_view(weight, input.dim())
            grad_input = normalize_backward(grad_normalized, normalized, inv_std, dims)
        if needs_weight:
            grad_weight = (grad_output * normalized).sum(dims)
        if needs_bias:
            grad_bias = grad_output.sum(dims)
        return grad_input, grad_weight, grad_bias, None


class BatchNormEvalFunction(Function):
    """Evaluation mode: y = a_c · x + b_c, an affine map per channel with the running statistics as constants:
    a_c = γ_c / √(v_c + ε), b_c = β_c − a_c · m_c (m, v the running mean and variance).

    Backward, with g = dL/dy, R = (N, d1, ...):
        dL/dx = a_c · g,   dL/dγ_c = Σ_R g · (x − m_c) / √(v_c + ε),   dL/dβ_c = Σ_R g
    """

    @staticmethod
    def forward(input, running_mean, running_var, weight, bias, eps):
        ndim = input.dim()
        normalized = (input - _channel_view(running_mean, ndim)) * _channel_view((running_var + eps).rsqrt(), ndim)
        return _affine(normalized, _channel_view(weight, ndim), _channel_view(bias, ndim))

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, running_mean, running_var, weight, _, ctx.eps = inputs
        ctx.save_for_backward(input, running_mean, running_var, weight)

    @staticmethod
    def backward(ctx, grad_output):
        input, running_mean, running_var, weight = ctx.saved_tensors
        ndim, dims = input.dim(), (0, *range(2, input.dim()))
        inv_std = _channel_view((running_var + ctx.eps).rsqrt(), ndim)
        needs_input, _, _, needs_weight, needs_bias, _ = ctx.needs_input_grad
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            scale = inv_std if weight is None else inv_std * _channel_view(weight, ndim)
            grad_input = grad_output * scale
        if needs_weight:
            grad_weight = (grad_output * (input - _channel_view(running_mean, ndim)) * inv_std).sum(dims)
        if needs_bias:
            grad_bias = grad_output.sum(dims)
        return grad_input, None, None, grad_weight, grad_bias, None


def update_running_stats(running_mean, running_var, batch_mean, batch_var, count, momentum):
    """m ← (1 − momentum) · m + momentum · μ_batch,  v ← (1 − momentum) · v + momentum · σ²_batch · n / (n − 1).

    The running variance takes the unbiased estimate (n values per channel), normalisation the biased one.
    """
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(batch_mean, alpha=momentum)
        running_var.mul_(1 - momentum).add_(batch_var * (count / (count - 1)), alpha=momentum)


# Argument checks with PyTorch's errors and exception classes, in PyTorch's order.


def check_parameter_dtypes(input, *parameters):
    """Parameters share the input's dtype; a half/bfloat16 input may have float32 parameters (mixed precision)."""
    dtypes = {parameter.dtype for parameter in parameters if parameter is not None}
    if not dtypes or dtypes == {input.dtype}:
        return
    if input.dtype in (torch.float16, torch.bfloat16) and dtypes == {torch.float32}:
        return
    raise RuntimeError(
        "mixed dtype (CPU): all inputs must share same datatype."
        if input.dtype == torch.float64
        else "mixed dtype (CPU): expect parameter to have scalar type of Float"
    )


def check_layer_norm_args(input, normalized_shape, weight, bias):
    """normalized_shape a non-empty sequence of ints that ends the input's shape; γ, β of that shape."""
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
    check_parameter_dtypes(input, weight, bias)
    return normalized_shape


def check_batch_norm_args(input, running_mean, running_var, weight, bias, training, eps):
    """What torch.nn.functional.batch_norm and its kernel reject, with their messages."""
    if training and math.prod(input.shape[:1] + input.shape[2:]) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    if training and (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if input.dim() < 2 and running_mean is None and weight is None and bias is None:
        raise IndexError("Dimension out of range (expected to be in range of [-1, 0], but got 1)")
    num_features = input.shape[1] if input.dim() > 1 else 0
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
    require_floating(input.dtype, "batch_norm")
    check_parameter_dtypes(input, running_mean, running_var, weight, bias)
