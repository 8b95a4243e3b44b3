"""Stochastic depth (Huang et al., "Deep Networks with Stochastic Depth", 2016) as torchvision.ops computes it:
a residual branch kept or dropped whole, for each sample ("row") or for the whole batch ("batch").

Notation (docs/derivations.md, "Stochastic depth"): x the branch's output (N, ...), p the probability of dropping
it, q = 1 − p the survival rate, m ~ Bernoulli(q) drawn per sample (shape (N, 1, ..., 1)) or once (shape
(1, ..., 1)), y the layer's output, δ = ∂L/∂y. Like dropout, the noise is drawn beforehand, exactly as torchvision
draws it (``survival_noise``: a seed gives torchvision's very noise), and enters the Function as a constant.
"""
import torch

from ._utils import Function, opmath_dtype, scalar_type_name


def survival_noise(input, p, mode):
    """m / q (m where q = 0), m ~ Bernoulli(q) of shape (N, 1, ..., 1) for mode 'row', (1, ..., 1) for 'batch':
    torchvision's own ``torch.empty(size, dtype=input.dtype).bernoulli_(q)``, the way torchvision.ops.
    stochastic_depth draws its noise, then divided by q in the dtype torch computes in for the input's dtype
    (float32 for float16/bfloat16, where torchvision rounds m / q to the input's dtype first). Raises what
    torchvision raises: IndexError for 'row' on a 0-dim input, NotImplementedError for complex input (bernoulli_),
    RuntimeError for an integer or bool input when q > 0 (the division's result cannot be cast back)."""
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.dim() - 1) if mode == "row" else [1] * input.dim()
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival_rate)
    if survival_rate == 0.0:
        return noise
    if not (input.dtype.is_floating_point or input.dtype.is_complex):  # (complex input is empty here)
        raise RuntimeError(f"result type Float can't be cast to the desired output type "
                           f"{scalar_type_name(input.dtype)}")
    return noise.to(opmath_dtype(input.dtype)).div_(survival_rate)


class StochasticDepthFunction(Function):
    """y = x ⊙ m / q: each sample's (mode 'row') or the whole batch's (mode 'batch') x kept and scaled by 1/q, or
    zeroed; E[y] = x, so evaluation needs no rescaling. The scaled noise m / q comes in as a constant (see
    ``survival_noise``), broadcast over x; float16/bfloat16 are multiplied in float32 and rounded once.

    Backward: y is x times a constant per element, so ∂L/∂x = δ ⊙ m / q (a product, as torchvision's autograd
    computes it: an infinite δ on a dropped sample gives NaN). Linear in δ: double backward works.
    """

    @staticmethod
    def forward(input, scaled_noise):
        return (input * scaled_noise).to(input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad_output):
        (scaled_noise,) = ctx.saved_tensors
        return (grad_output * scaled_noise).to(grad_output.dtype), None
