"""Losses by hand: cross-entropy fused with its own log-softmax, negative log-likelihood, mean squared error.

Every loss follows PyTorch's own formulas operation for operation, products included (aten/src/ATen/native/
LossNLL.cpp, LossNLL2d.cpp, Loss.cpp; torch.nn.functional.mse_loss with a weight), so that values, NaN positions and
infinities are torch's (docs/derivations.md, "Losses"):

- class-index targets t_i: the target's log-probability is *picked* (a gather; the backward puts the gradient back
  with a scatter), never multiplied by a one-hot row, and an ignored sample (t_i = ignore_index) gives an exact 0
  whatever its inputs hold:  ℓ_i = −x[i, t_i] · w[t_i]  (``NLLLossFunction``; ``CrossEntropyFunction`` with
  x = log softmax(z), plus torch's label-smoothing term, a product with every class, when ε > 0);
- class-probability targets: a product with every class, as in torch, so 0 · (−∞) is NaN there:
  ℓ_i = −Σ_c log p[i, c] · q[i, c]  (``CrossEntropyProbabilitiesFunction``);
- mean squared error: ℓ = (x − y)² (``MSELossFunction``), or (x − y)² · w (``WeightedMSELossFunction``).

Reduction: 'none' → ℓ, 'sum' → Σ_i ℓ_i, 'mean' → Σ_i ℓ_i / D. float16/bfloat16 are computed in float32 and rounded
once at the end, forward and backward. Each backward is made of differentiable tensor operations on saved tensors
(the probabilities are recomputed from the saved logits), so double backward works.

Forward mode (jvp): every loss is linear in its log-probabilities (or, for MSE, a square), so its tangent is the loss's
own formula applied to the tangents, with softmax's jvp for the log-probabilities of logits z:
(log p)˙ = ż − ⟨p, ż⟩ over the classes (docs/derivations.md, "Losses").

vmap: every Function here has ``generate_vmap_rule`` (its forward, backward and jvp are torch operations that vmap
batches, and the class-index target's tensors are saved with ``save_for_backward``, never kept on ctx, so that a
batched target's slices reach each rule). Batched targets work: the Python range check of class indices reads
values (``.item()``), which vmap refuses, so under vmap the gather that picks the targets' log-probabilities checks
them instead, raising the RuntimeError native nll_loss and cross_entropy raise under vmap ("index 5 is out of bounds
for dimension ...") rather than the IndexError they raise outside it.
"""
import math
from typing import NamedTuple

import torch

from ._utils import (Function, is_vmapped, laid_out_like, opmath_dtype, require_floating,
                     scalar_type_name)


def log_softmax(logits, dim):
    """log p_c = (z_c − m) − log Σ_k exp(z_k − m), m = max_k z_k.

    Subtracting the maximum leaves the value unchanged but keeps every exp(z_k − m) in (0, 1]: no overflow for
    logits of ±1000. m is a constant shift (d log p / dm = 0), so it is detached rather than differentiated.
    """
    shifted = logits - _max_logit(logits, dim)
    return shifted - shifted.exp().sum(dim, keepdim=True).log()


def softmax(logits, dim):
    """p_c = exp(z_c − m) / Σ_k exp(z_k − m), m = max_k z_k detached, as in ``log_softmax``: exp(log p) without
    the log and the second exp (the same NaN and ±∞ positions: Σ_k lies in [1, C] unless a logit is NaN or ±∞)."""
    exps = (logits - _max_logit(logits, dim)).exp()
    return exps / exps.sum(dim, keepdim=True)


def _max_logit(logits, dim):
    """m = max_k z_k, detached, kept as a size-1 dim (0 for an empty dim, which has no maximum)."""
    if logits.shape[dim] == 0:
        return 0
    return logits.amax(dim, keepdim=True).detach()


def _per_class(weight, ndim):
    """The class weights (C,) shaped to broadcast over the class dim 1 of an ndim-dimensional (N, C, d1, ...)."""
    return weight.view(1, -1, *[1] * (ndim - 2))


