"""Activations' autograd Functions, forward and backward by hand: ReLU, sigmoid, tanh, GELU, softmax and log-softmax;
hardtanh (and relu6), leaky ReLU, ELU, hardsigmoid, hardswish, SiLU, mish and softplus.

Notation (docs/derivations.md, "Activations"): x the input, y the output, δ = ∂L/∂y. The element-wise ones have a
diagonal Jacobian, so ∂L/∂x = δ ⊙ f'(x), with f' written through y where that is cheaper (σ' = y(1 − y),
tanh' = 1 − y²). Softmax couples a whole slice along ``dim``; its backward is the Jacobian-vector product in closed
form, never the n × n Jacobian.

Precision and dtypes, as torch's CPU kernels: float16/bfloat16 are computed in float32 (``opmath_dtype``) and rounded
once at the end, forward and backward; the backwards written through y then recompute y in float32 from x
(``_output_in_opmath``). Complex sigmoid and tanh follow PyTorch's convention for gradients
(conjugate Wirtinger): ∂L/∂x = δ ⊙ conj(f'(x)). Each formula is written so that inf and NaN land where PyTorch's
kernel puts them (0 · ∞ = NaN where torch's kernel multiplies, a selection where it selects).

Forward mode (jvp): each element-wise Function's tangent is ẏ = f'(x) ⊙ ẋ with the very f' of its backward (for
complex sigmoid and tanh, holomorphic: f'(x) ⊙ ẋ, not conjugated), softmax's ẏ = y ⊙ (ẋ − ⟨y, ẋ⟩) and
log-softmax's ẏ = ẋ − ⟨softmax(x), ẋ⟩ along ``dim``. An in-place call's jvp writes the tangent in place too (forward
AD's rule for inputs marked dirty). The backward and the jvp read the same saved tensors (``_save``).

vmap: the out-of-place Functions let torch.func generate their rule (``generate_vmap_rule``: every step is a torch
op vmap batches; the layout helpers keep a batched result as it is). The ones that can run in place have their own
rule, ``elementwise_vmap``: an element-wise Function applies to the batch as to one more dim, so it runs once on the
stacked tensors, in place on the stacked input itself (torch.func's generated rule cannot return an input).

Every backward is made of differentiable tensor ops on saved tensors; where it uses the saved output y, y is an
output of the same Function, so differentiating the backward goes through this Function again, and where it needs
σ, tanh or softplus of x it calls their Functions: double backward works for all of them. At a kink (where the
derivative jumps) each takes the one-sided slope that PyTorch's kernel takes (torch's derivatives.yaml and
aten/src/ATen/native/cpu/Activation.cpp); for a NaN x, where torch's vectorised and scalar loops disagree, the
scalar loop's (which runs for strided tensors, for the tail of contiguous ones, and in torch._decomp).
"""
import math

import torch

from ..backend import compiled_layers
from ._utils import Function, is_vmapped, laid_out_like, opmath_dtype


def _in_opmath(tensor, **kwargs):
    """``tensor`` in the dtype torch's kernels compute in for its dtype (float32 for float16/bfloat16)."""
    return tensor.to(opmath_dtype(tensor.dtype), **kwargs)


def _conj(tensor):
    """conj(t) for complex t; real t itself (conjugate-Wirtinger gradients reduce to the usual ones)."""
    return tensor.conj() if tensor.is_complex() else tensor


def _save(ctx, *tensors):
    """Save ``tensors`` for the backward and for the jvp alike: both read them as ctx.saved_tensors (and torch.func's
    generated vmap rule records one set of batch dims for the two)."""
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)


def _save_output_and_reduced_input(ctx, input, output):
    """Save y, which the backward uses, as torch's does (so that modifying y in place before the backward raises, as
    in torch); and x too when it is float16/bfloat16, for ``_output_in_opmath``."""
    _save(ctx, output, *([input] if opmath_dtype(input.dtype) != input.dtype else []))


def _tangent(ctx, input_tangent, output_tangent):
    """ẏ (computed in opmath) rounded to ẋ's dtype; for an in-place call written into ẋ and ẋ returned, as forward
    AD requires of an input marked dirty (its tangent is modified in place with it)."""
    output_tangent = output_tangent.to(input_tangent.dtype)
    if not getattr(ctx, "inplace", False):
        return output_tangent
    return written_in_place(input_tangent.copy_(output_tangent))


def written_in_place(tangent):
    """``tangent``, written in place, with its version counted: forward AD checks by the version counter that an
    in-place Function's jvp wrote its input's tangent, and the legacy vmap of gradcheck's check_batched_forward_grad
    does not count a write through its batched tensors (torch's own in-place ops are not checked)."""
    torch.autograd.graph.increment_version(tangent)
    return tangent


