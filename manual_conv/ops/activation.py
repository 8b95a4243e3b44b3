"""Activations' autograd Functions: ReLU, sigmoid, tanh, GELU, softmax and log-softmax, forward and backward by hand.

Notation (docs/derivations.md, "Activations"): x the input, y the output, δ = ∂L/∂y. The element-wise ones have a
diagonal Jacobian, so ∂L/∂x = δ ⊙ f'(x), with f' written through y where that is cheaper (σ' = y(1 − y),
tanh' = 1 − y²). Softmax couples a whole slice along ``dim``; its backward is the Jacobian-vector product in closed
form, never the n × n Jacobian.

Precision and dtypes, as torch's CPU kernels: float16/bfloat16 are computed in float32 (``opmath_dtype``) and rounded
once at the end, forward and backward; the backwards written through y then recompute y in float32 from x
(``_output_in_opmath``). Complex sigmoid and tanh follow PyTorch's convention for gradients
(conjugate Wirtinger): ∂L/∂x = δ ⊙ conj(f'(x)). Each formula is written so that inf and NaN land where PyTorch's
kernel puts them (0 · ∞ = NaN where torch's kernel multiplies, a selection where it selects).

Every backward is made of differentiable tensor ops on saved tensors; where it uses the saved output y, y is an
output of the same Function, so differentiating the backward goes through this Function again: double backward
works for all of them.
"""
import math

import torch

from ..backend import compiled_layers
from ._utils import Function, laid_out_like, opmath_dtype


def _in_opmath(tensor, **kwargs):
    """``tensor`` in the dtype torch's kernels compute in for its dtype (float32 for float16/bfloat16)."""
    return tensor.to(opmath_dtype(tensor.dtype), **kwargs)


def _conj(tensor):
    """conj(t) for complex t; real t itself (conjugate-Wirtinger gradients reduce to the usual ones)."""
    return tensor.conj() if tensor.is_complex() else tensor


def _save_output_and_reduced_input(ctx, input, output):
    """Save y, which the backward uses, as torch's does (so that modifying y in place before the backward raises, as
    in torch); and x too when it is float16/bfloat16, for ``_output_in_opmath``."""
    ctx.save_for_backward(output, *([input] if opmath_dtype(input.dtype) != input.dtype else []))


def _output_in_opmath(ctx, function, *args):
    """y for the backward: the saved y, or for float16/bfloat16 y recomputed in float32 from the saved x by
    ``function`` (differentiable, for the double backward). The rounded y would carry its rounding into the gradient,
    amplified where the gradient's terms cancel, and could land farther from the exact gradient than torch's."""
    output, *input = ctx.saved_tensors
    return function.apply(_in_opmath(input[0]), *args) if input else output