def _reduce(losses, reduction, divisor):
    """'none' → ℓ, 'sum' → Σ ℓ, 'mean' → Σ ℓ / D (0 / 0 = NaN when nothing counts, as in torch)."""
    if reduction == "none":
        return losses
    total = losses.sum()
    return total / divisor if reduction == "mean" else total


def _loss_grad(grad_output, reduction, divisor):
    """G = dL/dℓ: g per sample ('none'), g ('sum'), g / D ('mean'); broadcasts against the per-sample losses."""
    return grad_output / divisor if reduction == "mean" else grad_output


# ------------------------------------------------------------------------------------------ class-index targets


class ClassIndexTarget(NamedTuple):
    """A checked class-index target as the Functions use it (nothing in it is differentiable).

    index (N, d1, ...) int64: t_i for kept samples, 0 (a valid class, never used) for ignored ones; ignored: t_i =
    ignore_index; weight (C,) and sample_weight = w[t_i], in the compute dtype (None without class weights);
    divisor: D of reduction='mean', torch's total weight Σ_{kept i} w[t_i] (or the number of kept samples), None for
    the other reductions.
    """

    index: torch.Tensor
    ignored: torch.Tensor
    weight: torch.Tensor
    sample_weight: torch.Tensor
    divisor: torch.Tensor

    @classmethod
    def prepare(cls, target, ignore_index, weight, num_classes, dtype, reduction):
        """From class indices of any checked dtype (int64, or uint8 whose 156 is not −100: compared as integers);
        raises torch's IndexError for a kept target outside [0, C). A vmapped target is not read here (vmap refuses
        ``.item()``): the forward's gather refuses an index outside [0, C) then, as native's under vmap."""
        target = target.long().contiguous()  # the per-sample losses come out contiguous, as torch's
        ignored = target == ignore_index
        index = target.masked_fill(ignored, 0)
        if index.numel() and not is_vmapped(index):
            low, high = torch.aminmax(index)
            if low.item() < 0 or high.item() >= num_classes:  # or C = 0, where the 0 of ignored samples is too
                out_of_bounds = ~ignored & ((target < 0) | (target >= num_classes))
                if out_of_bounds.any():
                    raise IndexError(f"Target {target[out_of_bounds][0].item()} is out of bounds.")
        weight = None if weight is None else weight.reshape(-1).to(dtype)
        sample_weight = None if weight is None else weight[index]
        divisor = None
        if reduction == "mean":
            divisor = index.numel() - ignored.sum() if weight is None else sample_weight.masked_fill(ignored, 0).sum()
        return cls(index, ignored, weight, sample_weight, divisor)


def _save_target(ctx, target, *tensors):
    """Save ``tensors`` and the target's for backward and jvp (see ``_saved_target``). On ctx itself a vmapped
    target's tensors would outlive their vmap level; saved, vmap's generated rules give each rule its slices."""
    ctx.save_for_backward(*tensors, *target)
    ctx.save_for_forward(*tensors, *target)


def _saved_target(ctx):
    """(the other saved tensors..., the ``ClassIndexTarget``) as ``_save_target`` saved them."""
    saved = ctx.saved_tensors
    count = len(saved) - len(ClassIndexTarget._fields)
    return (*saved[:count], ClassIndexTarget(*saved[count:]))


def pick_classes(values, index):
    """values[i, index_i] for every sample i: (N, C, d1, ...) and (N, d1, ...) → (N, d1, ...), a gather."""
    if values.shape[1] == 0:  # no class: every sample is ignored (any other target was refused as out of bounds)
        return values.new_zeros(index.shape)
    return values.gather(1, index.unsqueeze(1)).squeeze(1)


def place_at_classes(per_sample, index, num_classes):
    """The adjoint of ``pick_classes``: an (N, C, d1, ...) tensor of zeros holding per_sample[i] at class index_i
    (a scatter, so nothing is multiplied by the zeros)."""
    zeros = per_sample.new_zeros((per_sample.shape[0], num_classes, *per_sample.shape[1:]))
    return zeros.scatter(1, index.unsqueeze(1), per_sample.unsqueeze(1)) if num_classes else zeros


