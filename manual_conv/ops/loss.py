"""Losses by hand: cross-entropy fused with its own log-softmax, negative log-likelihood, mean squared error.

Every class-target loss is written over one dense "target weight" tensor q of the logits' shape (N, C, d1, ...),
class dim 1, that carries the target, the class weights, label smoothing and ignore_index at once
(``class_index_targets`` builds it from class indices, ``class_probability_targets`` from probabilities):

    ℓ_i = −Σ_c q[i, c] · log p[i, c]     (cross-entropy, p = softmax over c)      CrossEntropyFunction
    ℓ_i = −Σ_c q[i, c] · x[i, c]         (negative log-likelihood of log-probs x)  NLLLossFunction

with the convention 0 · (−∞) = 0 (a class of probability 0 that is not the target costs nothing, as in torch).
The reduction: 'none' → ℓ, 'sum' → Σ_i ℓ_i, 'mean' → Σ_i ℓ_i / divisor (docs/derivations.md, "Losses").
Each backward is made of differentiable tensor operations on the saved tensors, so double backward works.
"""
import math

import torch

from ._utils import Function, require_floating, scalar_type_name


def log_softmax(logits, dim):
    """log p_c = (z_c − m) − log Σ_k exp(z_k − m), m = max_k z_k.

    Subtracting the maximum leaves the value unchanged but keeps every exp(z_k − m) in (0, 1]: no overflow for
    logits of ±1000. m is a constant shift (d log p / dm = 0), so it is detached rather than differentiated.
    """
    shifted = logits - logits.amax(dim, keepdim=True).detach()
    return shifted - shifted.exp().sum(dim, keepdim=True).log()


def class_index_targets(logits, target, weight, ignore_index, label_smoothing):
    """q[i, c] = w_c · ((1 − ε) · [c = t_i] + ε / C) for kept samples (t_i ≠ ignore_index), 0 for ignored ones.

    Also returns the divisor of reduction='mean', the weighted count of kept samples Σ_{kept i} w[t_i] (torch's
    weighted mean). logits (N, C, d1, ...), target (N, d1, ...) int64 and already checked to be in range.
    """
    num_classes = logits.shape[1]
    kept = target != ignore_index
    safe_target = torch.where(kept, target, 0)  # any valid index: the row is zeroed by `kept` below
    one_hot = torch.zeros_like(logits).scatter_(1, safe_target.unsqueeze(1), 1)
    smoothed = one_hot * (1 - label_smoothing) + label_smoothing / num_classes if label_smoothing > 0 else one_hot
    class_weight = logits.new_ones(num_classes) if weight is None else weight
    per_class = class_weight.view(1, num_classes, *[1] * (logits.dim() - 2))
    target_weights = smoothed * per_class * kept.unsqueeze(1)
    divisor = (class_weight[safe_target] * kept).sum()
    return target_weights, divisor


def class_probability_targets(logits, target, weight, label_smoothing):
    """q[i, c] = w_c · ((1 − ε) · target[i, c] + ε / C); divisor of reduction='mean': the number of samples
    N · d1 · ... (torch's mean for probability targets is not weighted). Differentiable in target and weight."""
    num_classes = logits.shape[1]
    target_weights = target * (1 - label_smoothing) + label_smoothing / num_classes if label_smoothing > 0 else target
    if weight is not None:
        target_weights = target_weights * weight.view(1, num_classes, *[1] * (logits.dim() - 2))
    return target_weights, logits.new_tensor(math.prod(logits.shape[:1] + logits.shape[2:]))


def _reduce(losses, reduction, divisor):
    """'none' → ℓ, 'sum' → Σ ℓ, 'mean' → Σ ℓ / divisor."""
    if reduction == "none":
        return losses
    total = losses.sum()
    return total / divisor if reduction == "mean" else total


def _per_sample_grad(grad_output, reduction, divisor, scores):
    """dL/dℓ_i for every sample i: g ('none'), g ('sum', broadcast), g / divisor ('mean', broadcast), shaped to
    broadcast over the class dim 1 of ``scores`` (the (N, C, d…) input the losses ℓ (N, d…) were computed from).

    When no sample is kept the mean is 0/0 = NaN (as in torch) but no sample contributed, so, as torch, the
    gradient is 0 rather than NaN: a divisor of 0 passes no gradient.
    """
    if reduction == "mean":
        grad_output = torch.where(divisor != 0, grad_output / divisor, 0)
    if reduction != "none":
        grad_output = grad_output.expand(scores.shape[:1] + scores.shape[2:])
    return grad_output.unsqueeze(1)


def _weighted_sum(target_weights, values):
    """Σ_c q[i, c] · v[i, c] over dim 1, with 0 · (±∞) taken as 0."""
    return torch.where(target_weights == 0, 0, target_weights * values).sum(1)