class ReLUFunction(Function):
    """y = max(x, 0) (NaN stays NaN). With ``inplace`` x itself is overwritten and returned, as torch.relu_ does.

    Backward: ∂y/∂x = 1 where x > 0, 0 where x < 0, and PyTorch's choice 0 at x = 0:
        ∂L/∂x = 0 where y ≤ 0, else δ   (a NaN passes δ through, as in PyTorch's threshold_backward).
    A selection rather than δ ⊙ mask, so an infinite δ at a dropped position gives 0, not NaN. The gradient is laid
    out as y, as threshold_backward's is.

    Backward kernel: on 'cpp' the compiled ``torch.ops.manual_conv.relu_backward`` (floating point) when δ and y are
    laid out alike, as in a network; else torch.where, whose TensorIterator lays the gradient out as torch's
    threshold_backward does (the kernel keeps only a layout its operands share).
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
        if compiled_layers(output) and grad_output.stride() == output.stride():
            grad_input = torch.ops.manual_conv.relu_backward(grad_output, output)
        else:
            grad_input = torch.where(output <= 0, 0.0, grad_output)
        if 1 in output.shape:
            grad_input = _laid_out_as_elementwise(grad_input, output, grad_output)
        return grad_input, None


def _laid_out_as_elementwise(result, *operands):
    """``result`` with the strides torch's elementwise kernels give it (TensorIterator's fast setup): standard
    contiguous strides when every operand is contiguous, channels_last ones when every one is channels_last
    (contiguous winning a tie), else as it is. The strides of size-1 dims, which ``where`` and the compiled kernel
    take from the operands, decide whether a 1-channel tensor counts as channels_last."""
    if all(operand.is_contiguous() for operand in operands):
        return laid_out_like(result, result, torch.contiguous_format, result.dtype)
    if all(operand.dim() == 4 and operand.is_contiguous(memory_format=torch.channels_last) for operand in operands):
        return laid_out_like(result, result, torch.channels_last, result.dtype)
    return result


class SigmoidFunction(Function):
    """y = σ(x) = 1 / (1 + e^{−x}) (for x → −∞, e^{−x} → ∞ and y → 0 without overflow trouble); complex x too.

    Backward: σ'(x) = e^{−x} / (1 + e^{−x})² = σ(x)(1 − σ(x)), so ∂L/∂x = δ ⊙ conj((1 − y) ⊙ y).
    """

    @staticmethod
    def forward(input):
        return torch.reciprocal(1 + torch.exp(-_in_opmath(input))).to(input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_output_and_reduced_input(ctx, inputs[0], output)

    @staticmethod
    def backward(ctx, grad_output):
        y = _in_opmath(_output_in_opmath(ctx, SigmoidFunction))
        return (_in_opmath(grad_output) * _conj((1 - y) * y)).to(grad_output.dtype)


class TanhFunction(Function):
    """y = tanh(x) = s · (1 − e^{−2sx}) / (1 + e^{−2sx}) = s · (−t) / (2 + t), t = expm1(−2sx), s = ±1 the sign of
    Re x; complex x too.

    Only |e^{−2sx}| = e^{−2|Re x|} ≤ 1 is ever formed (no overflow for |x| large), and expm1 keeps the precision
    near 0 that 1 − e^{−2|x|} would lose. Complex x with an infinite real part gives s (C99's ctanh, as
    PyTorch's std::tanh), and NaN + i0 stays itself.
    Backward: tanh'(x) = 1 − tanh²(x), so ∂L/∂x = δ ⊙ conj(1 − y²).
    """

    @staticmethod
    def forward(input):
        x = _in_opmath(input)
        if not x.is_complex():  # s·x = |x|; in place on fresh tensors: three of x's size at most
            t = torch.expm1(x.abs().mul_(-2))
            return torch.div(t, t + 2).neg_().copysign_(x).to(input.dtype)
        sign = torch.copysign(torch.ones((), dtype=x.real.dtype), x.real)
        t = torch.expm1(x * sign * -2)
        output = torch.div(t, t + 2).neg_().mul_(sign)
        output = torch.where(x.real.isinf(), sign.to(x.dtype), output)
        return torch.where(x.real.isnan() & (x.imag == 0), x, output).to(input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_output_and_reduced_input(ctx, inputs[0], output)

    @staticmethod
    def backward(ctx, grad_output):
        y = _in_opmath(_output_in_opmath(ctx, TanhFunction))
        return (_in_opmath(grad_output) * _conj(1 - y * y)).to(grad_output.dtype)


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_CUBIC = 0.044715


class GELUFunction(Function):
    """y = x · Φ(x), Φ the standard normal CDF.

    approximate='none': Φ(x) = ½ erfc(−x/√2), which is ½(1 + erf(x/√2)) without its cancellation for x ≪ 0.
        Backward: y' = Φ(x) + x·φ(x), φ(x) = e^{−x²/2}/√(2π).
    approximate='tanh': Φ(x) ≈ ½(1 + tanh u) = σ(2u), u = √(2/π)(x + 0.044715x³), σ by ``SigmoidFunction``
        (1 + tanh u = 2/(1 + e^{−2u}), again without the cancellation of 1 + tanh u for x ≪ 0).
        Backward: y' = σ(2u) + x · 2σ(2u)(1 − σ(2u)) · √(2/π)(1 + 3·0.044715x²).
    ∂L/∂x = δ ⊙ y'. The backward is a function of the saved x (through SigmoidFunction for 'tanh'). inf and NaN
    land as in torch's kernel: x·Φ(x) is NaN at x = −∞ (−∞ · 0), y' is NaN at ±∞ (∞ · 0).
    """

    @staticmethod
    def forward(input, approximate):
        x = _in_opmath(input)
        cdf = SigmoidFunction.apply(2 * _gelu_tanh_argument(x)) if approximate == "tanh" else _normal_cdf(x)
        return (x * cdf).to(input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.approximate = inputs
        ctx.save_for_backward(input)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        x = _in_opmath(input)
        if ctx.approximate == "tanh":
            cdf = SigmoidFunction.apply(2 * _gelu_tanh_argument(x))
            du_dx = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)
            slope = cdf + x * (2 * cdf * (1 - cdf)) * du_dx
        else:
            slope = _normal_cdf(x) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return (_in_opmath(grad_output) * slope).to(grad_output.dtype), None


def _normal_cdf(x):
    """Φ(x) = ½ erfc(−x/√2)."""
    return 0.5 * torch.erfc(-x / math.sqrt(2))


def _gelu_tanh_argument(x):
    """u = √(2/π)(x + 0.044715x³)."""
    return _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x)


class SoftmaxFunction(Function):
    """y_i = e^{x_i − m} / Σ_k e^{x_k − m} along ``dim``, m = max_k x_k.

    Subtracting m changes nothing (it cancels) but keeps every exponent ≤ 0: no overflow, and the largest term is
    e^0 = 1, so the sum is ≥ 1 (logits of ±1000 give exact 0s and 1s, no inf/NaN).
    Backward: ∂y_i/∂x_j = y_i([i = j] − y_j), so the Jacobian-vector product is
        ∂L/∂x_j = Σ_i δ_i y_i ([i = j] − y_j) = y_j (δ_j − Σ_i δ_i y_i),   i.e.  ∂L/∂x = y ⊙ (δ − Σ(δ ⊙ y)),
    one reduction along ``dim`` instead of an n × n matrix. Output and gradient are contiguous, as torch's.
    """

    @staticmethod
    def forward(input, dim):
        x = _in_opmath(input, memory_format=torch.contiguous_format)
        exps = torch.exp(x - _max_along(x, dim))
        return laid_out_like(exps / exps.sum(dim, keepdim=True), input, torch.contiguous_format, input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.dim = inputs
        _save_output_and_reduced_input(ctx, input, output)

    @staticmethod
    def backward(ctx, grad_output):
        y = _in_opmath(_output_in_opmath(ctx, SoftmaxFunction, ctx.dim))
        grad = _in_opmath(grad_output, memory_format=torch.contiguous_format)
        grad_input = y * (grad - (grad * y).sum(ctx.dim, keepdim=True))
        return laid_out_like(grad_input, grad_output, torch.contiguous_format, grad_output.dtype), None


class LogSoftmaxFunction(Function):
    """y_i = log softmax(x)_i = (x_i − m) − log Σ_k e^{x_k − m} along ``dim``, m = max_k x_k (stable as softmax).

    Backward: ∂y_i/∂x_j = [i = j] − softmax(x)_j, and softmax(x) = e^y, so
        ∂L/∂x = δ − e^y ⊙ Σ_i δ_i.
    Output and gradient are contiguous, as torch's.
    """

    @staticmethod
    def forward(input, dim):
        x = _in_opmath(input, memory_format=torch.contiguous_format)
        shifted = x - _max_along(x, dim)
        output = shifted - torch.log(torch.exp(shifted).sum(dim, keepdim=True))
        return laid_out_like(output, input, torch.contiguous_format, input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.dim = inputs
        _save_output_and_reduced_input(ctx, input, output)

    @staticmethod
    def backward(ctx, grad_output):
        y = _in_opmath(_output_in_opmath(ctx, LogSoftmaxFunction, ctx.dim))
        grad = _in_opmath(grad_output, memory_format=torch.contiguous_format)
        grad_input = grad - torch.exp(y) * grad.sum(ctx.dim, keepdim=True)
        return laid_out_like(grad_input, grad_output, torch.contiguous_format, grad_output.dtype), None


def _max_along(input, dim):
    """max_k x_k along dim (kept as a size-1 dim); 0 for an empty slice, where there is nothing to shift."""
    if input.numel() == 0:
        return input.new_zeros(())
    return input.amax(dim, keepdim=True)
