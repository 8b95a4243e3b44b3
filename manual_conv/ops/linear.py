"""The fully connected layer and dropout as autograd Functions, forward and backward by hand.

Notation (docs/derivations.md, "Linear and dropout"): x the input (..., in_features), W the weight
(out_features, in_features), b the bias, y the output (..., out_features), δ = ∂L/∂y. Both backwards are made of
differentiable tensor ops on saved tensors, so double backward works.
"""
import torch

from ..backend import compiled_cpu_layers
from ._utils import Function


class LinearFunction(Function):
    """y = x Wᵀ + b: y[..., o] = Σ_i x[..., i] · W[o, i] + b[o], for any number of leading dims of x.

    b is broadcast to y's shape (as torch's addmm does; usually it is (out_features,)).
    Backward, with the leading dims of x and δ flattened into M rows (X: M × in, Δ: M × out):
        ∂L/∂x = δ W                        (each x[..., i] feeds every output o through W[o, i]);
        ∂L/∂W = Δᵀ X                       (summed over the M rows, since W is shared by all of them);
        ∂L/∂b = Σ_rows δ                   (summed down to b's shape).
    """

    @staticmethod
    def forward(input, weight, bias):
        output = input.matmul(weight.t())
        if bias is not None:
            output += bias  # in place: a bias that would broadcast output to a larger shape is an error, as in torch
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
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            grad_input = grad_output.matmul(weight)
        if needs_weight:
            grad_weight = grad_output.reshape(-1, weight.shape[0]).t().matmul(input.reshape(-1, weight.shape[1]))
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
    no rescaling). Returns (y, m / (1 − p)), like torch's native_dropout returns its mask; the mask is drawn as
    PyTorch draws it (``scaled_bernoulli_mask``), so a seed gives torch's very mask. p = 1 draws nothing and
    multiplies by 0. With ``inplace`` x itself is overwritten and returned.

    Backward: y is x times a constant per element, so ∂L/∂x = δ ⊙ m / (1 − p).
    """

    @staticmethod
    def forward(input, p, inplace):
        if p == 1:
            scaled_mask = input.new_zeros(())
        else:
            scaled_mask = scaled_bernoulli_mask(input, 1 - p)
        output = input.mul_(scaled_mask) if inplace else input * scaled_mask
        return output, scaled_mask

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, _, inplace = inputs
        _, scaled_mask = output
        if inplace:
            ctx.mark_dirty(input)
        ctx.mark_non_differentiable(scaled_mask)
        ctx.set_materialize_grads(False)  # see MaxPool2dFunction.setup_context
        ctx.save_for_backward(scaled_mask)

    @staticmethod
    def backward(ctx, grad_output, _grad_mask):
        (scaled_mask,) = ctx.saved_tensors
        grad_input = None if grad_output is None else grad_output * scaled_mask
        return grad_input, None, None