def _nll_losses(log_probs, target):
    """ℓ_i = −x[i, t_i] · w[t_i] for kept samples, an exact 0 for ignored ones (torch's nll_loss kernels)."""
    picked = -pick_classes(log_probs, target.index)
    return (picked if target.sample_weight is None else picked * target.sample_weight).masked_fill(target.ignored, 0)


def _nll_loss(log_probs, target, reduction):
    """L = R(ℓ), ℓ_i = −x[i, t_i] · w[t_i] (kept), 0 (ignored): linear in x, so also L̇ from ẋ."""
    return _reduce(_nll_losses(log_probs, target), reduction, target.divisor)


def _nll_grad(grad_output, reduction, target):
    """dL/dx[i, t_i] = −G_i · w[t_i] for kept samples, 0 for ignored ones (torch's nll_loss_backward, products
    included: for 'mean' with D = 0, −g / D is ±∞ and a kept sample's w · (−g / D) is NaN, as in torch)."""
    grad = -_loss_grad(grad_output, reduction, target.divisor)
    if target.sample_weight is not None:
        grad = grad * target.sample_weight
    return torch.where(target.ignored, 0, grad)


def _smoothing_share(label_smoothing, num_classes):
    """ε / C, torch's weight of the smoothing term (a double division: ∞ for C = 0)."""
    return label_smoothing / num_classes if num_classes else math.inf