def elementwise_vmap(function, in_dims, args, inplace):
    """The vmap rule of an element-wise Function whose first argument is x and whose other tensor arguments have x's
    shape or none (0-dim): the Function applied once to the stacked batch, which it treats as one more dim.
    Every tensor argument is aligned to x's batch dim (moved there, or an unbatched one unsqueezed there), so that an
    in-place call writes into the stacked x itself and returns it (torch.func then returns the vmapped input, as
    vmap of torch's in-place ops does). With x unbatched and another argument batched, the batch goes first; an
    in-place call then cannot write a batch into x and raises vmap's error for it."""
    input_dim = in_dims[0]
    if input_dim is None:
        if inplace:
            raise RuntimeError(
                "vmap: inplace arithmetic(self, *extra_args) is not possible because there exists a Tensor `other` "
                "in extra_args that has more elements than `self`. This happened due to `other` being vmapped over "
                "but `self` not being vmapped over in a vmap. Please try to use out-of-place operators instead of "
                "inplace arithmetic. If said operator is being called inside the PyTorch framework, please file a "
                "bug report instead.")
        input_dim, args = 0, (args[0].unsqueeze(0), *args[1:])
        in_dims = (0, *in_dims[1:])
    aligned = [args[0]]
    for arg, dim in zip(args[1:], in_dims[1:]):
        if isinstance(arg, torch.Tensor) and arg.dim() > 0:
            arg = arg.movedim(dim, input_dim) if dim is not None else arg.unsqueeze(input_dim)
        aligned.append(arg)
    return function.apply(*aligned), input_dim


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
    Forward mode (jvp): ẏ = 0 where y ≤ 0, else ẋ (the backward's selection; in place, written into ẋ).

    Backward kernel: on 'cpp' the compiled ``torch.ops.manual_conv.relu_backward`` (floating point; through
    ``ReLUBackwardFunction`` when the backward is differentiated, so that forward-over-reverse runs too) when δ and
    y are laid out alike, as in a network; else torch.where, whose TensorIterator lays the gradient out as torch's threshold_backward does (the
    kernel keeps only a layout its operands share).
    """

    @staticmethod
    def forward(input, inplace):
        if not inplace:
            return input.clamp_min(0)
        input.clamp_min_(0)
        return input  # the input itself: torch.compile accepts mark_dirty only for an input the forward returns

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.inplace = inputs
        if ctx.inplace:
            ctx.mark_dirty(input)
        _save(ctx, output)

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        if compiled_layers(output) and grad_output.stride() == output.stride():
            # the op itself where the backward is not differentiated (no graph recorded: an ordinary training
            # step, where an apply costs twice the op on small tensors), else through its Function
            if torch.is_grad_enabled():
                grad_input = ReLUBackwardFunction.apply(grad_output, output)
            else:
                grad_input = torch.ops.manual_conv.relu_backward(grad_output, output)
        else:
            grad_input = torch.where(output <= 0, 0.0, grad_output)
        return _laid_out_as_elementwise(grad_input, output, grad_output), None

    @staticmethod
    def jvp(ctx, input_tangent, _):
        (output,) = ctx.saved_tensors
        return _tangent(ctx, input_tangent, torch.where(output <= 0, 0.0, input_tangent))

    @staticmethod
    def vmap(info, in_dims, *args):
        return elementwise_vmap(ReLUFunction, in_dims, args, args[1])


class ReLUBackwardFunction(Function):
    """gx = relu_backward(δ, y): 0 where y ≤ 0, else δ, by the compiled kernel (ReLU's backward on 'cpp').

    Linear in δ and a step function of y (derivative 0 almost everywhere, as torch's threshold_backward):
        backward: ∂L/∂δ = relu_backward(G, y), none to y;   forward mode (jvp): ġx = relu_backward(δ̇, y).
    The op's own autograd (ops/library.py) has no forward mode; this Function gives ReLU's double backward one.
    vmap: generated, through the op's vmap rule (ops/library.py).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_output, output):
        return torch.ops.manual_conv.relu_backward(grad_output, output)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs[1])

    @staticmethod
    def backward(ctx, grad):
        (output,) = ctx.saved_tensors
        return ReLUBackwardFunction.apply(grad, output), None

    @staticmethod
    def jvp(ctx, grad_output_tangent, _):
        (output,) = ctx.saved_tensors
        return ReLUBackwardFunction.apply(grad_output_tangent, output)


def _laid_out_as_elementwise(result, *operands):
    """``result`` with the strides torch's element-wise kernel over ``operands`` (same shape, in the kernel's order)
    gives its output: a copy where ours differ. Ours come from a chain of ops, some with a Python scalar or a
    condition first, which TensorIterator lays out by other cases of its rule; the difference shows in the strides
    of size-1 dims (which decide whether a 1-channel tensor counts as channels_last) and for mixed layouts.
    The common case, no size-1 dim and operands laid out as the result, costs two checks. Under vmap (a batched
    result) the per-sample layout is not torch's to match, and a copy into a new tensor would drop the batch: kept."""
    if is_vmapped(result):
        return result
    # Lists, not generators, in all() and any() here and in what the Functions' forward and backward call:
    # torch.compile (2.14) fails on a generator they leave unfinished ("generator already executing") inside a
    # Function and breaks the graph.
    if 1 not in result.shape and all([operand.stride() == result.stride() for operand in operands]):
        return result  # TensorIterator keeps dense operands' common strides
    strides = _elementwise_strides(result.shape, operands)
    if result.stride() == strides:
        return result
    return torch.empty_strided(result.shape, strides, dtype=result.dtype, device=result.device).copy_(result)


def _elementwise_strides(shape, operands):
    """The strides of the output TensorIterator allocates for an op over ``operands`` of ``shape``
    (aten/src/ATen/TensorIterator.cpp): standard contiguous strides when every operand is contiguous, channels_last
    ones when every one is channels_last, the operands' own when they are all dense with the same strides (its fast
    setup); otherwise dense strides in the order of the dims sorted by the operands' strides, the first operand
    deciding, a tie going to the larger dim last and then to the next operand (``reorder_dimensions``)."""
    contiguous = _standard_strides(shape)
    if all([operand.is_contiguous() for operand in operands]):
        return contiguous
    if all([operand.is_contiguous(memory_format=torch.channels_last) for operand in operands]):
        batch, channels, height, width = shape  # c10's get_channels_last_strides_2d
        return (height * width * channels, 1, width * channels, channels)
    if all([_non_overlapping_and_dense(operand) for operand in operands]) and \
            all([operand.stride() == operands[0].stride() for operand in operands]):
        return operands[0].stride()

    def order(dim0, dim1):  # TensorIterator's should_swap: 1 when dim0 goes after dim1, −1 before, 0 undecided
        for operand in operands:
            stride0, stride1 = operand.stride(dim0), operand.stride(dim1)
            if stride0 == 0 or stride1 == 0:
                continue
            if stride0 != stride1:
                return -1 if stride0 < stride1 else 1
            if shape[dim0] > shape[dim1]:
                return 1
        return 0

    permutation = list(reversed(range(len(shape))))  # fastest-moving dim first
    for i in range(1, len(shape)):
        moving = i
        for j in reversed(range(i)):
            comparison = order(permutation[j], permutation[moving])
            if comparison > 0:
                permutation[j], permutation[moving] = permutation[moving], permutation[j]
                moving = j
            elif comparison < 0:
                break
    if permutation == list(reversed(range(len(shape)))):
        return contiguous
    strides, step = [0] * len(shape), 1
    for dim in permutation:
        strides[dim], step = step, step * shape[dim]
    return tuple(strides)


def _standard_strides(shape):
    """Row-major strides of ``shape`` as c10 computes them (a size-0 or size-1 dim counting as 1)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _non_overlapping_and_dense(tensor):
    """c10's is_non_overlapping_and_dense: the elements fill a block of memory exactly, in some order of the dims."""
    dims = sorted((tensor.stride(dim), size) for dim, size in enumerate(tensor.shape) if size != 1)
    if any([size == 0 for _, size in dims]):
        return True
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


class SigmoidFunction(Function):
    """y = σ(x) = 1 / (1 + e^{−x}) (for x → −∞, e^{−x} → ∞ and y → 0 without overflow trouble); complex x too.

    Backward: σ'(x) = e^{−x} / (1 + e^{−x})² = σ(x)(1 − σ(x)), so ∂L/∂x = δ ⊙ conj((1 − y) ⊙ y).
    Forward mode (jvp): ẏ = (1 − y) ⊙ y ⊙ ẋ.
    """

    generate_vmap_rule = True

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

    @staticmethod
    def jvp(ctx, input_tangent):
        y = _in_opmath(_output_in_opmath(ctx, SigmoidFunction))
        return _tangent(ctx, input_tangent, _in_opmath(input_tangent) * ((1 - y) * y))


class TanhFunction(Function):
    """y = tanh(x) = s · (1 − e^{−2sx}) / (1 + e^{−2sx}) = s · (−t) / (2 + t), t = expm1(−2sx), s = ±1 the sign of
    Re x; complex x too.

    Only |e^{−2sx}| = e^{−2|Re x|} ≤ 1 is ever formed (no overflow for |x| large), and expm1 keeps the precision
    near 0 that 1 − e^{−2|x|} would lose. Complex x with an infinite real part gives s (C99's ctanh, as
    PyTorch's std::tanh), and NaN + i0 stays itself.
    Backward: tanh'(x) = 1 − tanh²(x), so ∂L/∂x = δ ⊙ conj(1 − y²).
    Forward mode (jvp): ẏ = (1 − y²) ⊙ ẋ.
    """

    generate_vmap_rule = True

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

    @staticmethod
    def jvp(ctx, input_tangent):
        y = _in_opmath(_output_in_opmath(ctx, TanhFunction))
        return _tangent(ctx, input_tangent, _in_opmath(input_tangent) * (1 - y * y))


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
    Forward mode (jvp): ẏ = y' ⊙ ẋ.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, approximate):
        x = _in_opmath(input)
        cdf = SigmoidFunction.apply(2 * _gelu_tanh_argument(x)) if approximate == "tanh" else _normal_cdf(x)
        return (x * cdf).to(input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.approximate = inputs
        _save(ctx, input)

    @staticmethod
    def backward(ctx, grad_output):
        return (_in_opmath(grad_output) * GELUFunction._slope(ctx)).to(grad_output.dtype), None

    @staticmethod
    def jvp(ctx, input_tangent, _):
        return _tangent(ctx, input_tangent, _in_opmath(input_tangent) * GELUFunction._slope(ctx))

    @staticmethod
    def _slope(ctx):
        """y' of the saved x, in opmath."""
        (input,) = ctx.saved_tensors
        x = _in_opmath(input)
        if ctx.approximate == "tanh":
            cdf = SigmoidFunction.apply(2 * _gelu_tanh_argument(x))
            du_dx = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)
            return cdf + x * (2 * cdf * (1 - cdf)) * du_dx
        return _normal_cdf(x) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


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
    Forward mode (jvp): ẏ_i = Σ_j y_i([i = j] − y_j) ẋ_j, i.e. ẏ = y ⊙ (ẋ − ⟨y, ẋ⟩), ⟨y, ẋ⟩ = Σ(y ⊙ ẋ) along
    ``dim`` (the same Jacobian, symmetric, applied to ẋ).
    """

    generate_vmap_rule = True

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

    @staticmethod
    def jvp(ctx, input_tangent, _):
        y = _in_opmath(_output_in_opmath(ctx, SoftmaxFunction, ctx.dim))
        tangent = _in_opmath(input_tangent)
        return (y * (tangent - (y * tangent).sum(ctx.dim, keepdim=True))).to(input_tangent.dtype)


class LogSoftmaxFunction(Function):
    """y_i = log softmax(x)_i = (x_i − m) − log Σ_k e^{x_k − m} along ``dim``, m = max_k x_k (stable as softmax).

    Backward: ∂y_i/∂x_j = [i = j] − softmax(x)_j, and softmax(x) = e^y, so
        ∂L/∂x = δ − e^y ⊙ Σ_i δ_i.
    Output and gradient are contiguous, as torch's.
    Forward mode (jvp): ẏ_i = Σ_j ([i = j] − softmax(x)_j) ẋ_j, i.e. ẏ = ẋ − ⟨e^y, ẋ⟩ along ``dim``.
    """

    generate_vmap_rule = True

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

    @staticmethod
    def jvp(ctx, input_tangent, _):
        y = _in_opmath(_output_in_opmath(ctx, LogSoftmaxFunction, ctx.dim))
        tangent = _in_opmath(input_tangent)
        return (tangent - (torch.exp(y) * tangent).sum(ctx.dim, keepdim=True)).to(input_tangent.dtype)


def _max_along(input, dim):
    """max_k x_k along dim (kept as a size-1 dim); 0 for an empty slice, where there is nothing to shift."""
    if input.numel() == 0:
        return input.new_zeros(())
    return input.amax(dim, keepdim=True)


# ------------------------------------------------------------------------------------------ piecewise activations
#
# The Functions below take ``inplace`` as torch's activations do. Where their backward needs x, an in-place call
# also takes ``input_copy``, x copied before it is overwritten (None when no gradient will be needed): torch's
# autograd saves such a copy too, so modifying the output in place before the backward is allowed, as in torch.
# leaky_relu_ and elu_ instead save y, as torch's do (their slope is a function of y), and modifying it raises.
# Each one's jvp is its backward's formula with ẋ for δ (``_times_slope``), written into ẋ for an in-place call.


def _saved_input(ctx, input, inplace, input_copy):
    """Mark an in-place call's input dirty and save x for the backward and the jvp: the input, or its copy when
    overwritten."""
    ctx.inplace = inplace
    if inplace:
        ctx.mark_dirty(input)
    _save(ctx, input_copy if inplace else input)


def _saved_output_if_inplace(ctx, input, output):
    """leaky_relu_'s and elu_'s saving, as torch's: in place, mark the input dirty and save y (their slope is then
    written through y, and modifying y before the backward raises); out of place, save x."""
    if ctx.inplace:
        ctx.mark_dirty(input)
    _save(ctx, output if ctx.inplace else input)


def _result(input, output, inplace):
    """``output`` (computed in opmath) rounded once to the input's dtype: written into the input for an in-place call
    (and the input returned, as torch's in-place ops do), else a new tensor laid out as torch's unary kernel's."""
    if not inplace:
        return _laid_out_as_elementwise(output.to(input.dtype), input)
    input.copy_(output)
    return input  # the input itself: torch.compile accepts mark_dirty only for an input the forward returns


def _gradient(grad_input, grad_output, saved, saved_first=False):
    """∂L/∂x (computed in opmath) rounded once to δ's dtype and laid out as by torch's backward kernel, an
    element-wise one over δ and the saved x or y (in that order, or the other with ``saved_first``)."""
    operands = (saved, grad_output) if saved_first else (grad_output, saved)
    return _laid_out_as_elementwise(grad_input.to(grad_output.dtype), *operands)


class HardtanhFunction(Function):
    """y = min(max(x, min_val), max_val), torch.clamp (NaN stays NaN); relu6 is hardtanh(x, 0, 6), as in torch.

    Backward: ∂y/∂x = 1 for min_val < x < max_val, 0 outside, and PyTorch's choice 0 at both bounds:
        ∂L/∂x = 0 where x ≤ min_val or x ≥ max_val, else δ   (a NaN x passes δ, as torch's scalar loop).
    A selection, so an infinite δ where x is clamped gives 0. The comparisons are made in opmath (float32 for
    float16/bfloat16), as torch's kernel compares with the bounds as floats. Any real dtype forward (integers
    clamp as integers); the backward only runs for floating point.
    Forward mode (jvp): ẏ = 0 where x ≤ min_val or x ≥ max_val, else ẋ.
    """

    @staticmethod
    def forward(input, min_val, max_val, inplace, input_copy):
        if not inplace:
            return torch.clamp(input, min_val, max_val, out=torch.empty_like(input))  # torch's: into empty_like(x)
        input.clamp_(min_val, max_val)
        return input  # the input itself: torch.compile accepts mark_dirty only for an input the forward returns

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.min_val, ctx.max_val, inplace, input_copy = inputs
        _saved_input(ctx, input, inplace, input_copy)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        grad_input = HardtanhFunction._times_slope(ctx, grad_output)
        return _laid_out_as_elementwise(grad_input, grad_output, input), None, None, None, None

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        return _tangent(ctx, input_tangent, HardtanhFunction._times_slope(ctx, input_tangent))

    @staticmethod
    def vmap(info, in_dims, *args):
        return elementwise_vmap(HardtanhFunction, in_dims, args, args[3])

    @staticmethod
    def _times_slope(ctx, vector):
        """v ⊙ f'(x), in opmath: δ ⊙ f'(x) for the backward, f'(x) ⊙ ẋ for the jvp."""
        (input,) = ctx.saved_tensors
        x = _in_opmath(input)
        return torch.where((x <= ctx.min_val) | (x >= ctx.max_val), 0.0, vector)


class LeakyReLUFunction(Function):
    """y = x for x > 0, s·x otherwise (s = negative_slope; NaN stays NaN, and −∞·0 is NaN as in torch).

    Backward: ∂y/∂x = 1 for x > 0 and s for x < 0, with PyTorch's choice s at x = 0:
        ∂L/∂x = δ where x > 0, else δ·s.
    In place, torch decides by y instead (y > 0 exactly where x > 0, for s ≥ 0) and saves y; for s < 0 that is
    wrong, and torch's backward refuses it with a RuntimeError, as this one does.
    Forward mode (jvp): ẏ = ẋ where x > 0 (in place: y > 0), else ẋ·s; refused in place for s < 0, as torch's.
    """

    @staticmethod
    def forward(input, negative_slope, inplace):
        x = _in_opmath(input)
        return _result(input, torch.where(x > 0, x, x * negative_slope), inplace)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.negative_slope, ctx.inplace = inputs
        _saved_output_if_inplace(ctx, input, output)

    @staticmethod
    def backward(ctx, grad_output):
        (saved,) = ctx.saved_tensors
        grad_input = LeakyReLUFunction._times_slope(ctx, _in_opmath(grad_output))
        return _gradient(grad_input, grad_output, saved, saved_first=True), None, None  # as torch's kernel

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        return _tangent(ctx, input_tangent, LeakyReLUFunction._times_slope(ctx, _in_opmath(input_tangent)))

    @staticmethod
    def vmap(info, in_dims, *args):
        return elementwise_vmap(LeakyReLUFunction, in_dims, args, args[2])

    @staticmethod
    def _times_slope(ctx, vector):
        """v ⊙ f'(x), in opmath: δ ⊙ f'(x) for the backward, f'(x) ⊙ ẋ for the jvp (torch's refusal of an
        in-place call with a negative slope in both, as its forward-mode formula calls the same backward)."""
        if ctx.inplace and ctx.negative_slope < 0:
            raise RuntimeError(
                "In-place leakyReLu backward calculation is triggered with a negative slope which is not supported. "
                "This is caused by calling in-place forward function with a negative slope, please call out-of-place "
                "version instead. File an issue at https://github.com/pytorch/pytorch if you do require supporting "
                "in-place leakRelu backward calculation with negative slope")
        (saved,) = ctx.saved_tensors
        return torch.where(_in_opmath(saved) > 0, vector, vector * ctx.negative_slope)


class ELUFunction(Function):
    """y = scale·x for x > 0, α·scale·(e^{x·is} − 1) for x ≤ 0 (is = input_scale; elu is α, 1, 1). Clevert et al.,
    "Fast and Accurate Deep Network Learning by Exponential Linear Units" (2015); scale and input_scale are the
    arguments of torch's elu_ (SELU's and CELU's forms). e^{x·is} − 1 by expm1 (no cancellation near 0).

    Backward: ∂y/∂x = scale for x > 0 and α·scale·is·e^{x·is} for x ≤ 0 (at x = 0 torch takes the second):
        ∂L/∂x = δ·is·α·scale·e^{x·is} where x ≤ 0, else δ·scale   (a NaN x gives δ·scale, as torch's scalar loop).
    e^{x·is} is formed of min(x, 0), equal where it is used, so that the unused branch never overflows: its
    infinity would turn into 0·∞ = NaN in the double backward. In place, torch saves y and writes the slope through
    it, α·scale·is·e^{x·is} = is·(y + α·scale) for y ≤ 0, refusing α < 0 in the backward; this one does the same.
    Forward mode (jvp): ẏ = y' ⊙ ẋ with the backward's y' (in place, through y; refused for α < 0 as torch's).
    """

    @staticmethod
    def forward(input, alpha, scale, input_scale, inplace):
        x = _in_opmath(input)
        output = torch.where(x <= 0, torch.expm1(x * input_scale) * (alpha * scale), x * scale)
        return _result(input, output, inplace)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.alpha, ctx.scale, ctx.input_scale, ctx.inplace = inputs
        _saved_output_if_inplace(ctx, input, output)

    @staticmethod
    def backward(ctx, grad_output):
        (saved,) = ctx.saved_tensors
        grad_input = ELUFunction._times_slope(ctx, _in_opmath(grad_output))
        return _gradient(grad_input, grad_output, saved), None, None, None, None

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        return _tangent(ctx, input_tangent, ELUFunction._times_slope(ctx, _in_opmath(input_tangent)))

    @staticmethod
    def vmap(info, in_dims, *args):
        return elementwise_vmap(ELUFunction, in_dims, args, args[4])

    @staticmethod
    def _times_slope(ctx, vector):
        """v ⊙ f'(x), in opmath: δ ⊙ f'(x) for the backward, f'(x) ⊙ ẋ for the jvp (refused in place for α < 0 in
        both, as torch's)."""
        if ctx.inplace and ctx.alpha < 0:
            raise RuntimeError(
                "In-place elu backward calculation is triggered with a negative slope which is not supported. "
                "This is caused by calling in-place forward function with a negative slope, please call out-of-place "
                "version instead.")
        (saved,) = ctx.saved_tensors
        x_or_y = _in_opmath(saved)
        negative_coefficient = ctx.alpha * ctx.scale
        if ctx.inplace:
            negative_part = vector * ctx.input_scale * (x_or_y + negative_coefficient)
        else:
            exp = torch.exp(x_or_y.clamp(max=0) * ctx.input_scale)
            negative_part = vector * (ctx.input_scale * negative_coefficient) * exp
        return torch.where(x_or_y <= 0, negative_part, vector * ctx.scale)


class _SlopeActivation(Function):
    """The plumbing shared by the activations y = f(x) called as forward(input, inplace, input_copy) whose backward
    needs only x (hardsigmoid, hardswish, silu, mish). A subclass writes its forward and ``_times_slope(ctx, v)``,
    v ⊙ f'(x) in opmath from the saved x, and gets:
        setup_context   x saved (for an in-place call its copy, and the input marked dirty);
        backward        ∂L/∂x = δ ⊙ f'(x), rounded to δ's dtype and laid out as torch's backward kernel's;
        jvp             ẏ = f'(x) ⊙ ẋ (for an in-place call written into ẋ);
        vmap            the element-wise rule (``elementwise_vmap``).
    """

    def __init_subclass__(cls, **kwargs):
        # the rules call the subclass's _times_slope, so each subclass gets its own (Function wraps them next)
        overridden = {"backward", "jvp", "vmap"} & set(vars(cls))
        if overridden or "_times_slope" not in vars(cls):
            raise TypeError(f"{cls.__name__}: a _SlopeActivation defines _times_slope and gets its backward, jvp "
                            f"and vmap (it defines {sorted(overridden) or 'no _times_slope'})")

        def backward(ctx, grad_output):
            (input,) = ctx.saved_tensors
            return _gradient(cls._times_slope(ctx, grad_output), grad_output, input), None, None

        def jvp(ctx, input_tangent, *_):
            return _tangent(ctx, input_tangent, cls._times_slope(ctx, input_tangent))

        def vmap(info, in_dims, *args):
            return elementwise_vmap(cls, in_dims, args, args[1])

        for rule in (backward, jvp, vmap):
            rule.__qualname__ = f"{cls.__qualname__}.{rule.__name__}"  # tracebacks name the class
            setattr(cls, rule.__name__, staticmethod(rule))
        super().__init_subclass__(**kwargs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, inplace, input_copy = inputs
        _saved_input(ctx, input, inplace, input_copy)


class HardsigmoidFunction(_SlopeActivation):
    """y = min(max(x + 3, 0), 6) / 6: 0 for x ≤ −3, 1 for x ≥ 3, x/6 + 1/2 between (NaN stays NaN). Howard et al.,
    "Searching for MobileNetV3" (2019).

    Backward: ∂y/∂x = 1/6 for −3 < x < 3, 0 outside, and PyTorch's choice 0 at ±3 (and for NaN):
        ∂L/∂x = δ/6 where −3 < x < 3, else 0.
    (torch's float64 kernel multiplies by float32's 1/6, 0.16666667163…: its float64 gradient has float32's
    precision. Here 1/6 is exact in every dtype.)
    Forward mode (jvp): ẏ = ẋ/6 where −3 < x < 3, else 0.
    """

    @staticmethod
    def forward(input, inplace, input_copy):
        x = _in_opmath(input)
        return _result(input, (x + 3).clamp_(0, 6).div_(6), inplace)

    @staticmethod
    def _times_slope(ctx, vector):
        """v ⊙ f'(x), in opmath: δ ⊙ f'(x) for the backward, f'(x) ⊙ ẋ for the jvp."""
        (input,) = ctx.saved_tensors
        x = _in_opmath(input)
        return torch.where((x > -3) & (x < 3), _in_opmath(vector) / 6, 0.0)


class HardswishFunction(_SlopeActivation):
    """y = x · min(max(x + 3, 0), 6) / 6: 0 for x ≤ −3, x for x ≥ 3, x(x + 3)/6 between (torch's order of
    operations: (x · clamp) / 6, so −∞ gives −∞·0 = NaN as in torch). Howard et al., "Searching for MobileNetV3".

    Backward: ∂y/∂x = 0 for x < −3, (2x + 3)/6 = x/3 + 1/2 for −3 < x < 3, 1 for x > 3; at the kinks PyTorch
    takes the outer pieces, 0 at x = −3 and 1 at x = 3 (where the middle piece's slope is −1/2 and 3/2):
        ∂L/∂x = 0 where x ≤ −3, δ·(x/3 + 1/2) where −3 < x < 3, δ where x ≥ 3   (a NaN x passes δ).
    Forward mode (jvp): ẏ = the same piecewise slope times ẋ.
    """

    @staticmethod
    def forward(input, inplace, input_copy):
        x = _in_opmath(input)
        return _result(input, (x * (x + 3).clamp_(0, 6)).div_(6), inplace)

    @staticmethod
    def _times_slope(ctx, vector):
        """v ⊙ f'(x), in opmath: δ ⊙ f'(x) for the backward, f'(x) ⊙ ẋ for the jvp."""
        (input,) = ctx.saved_tensors
        x, vector = _in_opmath(input), _in_opmath(vector)
        return torch.where(x <= -3, 0.0, torch.where(x < 3, vector * (x / 3 + 0.5), vector))


# ------------------------------------------------------------------------------------------- smooth activations


class SiLUFunction(_SlopeActivation):
    """y = x·σ(x) = x / (1 + e^{−x}) (SiLU, or swish: Hendrycks & Gimpel, "Gaussian Error Linear Units" (2016);
    Elfwing et al. (2017); Ramachandran et al., "Searching for Activation Functions" (2017)). Written as torch's
    kernel, a division: x = −∞ gives −∞/∞ = NaN as in torch. Complex x too (forward only, as in torch).

    Backward, by the product rule with σ' = σ(1 − σ):
        y' = σ(x) + x·σ(x)(1 − σ(x)) = σ(x)·(1 + x(1 − σ(x))),   ∂L/∂x = (δ·σ(x))·(1 + x(1 − σ(x)))
    (torch's order of products), σ by ``SigmoidFunction`` so that the double backward runs through it.
    Forward mode (jvp): ẏ = (ẋ·σ(x))·(1 + x(1 − σ(x))).
    """

    @staticmethod
    def forward(input, inplace, input_copy):
        x = _in_opmath(input)
        return _result(input, torch.div(x, torch.exp(-x).add_(1)), inplace)

    @staticmethod
    def _times_slope(ctx, vector):
        """v ⊙ f'(x), in opmath: δ ⊙ f'(x) for the backward, f'(x) ⊙ ẋ for the jvp."""
        (input,) = ctx.saved_tensors
        x = _in_opmath(input)
        sigmoid = SigmoidFunction.apply(x)
        return _in_opmath(vector) * sigmoid * (1 + x * (1 - sigmoid))


class MishFunction(_SlopeActivation):
    """y = x·tanh(softplus(x)) = x·tanh(log(1 + eˣ)) (Misra, "Mish: A Self Regularized Non-Monotonic Activation
    Function" (2019)); x = −∞ gives −∞·0 = NaN, as in torch.

    Backward, by the product and chain rules with softplus' = σ and tanh' = 1 − tanh², t = tanh(softplus(x)):
        y' = t + x·σ(x)·(1 − t²),   ∂L/∂x = δ·y'.
    t and σ come from ``SoftplusFunction`` (β = 1, threshold 20), ``TanhFunction`` and ``SigmoidFunction``, so that
    the double backward runs through them; log(1 + eˣ) written out would give ∞/∞ = NaN there once eˣ overflows,
    and above 20 the softplus' linear branch changes tanh by less than an ulp.
    Forward mode (jvp): ẏ = y' ⊙ ẋ.
    """

    @staticmethod
    def forward(input, inplace, input_copy):
        x = _in_opmath(input)
        return _result(input, x * torch.tanh(torch.log1p(torch.exp(x))), inplace)

    @staticmethod
    def _times_slope(ctx, vector):
        """v ⊙ f'(x), in opmath: δ ⊙ f'(x) for the backward, f'(x) ⊙ ẋ for the jvp."""
        (input,) = ctx.saved_tensors
        x = _in_opmath(input)
        tanh_softplus = TanhFunction.apply(SoftplusFunction.apply(x, 1.0, 20.0))
        slope = tanh_softplus + x * SigmoidFunction.apply(x) * (1 - tanh_softplus * tanh_softplus)
        return _in_opmath(vector) * slope


class SoftplusFunction(Function):
    """y = log(1 + e^{βx}) / β, and y = x where βx > threshold (there the two differ by less than e^{−threshold}/β,
    and e^{βx} could overflow). Dugas et al., "Incorporating Second-Order Functional Knowledge for Better Option
    Pricing" (2001).

    Backward: d/dx log(1 + e^{βx})/β = e^{βx}/(1 + e^{βx}) = σ(βx), and 1 on the linear branch:
        ∂L/∂x = δ where βx > threshold, else δ·σ(βx)   (at βx = threshold, σ, as torch's).
    σ by ``SigmoidFunction`` (the double backward runs through it: β·σ(1 − σ)). torch's kernel writes σ as
    z/(z + 1), z = e^{βx}, which is ∞/∞ = NaN once z overflows below the threshold (βx > 88 in float32 with a
    threshold above that); σ(βx) = 1/(1 + e^{−βx}) gives its limit δ there. (torch's double backward also takes 0
    at βx = threshold exactly, its mask being βx < threshold; the σ branch's β·σ(1 − σ) here.)
    Forward mode (jvp): ẏ = ẋ where βx > threshold, else ẋ·σ(βx).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, beta, threshold):
        x = _in_opmath(input)
        scaled = x * beta
        return _result(input, torch.where(scaled > threshold, x, torch.log1p(torch.exp(scaled)).div_(beta)), False)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, ctx.beta, ctx.threshold = inputs
        _save(ctx, input)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        return _gradient(SoftplusFunction._times_slope(ctx, grad_output), grad_output, input), None, None

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        return _tangent(ctx, input_tangent, SoftplusFunction._times_slope(ctx, input_tangent))

    @staticmethod
    def _times_slope(ctx, vector):
        """v ⊙ f'(x), in opmath: δ ⊙ f'(x) for the backward, f'(x) ⊙ ẋ for the jvp."""
        (input,) = ctx.saved_tensors
        scaled, vector = _in_opmath(input) * ctx.beta, _in_opmath(vector)
        return torch.where(scaled > ctx.threshold, vector, vector * SigmoidFunction.apply(scaled))
