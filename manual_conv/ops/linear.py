"""The fully connected layer and dropout as autograd Functions, forward and backward by hand.

Notation (docs/derivations.md, "Linear and dropout"): x the input (..., in_features), W the weight
(out_features, in_features), b the bias, y the output (..., out_features), δ = ∂L/∂y. Both backwards are made of
differentiable tensor ops on saved tensors, so double backward works.
"""
import math

import torch

from ..backend import compiled_cpu_layers
from ._utils import Function


class LinearFunction(Function):
    """y = x Wᵀ + b: y[..., o] = Σ_i x[..., i] · W[o, i] + b[o], for any number of leading dims of x.

    The leading dims of x are flattened into M rows (X: M × in, Δ: M × out) and the product is one GEMM with the
    bias added inside it (addmm: one rounding, as torch's linear), whose result is y. A bias that is not a vector
    is broadcast to y's shape afterwards (an error when it would enlarge y, as in torch).
    Backward, with x̄, W̄ complex conjugates (for real tensors the tensors themselves):
        ∂L/∂x = δ W̄                        (each x[..., i] feeds every output o through W[o, i]);
        ∂L/∂W = Δᵀ X̄                       (summed over the M rows, since W is shared by all of them);
        ∂L/∂b = Σ_rows δ                   (summed down to b's shape).
    """

    @staticmethod
    def forward(input, weight, bias):
        out_features, in_features = weight.shape
        rows = math.prod(input.shape[:-1])
        input_rows = input.reshape(rows, in_features)
        if bias is not None and bias.dim() == 1:
            output_rows = torch.addmm(bias, input_rows, weight.t())
        else:
            output_rows = torch.mm(input_rows, weight.t())
        # The rows as y's shape, without making y a view (an in-place op on a custom Function's output that is a
        # view of a tensor made inside it is refused): _unsafe_view, as torch's own matmul folds its rows.
        output = torch.ops.aten._unsafe_view(output_rows, (*input.shape[:-1], out_features))
        if bias is not None and bias.dim() != 1:
            output += bias
        return output

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        ctx.save_for_backward(input, weight)
        ctx.bias_shape = None if bias is None else bias.shape

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad
        out_features, in_features = weight.shape
        rows = math.prod(input.shape[:-1])
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            grad_input = grad_output.matmul(weight.conj())
        if needs_weight:
            grad_weight = grad_output.reshape(rows, out_features).t().matmul(input.reshape(rows, in_features).conj())
        if needs_bias:
            grad_bias = grad_output.sum_to_size(ctx.bias_shape)
        return grad_input, grad_weight, grad_bias


def scaled_bernoulli_mask(input, keep_probability):
    """m / q with m ~ Bernoulli(q) element-wise, laid out like ``input``: torch's own
    ``empty_like(input).bernoulli_(q).div_(q)``, the way PyTorch's dropout draws its mask, so that a seed gives
    torch's very mask. The compiled CPU kernel (csrc/dropout_cpu.cpp) draws the very same numbers from the same
    generator, a block at a time: over ten times faster than bernoulli_, which draws them one by one."""
    if compiled_cpu_layers(input):
        return torch.ops.manual_conv.dropout_mask(input, keep_probability)
    return torch.empty_like(input).bernoulli_(keep_probability).div_(keep_probability)


class DropoutFunction(Function):
    """y = x ⊙ m / (1 − p), m ~ Bernoulli(1 − p) element-wise ("inverted" dropout: E[y] = x, so evaluation needs
    no rescaling). The scaled mask m / (1 − p) is drawn beforehand (``scaled_bernoulli_mask``, as PyTorch draws
    it, so a seed gives torch's very mask) and comes in as a constant, so the Function has one output and an
    in-place dropout may overwrite any input, a view of another tensor included. With ``inplace`` x itself is
    overwritten and returned.

    Backward: y is x times a constant per element, so ∂L/∂x = δ ⊙ m / (1 − p).
    """

    @staticmethod
    def forward(input, scaled_mask, inplace):
        return input.mul_(scaled_mask) if inplace else input * scaled_mask

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, scaled_mask, inplace = inputs
        if inplace:
            ctx.mark_dirty(input)
        ctx.save_for_backward(scaled_mask)

    @staticmethod
    def backward(ctx, grad_output):
        (scaled_mask,) = ctx.saved_tensors
        return grad_output * scaled_mask, None, None