class CrossEntropyFunction(Function):
    """ℓ_i = −Σ_c q[i, c] · log softmax(z_i)_c, then reduced (see the module docstring); log-softmax by hand.

    Backward, with G_i = dL/dℓ_i (g, or g / divisor for 'mean'), p = softmax(z), s_i = Σ_c q[i, c]:
        dL/dz[i, c] = G_i · (s_i · p[i, c] − q[i, c])     (= G_i · (softmax − target) when q sums to 1)
        dL/dq[i, c] = −G_i · log p[i, c]
    The softmax term comes from d log p_k / dz_c = [k = c] − p_c, summed against q_k.
    """

    @staticmethod
    def forward(logits, target_weights, reduction, divisor):
        losses = -_weighted_sum(target_weights, log_softmax(logits, 1))
        return _reduce(losses, reduction, divisor)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target_weights, ctx.reduction, divisor = inputs
        ctx.save_for_backward(logits, target_weights, divisor)

    @staticmethod
    def backward(ctx, grad_output):
        logits, target_weights, divisor = ctx.saved_tensors
        grad_losses = _per_sample_grad(grad_output, ctx.reduction, divisor, logits)
        log_probs = log_softmax(logits, 1)
        grad_logits = grad_target_weights = None
        if ctx.needs_input_grad[0]:
            target_mass = target_weights.sum(1, keepdim=True)
            grad_logits = grad_losses * (target_mass * log_probs.exp() - target_weights)
        if ctx.needs_input_grad[1]:
            grad_target_weights = -grad_losses * log_probs
        return grad_logits, grad_target_weights, None, None


class NLLLossFunction(Function):
    """ℓ_i = −Σ_c q[i, c] · x[i, c] (x: log-probabilities; for class indices −w[t_i] · x[i, t_i]), then reduced.

    Linear in x. Backward, with G_i = dL/dℓ_i:  dL/dx[i, c] = −G_i · q[i, c],  dL/dq[i, c] = −G_i · x[i, c].
    """

    @staticmethod
    def forward(input, target_weights, reduction, divisor):
        return _reduce(-_weighted_sum(target_weights, input), reduction, divisor)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target_weights, ctx.reduction, divisor = inputs
        ctx.save_for_backward(input, target_weights, divisor)

    @staticmethod
    def backward(ctx, grad_output):
        input, target_weights, divisor = ctx.saved_tensors
        grad_losses = _per_sample_grad(grad_output, ctx.reduction, divisor, input)
        grad_input = -grad_losses * target_weights if ctx.needs_input_grad[0] else None
        grad_target_weights = -grad_losses * input if ctx.needs_input_grad[1] else None
        return grad_input, grad_target_weights, None, None


class MSELossFunction(Function):
    """ℓ = w ⊙ (x − y)² elementwise (w = 1 without weight), then 'none' → ℓ, 'sum' → Σ ℓ, 'mean' → Σ ℓ / D with
    D = numel (no weight) or D = Σ w (the weighted mean). x, y, w come broadcast to one shape; D (a tensor for
    'mean', else None) is an input so that its own gradient reaches the weight.

    Backward, with G = dL/dℓ (g, or g / D for 'mean'), e = x − y:
        dL/dx = 2 · G · w ⊙ e,   dL/dy = −dL/dx,   dL/dw = G · e²,   dL/dD = −g · Σ(w ⊙ e²) / D²
    """

    @staticmethod
    def forward(input, target, weight, reduction, divisor):
        squared_error = (input - target) ** 2
        return _reduce(squared_error if weight is None else weight * squared_error, reduction, divisor)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, ctx.reduction, divisor = inputs
        ctx.save_for_backward(input, target, weight, divisor)

    @staticmethod
    def backward(ctx, grad_output):
        input, target, weight, divisor = ctx.saved_tensors
        grad_losses = grad_output / divisor if ctx.reduction == "mean" else grad_output
        error = input - target
        weighted_error = error if weight is None else weight * error
        needs_input, needs_target, needs_weight, _, needs_divisor = ctx.needs_input_grad
        grad_input = 2 * grad_losses * weighted_error if needs_input or needs_target else None
        grad_target = -grad_input if needs_target else None
        grad_weight = grad_losses * error**2 if needs_weight else None
        grad_divisor = -grad_losses * (weighted_error * error).sum() / divisor if needs_divisor else None
        return grad_input if needs_input else None, grad_target, grad_weight, None, grad_divisor


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
    check_label_smoothing(label_smoothing)
    require_floating(input.dtype, "log_softmax_lastdim_kernel_impl")


def check_class_index_targets(input, target, weight, ignore_index):
    """nll_loss's checks on class-index targets: (C,) with () or (1,), (N, C) with (N,), (N, C, d1, ...) with
    (N, d1, ...); target int64 or uint8; weight (C,) of the input's dtype, never requiring grad; targets in
    [0, C) unless equal to ignore_index."""
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
    num_classes = input.shape[0 if input.dim() == 1 else 1]
    out_of_range = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if out_of_range.any():
        raise IndexError(f"Target {target[out_of_range][0].item()} is out of bounds.")


def _check_target_dtype(target):
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
    _check_weight_dtype(input, weight)
    require_floating(input.dtype, "nll_loss_out_frame")


def _check_spatial_targets(input, target, weight):
    """Input (N, C, d1, ...): torch's nll_loss2d kernel, on (N, C, H, W) or on other ranks reshaped to it."""
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
    _check_weight_dtype(input, weight)
    require_floating(input.dtype, "nll_loss2d_forward_out_frame")