class NLLLossFunction(Function):
    """ℓ_i = −x[i, t_i] · w[t_i] for kept samples (x: log-probabilities (N, C, d1, ...), t_i ≠ ignore_index), 0 for
    ignored ones, then reduced; 'mean' divides by D = Σ_{kept i} w[t_i] (torch's weighted mean).

    Linear in x. Backward (torch's nll_loss_backward), with G_i = dL/dℓ_i (g, or g / D for 'mean'):
        dL/dx[i, c] = −G_i · w[t_i]  at c = t_i of a kept sample,  0 everywhere else (scattered, not multiplied)

    Forward mode (jvp), linear:  ℓ̇_i = −ẋ[i, t_i] · w[t_i] for kept samples, 0 for ignored ones;  L̇ = R(ℓ̇)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, reduction):
        return _nll_loss(input.to(opmath_dtype(input.dtype)), target, reduction).to(input.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, ctx.reduction = inputs
        ctx.num_classes, ctx.dtype = input.shape[1], input.dtype
        _save_target(ctx, target)

    @staticmethod
    def jvp(ctx, input_tangent, _target, _reduction):
        (target,) = _saved_target(ctx)
        return _nll_loss(input_tangent.to(opmath_dtype(ctx.dtype)), target, ctx.reduction).to(ctx.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (target,) = _saved_target(ctx)
        grad = _nll_grad(grad_output.to(opmath_dtype(ctx.dtype)), ctx.reduction, target)
        return place_at_classes(grad, target.index, ctx.num_classes).to(ctx.dtype), None, None


def _cross_entropy(log_probs, target, reduction, label_smoothing):
    """L = (1 − ε) · R(ℓ) + R(s) · ε / C from log-probabilities (N, C, d1, ...) (``CrossEntropyFunction``): linear in
    them, so also L̇ from their tangent."""
    loss = _nll_loss(log_probs, target, reduction)
    if label_smoothing > 0:
        smooth = -(log_probs if target.weight is None else log_probs * _per_class(target.weight, log_probs.dim()))
        smooth = _reduce(smooth.sum(1).masked_fill(target.ignored, 0), reduction, target.divisor)
        loss = (1 - label_smoothing) * loss + smooth * _smoothing_share(label_smoothing, log_probs.shape[1])
    return loss


class CrossEntropyFunction(Function):
    """Cross-entropy of logits z (N, C, d1, ...) with class indices, fused with its log-softmax: torch's
    log_softmax → nll_loss and, for label smoothing ε > 0, its smoothing term, each reduced, then mixed:

        L = R(ℓ)                                  ℓ_i = −log p[i, t_i] · w[t_i]           (kept; 0 if ignored)
        L = (1 − ε) · R(ℓ) + R(s) · ε / C         s_i = −Σ_c log p[i, c] · w_c            (kept; 0 if ignored)

    with R the reduction ('mean': Σ / D, D = Σ_{kept i} w[t_i]) and p = softmax(z) over the classes.

    Backward, torch's chain: the gradient reaching log p, with G = dL/dℓ (g · (1 − ε), / D for 'mean') and
    S = dL/ds (g · ε / C, / D for 'mean'), both 0 for ignored samples, is
        γ[i, c] = −G_i · w[t_i] · [c = t_i]  (scattered)  −  S_i · w_c
    and, since d log p_k / dz_c = [k = c] − p_c,   dL/dz[i, c] = γ[i, c] − p[i, c] · Σ_k γ[i, k]
    (= G_i · w[t_i] · (p[i, c] − [c = t_i]) without smoothing: softmax minus the one-hot target).

    Forward mode (jvp): L is linear in log p, and softmax's jvp gives (log p)˙[i, c] = ż[i, c] − Σ_k p[i, k] · ż[i, k],
    so L̇ is the formula above with log p replaced by (log p)˙:
        L̇ = (1 − ε) · R(ℓ̇) + R(ṡ) · ε / C,   ℓ̇_i = −(log p)˙[i, t_i] · w[t_i],   ṡ_i = −Σ_c (log p)˙[i, c] · w_c
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, target, reduction, label_smoothing):
        log_probs = log_softmax(logits.contiguous().to(opmath_dtype(logits.dtype)), 1)
        return _cross_entropy(log_probs, target, reduction, label_smoothing).to(logits.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, ctx.reduction, ctx.label_smoothing = inputs
        _save_target(ctx, target, logits)

    @staticmethod
    def jvp(ctx, logits_tangent, _target, _reduction, _label_smoothing):
        logits, target = _saved_target(ctx)
        probs = softmax(logits.contiguous().to(opmath_dtype(logits.dtype)), 1)
        tangent = logits_tangent.to(probs.dtype)
        log_probs_tangent = tangent - (probs * tangent).sum(1, keepdim=True)
        return _cross_entropy(log_probs_tangent, target, ctx.reduction, ctx.label_smoothing).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        logits, target = _saved_target(ctx)
        reduction, label_smoothing = ctx.reduction, ctx.label_smoothing
        probs = softmax(logits.contiguous().to(opmath_dtype(logits.dtype)), 1)
        grad_output = grad_output.to(probs.dtype)
        nll_grad = _nll_grad(grad_output * (1 - label_smoothing) if label_smoothing > 0 else grad_output,
                             reduction, target)
        grad_log_probs = place_at_classes(nll_grad, target.index, logits.shape[1])  # γ without smoothing
        grad_sum = nll_grad.unsqueeze(1)  # Σ_k γ[i, k]: one term per sample
        if label_smoothing > 0:
            smooth_grad = _loss_grad(grad_output * _smoothing_share(label_smoothing, logits.shape[1]), reduction,
                                     target.divisor)
            smooth_grad = -torch.where(target.ignored, 0, smooth_grad).unsqueeze(1)  # −S_i
            grad_log_probs = grad_log_probs + (smooth_grad.expand_as(probs) if target.weight is None else
                                               smooth_grad * _per_class(target.weight, logits.dim()))
            grad_sum = grad_log_probs.sum(1, keepdim=True)
        grad_logits = grad_log_probs - probs * grad_sum
        return grad_logits.to(logits.dtype), None, None, None


# ---------------------------------------------------------------------------------- class-probability targets


def class_probability_weights(target, weight, label_smoothing, dtype):
    """q[i, c] = ((1 − ε) · P[i, c] + ε / C) · w_c for a target P (N, C, d1, ...), in the compute dtype of the
    loss's dtype ``dtype``, by ordinary tensor operations (the target and the weights get their gradients through
    q, as in torch).

    torch smooths the target in the target's own dtype; where that is narrower than ``dtype``, so do we (the loss
    then carries the same roundings), else the smoothing is computed in the compute dtype.
    """
    compute = opmath_dtype(dtype)
    smoothed = target if target.dtype != dtype else target.to(compute)
    if label_smoothing > 0:
        smoothed = smoothed * (1 - label_smoothing) + _smoothing_share(label_smoothing, target.shape[1])
    target_weights = smoothed.to(compute)
    return target_weights if weight is None else target_weights * _per_class(weight.to(compute), target.dim())


def _log_probs_as_torch(logits, dtype):
    """log softmax(z) over dim 1 in the compute dtype of ``dtype``, contiguous: computed in z's compute dtype, and
    rounded to z's dtype first where that is narrower than ``dtype`` (torch's log-probabilities have z's dtype).
    Integer logits are empty (torch refuses the others) and taken as ``dtype``."""
    own = logits.dtype if logits.is_floating_point() else dtype
    log_probs = log_softmax(logits.contiguous().to(opmath_dtype(own)), 1)
    if own != dtype:
        log_probs = log_probs.to(own)
    return log_probs.to(opmath_dtype(dtype))


def _samples(logits):
    """The number of samples N · d1 · ..., the divisor of torch's 'mean' for probabilities (0 when there is no
    element at all, so that the mean is NaN, as torch makes it)."""
    return logits.numel() // logits.shape[1] if logits.numel() else 0


class CrossEntropyProbabilitiesFunction(Function):
    """Cross-entropy of logits z (N, C, d1, ...) with a target of class probabilities folded into q (see
    ``class_probability_weights``): ℓ_i = −Σ_c log p[i, c] · q[i, c], p = softmax(z), then reduced, 'mean' by the
    number of samples N · d1 · ... (NaN when there is none). torch's cross_entropy_loss_prob_target: a product for
    every class, so a class of probability 0 and log-probability −∞ gives 0 · (−∞) = NaN, as in torch.

    Backward, with G_i = dL/dℓ_i (g, or g / (N · d1 · ...) for 'mean'):
        γ[i, c] = −G_i · q[i, c],   dL/dz[i, c] = γ[i, c] − p[i, c] · Σ_k γ[i, k],   dL/dq[i, c] = −G_i · log p[i, c]

    Forward mode (jvp), with softmax's (log p)˙[i, c] = ż[i, c] − Σ_k p[i, k] · ż[i, k]:
        ℓ̇_i = −Σ_c ((log p)˙[i, c] · q[i, c] + log p[i, c] · q̇[i, c]),   L̇ = R(ℓ̇)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, target_weights, reduction, dtype):
        losses = -(_log_probs_as_torch(logits, dtype) * target_weights).sum(1)
        return _reduce(losses, reduction, _samples(logits)).to(dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target_weights, ctx.reduction, ctx.dtype = inputs
        ctx.save_for_backward(logits, target_weights)
        ctx.save_for_forward(logits, target_weights)

    @staticmethod
    def jvp(ctx, logits_tangent, target_weights_tangent, _reduction, _dtype):
        logits, target_weights = ctx.saved_tensors
        log_probs = _log_probs_as_torch(logits, ctx.dtype)
        terms = []
        if logits_tangent is not None:
            tangent = logits_tangent.to(log_probs.dtype)
            log_probs_tangent = tangent - (log_probs.exp() * tangent).sum(1, keepdim=True)
            terms.append(log_probs_tangent * target_weights)
        if target_weights_tangent is not None:
            terms.append(log_probs * target_weights_tangent.to(log_probs.dtype))
        losses_tangent = -sum(terms[1:], terms[0]).sum(1)
        return _reduce(losses_tangent, ctx.reduction, _samples(logits)).to(ctx.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        logits, target_weights = ctx.saved_tensors
        log_probs = _log_probs_as_torch(logits, ctx.dtype)
        grad_losses = -_loss_grad(grad_output.to(log_probs.dtype), ctx.reduction, _samples(logits))
        if ctx.reduction == "none":
            grad_losses = grad_losses.unsqueeze(1)
        grad_logits = grad_target_weights = None
        if ctx.needs_input_grad[0]:
            grad_log_probs = grad_losses * target_weights
            grad_logits = grad_log_probs - log_probs.exp() * grad_log_probs.sum(1, keepdim=True)
            grad_logits = grad_logits.contiguous().to(logits.dtype)  # contiguous as torch's, whatever q's layout
        if ctx.needs_input_grad[1]:
            grad_target_weights = grad_losses * log_probs
        return grad_logits, grad_target_weights, None, None


# ------------------------------------------------------------------------------------------ mean squared error


class MSELossFunction(Function):
    """ℓ = e · e elementwise, e = x − y (torch's mse_loss kernel), then 'none' → ℓ, 'sum' → Σ ℓ, 'mean' → Σ ℓ / n
    (n the number of elements; NaN when there is none). x and y come broadcast to one shape, in the compute dtype.

    Backward (torch's mse_loss_backward), with g = dL/dL and ν = 2/n for 'mean', else 2:
        dL/dx = (ν · e) · g,   dL/dy = −dL/dx        (contiguous, as torch's)

    Forward mode (jvp):  ℓ̇ = 2e ⊙ (ẋ − ẏ),  L̇ = R(ℓ̇)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, reduction, dtype):
        error = input - target
        return _reduce(error * error, reduction, error.numel()).to(dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, ctx.reduction, ctx.dtype = inputs
        ctx.save_for_backward(input, target)
        ctx.save_for_forward(input, target)

    @staticmethod
    def jvp(ctx, input_tangent, target_tangent, _reduction, _dtype):
        input, target = ctx.saved_tensors
        error = input - target
        error_tangent = input_tangent if target_tangent is None else (
            -target_tangent if input_tangent is None else input_tangent - target_tangent)
        return _reduce(2 * error * error_tangent, ctx.reduction, error.numel()).to(ctx.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        input, target = ctx.saved_tensors
        numel = input.numel()
        norm = 2 / numel if ctx.reduction == "mean" and numel else 2  # an empty input has an empty gradient
        grad_input = norm * (input - target) * grad_output.to(input.dtype)
        grad_input = laid_out_like(grad_input, grad_input, torch.contiguous_format, grad_input.dtype)
        return (grad_input if ctx.needs_input_grad[0] else None, -grad_input if ctx.needs_input_grad[1] else None,
                None, None)


class WeightedMSELossFunction(Function):
    """ℓ = (x − y)² · w elementwise (torch's weighted MSE, written in Python in torch.nn.functional), then 'none' →
    ℓ, 'sum' → Σ ℓ, 'mean' → Σ ℓ / D with D = Σ w over the weight as given (an input here, so that its gradient
    reaches w). x, y, w come broadcast to one shape, in the compute dtype (integers: as they are).

    Backward as torch's autograd of that formula, products in its order, with G = dL/dℓ (g, or g / D̄ for 'mean'),
    e = x − y and PyTorch's conjugate convention for complex tensors (z̄ the conjugate):
        dL/dx = (G · w̄) · (2e)‾,   dL/dy = −dL/dx,   dL/dw = G · (e²)‾,   dL/dD = −g · ((Σℓ / D) / D)‾

    Forward mode (jvp), holomorphic in every operand (no conjugates):
        ℓ̇ = 2e ⊙ (ẋ − ẏ) ⊙ w + e² ⊙ ẇ,   'mean': L̇ = Σℓ̇ / D − (Σℓ / D) · Ḋ / D,   else L̇ = R(ℓ̇)
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, weight, reduction, divisor, dtype):
        weighted = (input - target) ** 2 * weight
        if reduction == "none":
            return weighted.to(dtype)
        total = weighted.sum()
        return (total / divisor if reduction == "mean" else total).to(dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, ctx.reduction, divisor, ctx.dtype = inputs
        ctx.save_for_backward(input, target, weight, divisor)
        ctx.save_for_forward(input, target, weight, divisor)

    @staticmethod
    def jvp(ctx, input_tangent, target_tangent, weight_tangent, _reduction, divisor_tangent, _dtype):
        input, target, weight, divisor = ctx.saved_tensors
        error = input - target
        terms = []
        for tangent, sign in ((input_tangent, 1), (target_tangent, -1)):
            if tangent is not None:
                terms.append(sign * 2 * error * tangent * weight)
        if weight_tangent is not None:
            terms.append(error**2 * weight_tangent)
        weighted_tangent = sum(terms[1:], terms[0]) if terms else torch.zeros_like(error * weight)
        if ctx.reduction == "none":
            return weighted_tangent.to(ctx.dtype)
        total_tangent = weighted_tangent.sum()
        if ctx.reduction == "sum":
            return total_tangent.to(ctx.dtype)
        output_tangent = total_tangent / divisor
        if divisor_tangent is not None:
            output_tangent = output_tangent - ((error**2 * weight).sum() / divisor) * divisor_tangent / divisor
        return output_tangent.to(ctx.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        input, target, weight, divisor = ctx.saved_tensors
        grad_output = grad_output.to(input.dtype)
        error = input - target
        grad_losses = grad_output / divisor.conj() if ctx.reduction == "mean" else grad_output
        needs_input, needs_target, needs_weight, _, needs_divisor, _ = ctx.needs_input_grad
        grad_input = grad_target = grad_weight = grad_divisor = None
        if needs_input or needs_target:
            grad_input = (grad_losses * weight.conj() * (2 * error).conj()).to(input.dtype)
            grad_target = -grad_input if needs_target else None
        if needs_weight:
            grad_weight = (grad_losses * (error**2).conj()).to(weight.dtype)
        if needs_divisor:
            total = ((error**2) * weight).sum()
            grad_divisor = (-grad_output * ((total / divisor) / divisor).conj()).to(divisor.dtype)
        return grad_input if needs_input else None, grad_target, grad_weight, None, grad_divisor, None


def weighted_mse_dtypes(input, target, weight, reduction):
    """(the result's dtype, the compute dtype of (x − y)² · w, None for integers) of torch's weighted MSE: its type
    promotion of (x − y)² · w and of the mean Σ / Σw (a 0-d weight does not widen a tensor of its own category;
    integers divide into floating point), worked out on meta tensors. x and y are broadcast. A bool operand of the
    subtraction gets torch's error."""
    if input.dtype == target.dtype == torch.bool:
        raise NotImplementedError(
            "Subtraction, the `-` operator, with two bool tensors is not supported. "
            "Use the `^` or `logical_xor()` operator instead."
        )
    if torch.bool in (input.dtype, target.dtype):
        raise NotImplementedError(
            "Subtraction, the `-` operator, with a bool tensor is not supported. "
            "If you are trying to invert a mask, use the `~` or `logical_not()` operator instead."
        )
    x, y, w = (tensor.to("meta") for tensor in (input, target, weight))
    weighted = (x - y) ** 2 * w
    result = {"none": weighted, "sum": weighted.sum()}.get(reduction, weighted.sum() / w.sum())
    computes = weighted.is_floating_point() or weighted.is_complex()
    return result.dtype, opmath_dtype(weighted.dtype) if computes else None


# Argument checks with PyTorch's errors, in the order PyTorch makes them (messages and exception classes as
# torch.nn.functional.cross_entropy / nll_loss raise them).

def check_label_smoothing(label_smoothing):
    """Only a positive ε smooths (torch ignores ε ≤ 0); it must not exceed 1."""
    if label_smoothing > 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing:g}")


def check_probability_targets(input, target, weight, ignore_index, label_smoothing):
    """cross_entropy with a target of the input's shape: class probabilities, class dim 1 (0 when unbatched)."""
    if not target.is_floating_point():
        raise RuntimeError(
            f"Expected floating point type for target with class probabilities, got {scalar_type_name(target.dtype)}"
        )
    if ignore_index >= 0:
        raise RuntimeError("ignore_index is not supported for floating point target")
    if input.dim() == 0:
        raise IndexError("Dimension specified as 1 but tensor has no dimensions")
    num_classes = input.shape[0 if input.dim() == 1 else 1]
    if weight is not None and (weight.dim() != 1 or weight.numel() != num_classes):
        raise RuntimeError(
            f"cross_entropy: weight tensor should be defined either for all {num_classes} classes or no classes "
            f"but got weight tensor of shape: {list(weight.shape)}"
        )
    if input.numel():  # torch's log_softmax returns an empty integer input as it is
        require_floating(input.dtype, "log_softmax_lastdim_kernel_impl")
    check_label_smoothing(label_smoothing)


def check_class_index_targets(input, target, weight):
    """nll_loss's checks on class-index targets, in torch's order: (C,) with () or (1,), (N, C) with (N,),
    (N, C, d1, ...) with (N, d1, ...); target int64 (or uint8 for inputs (C,) and (N, C)); weight (C,) of the
    input's dtype, never requiring grad. Targets out of [0, C) are refused by ``ClassIndexTarget.prepare``."""
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            "The function 'nll_loss_forward' is not differentiable with respect to argument 'weight'. "
            "This input cannot have requires_grad True."
        )
    if input.dim() < 1:
        raise ValueError(f"Expected 1 or more dimensions (got {input.dim()})")
    if input.dim() != 1 and input.shape[0] != (target.shape[0] if target.dim() else 0):
        raise ValueError(
            f"Expected input batch_size ({input.shape[0]}) to match target batch_size "
            f"({target.shape[0] if target.dim() else 0})."
        )
    if input.dim() <= 2:
        _check_flat_targets(input, target, weight)
    else:
        _check_spatial_targets(input, target, weight)


def _check_target_dtype(target):
    """Class indices are int64 or uint8; every other integer dtype (int32, int16, int8, bool) and floating point
    is refused."""
    if target.dtype not in (torch.int64, torch.uint8):
        raise RuntimeError(f"expected target dtype to be Long or Byte, but got {scalar_type_name(target.dtype)}")


def _check_weight_dtype(input, weight):
    if weight is not None and weight.dtype != input.dtype:
        raise RuntimeError(
            f"expected scalar type {scalar_type_name(input.dtype)} but found {scalar_type_name(weight.dtype)}"
        )


def _check_flat_targets(input, target, weight):
    """Input (C,) or (N, C): torch's nll_loss kernel."""
    if target.dim() > 1:
        raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
    _check_target_dtype(target)
    if input.dim() == 1 and target.dim() == 1 and target.shape[0] != 1:
        raise ValueError(f"For 1D input, 1D target must have size 1, but got target size: {target.shape[0]}")
    num_classes = input.shape[-1]
    if weight is not None and (weight.dim() != 1 or weight.numel() != num_classes):
        raise RuntimeError(
            f"weight tensor should be defined either for all {num_classes} classes or no classes but got "
            f"weight tensor of shape: {list(weight.shape)}"
        )
    require_floating(input.dtype, "nll_loss_out_frame")
    _check_weight_dtype(input, weight)


def _check_spatial_targets(input, target, weight):
    """Input (N, C, d1, ...): torch's nll_loss2d kernel, on (N, C, H, W) or on other ranks reshaped to it. Its
    kernel reads int64 targets only, so a uint8 target passes the dtype check and is refused after it."""
    if input.dim() != 4 and list(target.shape[1:]) != list(input.shape[2:]):
        raise RuntimeError(f"Expected target size {[input.shape[0], *input.shape[2:]]}, got {list(target.shape)}")
    if target.dim() != input.dim() - 1:
        raise RuntimeError(
            f"only batches of spatial targets supported (3D tensors) but got targets of dimension: {target.dim()}"
        )
    _check_target_dtype(target)
    if weight is not None and weight.numel() != input.shape[1]:
        raise RuntimeError("weight tensor should be defined either for all or no classes")
    if list(target.shape) != [input.shape[0], *input.shape[2:]]:
        raise RuntimeError(f"size mismatch (got input: {list(input.shape)} , target: {list(target.shape)}")
    require_floating(input.dtype, "nll_loss2d_forward_out_frame")
    _check_weight_dtype(input, weight)
    if target.dtype == torch.uint8:
        raise RuntimeError("expected scalar type Long but found Byte")
