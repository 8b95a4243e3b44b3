"""Activations' autograd Functions: ReLU, sigmoid, tanh, GELU, softmax and log-softmax, forward and backward by hand.

Notation (docs/derivations.md, "Activations"): x the input, y the output, δ = ∂L/∂y. The element-wise ones have a
diagonal Jacobian, so ∂L/∂x = δ ⊙ f'(x), with f' written through y where that is cheaper (σ' = y(1 − y),
tanh' = 1 − y²). Softmax couples a whole slice along ``dim``; its backward is the Jacobian-vector product in closed
form, never the n × n Jacobian.

Every backward is made of differentiable tensor ops on saved tensors; where it uses the saved output y, y is an
output of the same Function, so differentiating the backward goes through this Function again: double backward
works for all of them.
"""
import math

import torch

from ..backend import compiled_layers
from ._utils import Function


class ReLUFunction(Function):
    """y = max(x, 0) (NaN stays NaN). With ``inplace`` x itself is overwritten and returned, as torch.relu_ does.

    Backward: ∂y/∂x = 1 where x > 0, 0 where x < 0, and PyTorch's choice 0 at x = 0:
        ∂L/∂x = 0 where y ≤ 0, else δ   (a NaN passes δ through, as in PyTorch's threshold_backward).
    A selection rather than δ ⊙ mask, so an infinite δ at a dropped position gives 0, not NaN.

    Backward kernel: on 'cpp' the compiled ``torch.ops.manual_conv.relu_backward`` (floating point), else torch.where.
    """

    @staticmethod
    def forward(input, inplace):
        return input.clamp_min_(0) if inplace else input.clamp_min(0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, inplace = inputs
        if inplace:
            ctx.mark_dirty(input)
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        if compiled_layers(output):
            return torch.ops.manual_conv.relu_backward(grad_output, output), None
        return torch.where(output <= 0, 0.0, grad_output), None


class SigmoidFunction(Function):
    """y = σ(x) = 1 / (1 + e^{−x}) (for x → −∞, e^{−x} → ∞ and y → 0 without overflow trouble).

    Backward: σ'(x) = e^{−x} / (1 + e^{−x})² = σ(x)(1 − σ(x)), so ∂L/∂x = δ ⊙ y ⊙ (1 − y).
    """

    @staticmethod
    def forward(input):
        return torch.reciprocal(1 + torch.exp(-input))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return grad_output * output * (1 - output)


class TanhFunction(Function):
    """y = tanh(x) = (1 − e^{−2|x|}) / (1 + e^{−2|x|}) · sign(x), computed as −t / (2 + t) with t = expm1(−2|x|).

    Only e^{−2|x|} ≤ 1 is ever formed (no overflow for |x| large), and expm1 keeps the precision near 0 that
    1 − e^{−2|x|} would lose.
    Backward: tanh'(x) = 1 − tanh²(x), so ∂L/∂x = δ ⊙ (1 − y²).
    """

    @staticmethod
    def forward(input):
        t = torch.expm1(-2 * input.abs())
        return torch.copysign(-t / (2 + t), input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return grad_output * (1 - output * output)


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_CUBIC = 0.044715


class GELUFunction(Function):
    """y = x · Φ(x), Φ the standard normal CDF.

    approximate='none': Φ(x) = ½(1 + erf(x/√2)).
        Backward: y' = Φ(x) + x·φ(x), φ(x) = e^{−x²/2}/√(2π).
    approximate='tanh': y = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³), tanh by ``TanhFunction``.
        Backward: y' = ½(1 + tanh u) + ½x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²).
    ∂L/∂x = δ ⊙ y'. The backward is a function of the saved x (through TanhFunction for 'tanh').
    """

    @staticmethod
    def forward(input, approximate):
        if approximate == "tanh":
            return 0.5 * input * (1 + TanhFunction.apply(_gelu_tanh_argument(input)))
        return input * _normal_cdf(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.approximate = inputs
        ctx.save_for_backward(input)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        if ctx.approximate == "tanh":
            tanh_u = TanhFunction.apply(_gelu_tanh_argument(x))
            du_dx = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)
            slope = 0.5 * (1 + tanh_u) + 0.5 * x * (1 - tanh_u * tanh_u) * du_dx
        else:
            slope = _normal_cdf(x) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return grad_output * slope, None


def _normal_cdf(x):
    """Φ(x) = ½(1 + erf(x/√2))."""
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def _gelu_tanh_argument(x):
    """u = √(2/π)(x + 0.044715x³)."""
    return _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x)


class SoftmaxFunction(Function):
    """y_i = e^{x_i − m} / Σ_k e^{x_k − m} along ``dim``, m = max_k x_k.

    Subtracting m changes nothing (it cancels) but keeps every exponent ≤ 0: no overflow, and the largest term is
    e^0 = 1, so the sum is ≥ 1 (logits of ±1000 give exact 0s and 1s, no inf/NaN).
    Backward: ∂y_i/∂x_j = y_i([i = j] − y_j), so the Jacobian-vector product is
        ∂L/∂x_j = Σ_i δ_i y_i ([i = j] − y_j) = y_j (δ_j − Σ_i δ_i y_i),   i.e.  ∂L/∂x = y ⊙ (δ − Σ(δ ⊙ y)),
    one reduction along ``dim`` instead of an n × n matrix.
    """

    @staticmethod
    def forward(input, dim):
        exps = torch.exp(input - _max_along(input, dim))
        return exps / exps.sum(dim, keepdim=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return output * (grad_output - (grad_output * output).sum(ctx.dim, keepdim=True)), None


class LogSoftmaxFunction(Function):
    """y_i = log softmax(x)_i = (x_i − m) − log Σ_k e^{x_k − m} along ``dim``, m = max_k x_k (stable as softmax).

    Backward: ∂y_i/∂x_j = [i = j] − softmax(x)_j, and softmax(x) = e^y, so
        ∂L/∂x = δ − e^y ⊙ Σ_i δ_i.
    """

    @staticmethod
    def forward(input, dim):
        shifted = input - _max_along(input, dim)
        return shifted - torch.log(torch.exp(shifted).sum(dim, keepdim=True))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return grad_output - torch.exp(output) * grad_output.sum(ctx.dim, keepdim=True), None


def _max_along(input, dim):
    """max_k x_k along dim (kept as a size-1 dim); 0 for an empty slice, where there is nothing to shift."""
    if input.numel() == 0:
        return input.new_zeros(())
    return input.amax(dim, keepdim=True)
