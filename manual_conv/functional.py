"""Public functions with torch.nn.functional's names, signatures, defaults and errors.

Thin: each normalises its arguments as PyTorch does, validates them, and applies the hand-written
autograd Function of ``manual_conv.ops``. Sections follow the op families of ``manual_conv/ops/``.
"""
import torch.nn.functional as F

from .ops import conv as _conv
from .ops._utils import _pair

# ---------------------------------------------------------------------------------------------------- convolution


def _same_padding(weight, stride, dilation):
    """padding='same': d(k − 1) zeros in total per dim, half on each side; an odd one goes at the end."""
    if any(s != 1 for s in stride):
        raise RuntimeError("padding='same' is not supported for strided convolutions")
    totals = [d * (k - 1) for k, d in zip(weight.shape[2:], dilation)]
    return tuple(t // 2 for t in totals), [t % 2 for t in totals]


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation) as torch.nn.functional.conv2d, through ``Conv2dFunction``.

    input (N, C_in, H, W) or unbatched (C_in, H, W); weight (C_out, C_in/groups, kH, kW); padding an int, a pair,
    'valid' (none) or 'same' (output as large as the input, stride 1 only).
    """
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    end_padding = [0, 0]
    if padding == "same":
        padding, end_padding = _same_padding(weight, stride, dilation)
    elif padding == "valid":
        padding = (0, 0)
    elif isinstance(padding, str):
        raise RuntimeError(f"Invalid padding string: '{padding}'")
    else:
        padding = _pair(padding, "padding")
    _conv.check_conv2d_args("conv2d", input, weight, bias, stride, padding, dilation, groups)
    batched = input if input.dim() == 4 else input.unsqueeze(0)
    if any(end_padding):
        batched = F.pad(batched, (0, end_padding[1], 0, end_padding[0]))
    output = _conv.Conv2dFunction.apply(batched, weight, bias, stride, padding, dilation, groups)
    return output if input.dim() == 4 else output.squeeze(0)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2-D transposed convolution as torch.nn.functional.conv_transpose2d, through ``ConvTranspose2dFunction``.

    The adjoint of conv2d: input (N, C_in, H, W) or (C_in, H, W); weight (C_in, C_out/groups, kH, kW);
    H_out = (H − 1)·stride − 2·padding + dilation·(kH − 1) + output_padding + 1.
    """
    if isinstance(padding, str):
        raise TypeError(f"conv_transpose2d(): argument 'padding' must be tuple of ints, not str")
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    output_padding = _pair(output_padding, "output_padding")
    _conv.check_conv2d_args("conv_transpose2d", input, weight, bias, stride, padding, dilation, groups, transposed=True)
    batched = input if input.dim() == 4 else input.unsqueeze(0)
    output_size = _conv.transposed_output_size(batched, weight, stride, padding, output_padding, groups, dilation)
    output = _conv.ConvTranspose2dFunction.apply(batched, weight, bias, output_size, stride, padding, dilation, groups)
    return output if input.dim() == 4 else output.squeeze(0)

# -------------------------------------------------------------------------------------------------------- pooling


# ---------------------------------------------------------------------------------------------------- activations


# --------------------------------------------------------------------------------------- linear, dropout, flatten


# --------------------------------------------------------------------------------------------------------- losses

# This section's imports live here so that the sections can be edited and committed independently.
import warnings  # noqa: E402

import torch  # noqa: E402
from torch.nn import _reduction as _Reduction  # noqa: E402

from .ops import loss as _loss  # noqa: E402


def _reduction_name(size_average, reduce, reduction):
    """The reduction as torch.nn.functional resolves it: the deprecated size_average/reduce flags win (with
    torch's deprecation warning); an unknown name raises torch's ValueError."""
    if size_average is not None or reduce is not None:
        return _Reduction.legacy_get_string(size_average, reduce)
    return ("none", "mean", "sum")[_Reduction.get_enum(reduction)]


def _unbatched_output(output, input, reduction):
    """An unbatched (C,) input was computed as a batch of one; reduction='none' then returns a scalar."""
    return output.squeeze(0) if input.dim() == 1 and reduction == "none" else output


def cross_entropy(
    input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
    label_smoothing=0.0,
):
    """Cross-entropy of logits as torch.nn.functional.cross_entropy, fused with its log-softmax in
    ``CrossEntropyFunction``: ℓ_i = −Σ_c q[i, c] · log softmax(z_i)_c, backward softmax − target.

    input (C,), (N, C) or (N, C, d1, ...); target class indices (), (N,) or (N, d1, ...) (int64/uint8), or class
    probabilities of the input's shape. weight (C,) rescales classes; ignore_index drops samples (index targets);
    label_smoothing ε mixes the target with the uniform distribution: (1 − ε)·target + ε/C. 'mean' divides by
    Σ w[t_i] over kept samples for index targets and by the number of samples for probability targets.
    """
    reduction = _reduction_name(size_average, reduce, reduction)
    smoothing = label_smoothing if label_smoothing > 0 else 0.0
    if input.shape == target.shape:
        _loss.check_probability_targets(input, target, weight, ignore_index, label_smoothing)
        dtype = torch.result_type(input, target) if weight is None else torch.promote_types(
            torch.result_type(input, target), weight.dtype
        )
        logits, target = input.to(dtype), target.to(dtype)
        if input.dim() == 1:
            logits, target = logits.view(1, -1), target.view(1, -1)
        target_weights, divisor = _loss.class_probability_targets(logits, target, weight, smoothing)
    else:
        _loss.check_label_smoothing(label_smoothing)
        if input.dim() == 0:
            raise IndexError("Dimension out of range (expected to be in range of [-1, 0], but got 1)")
        _loss.require_floating(input.dtype, "log_softmax_lastdim_kernel_impl")
        _loss.check_class_index_targets(input, target, weight, ignore_index)
        logits = input.view(1, -1) if input.dim() == 1 else input
        target = target.reshape(1) if input.dim() == 1 else target
        weight = None if weight is None else weight.reshape(-1)
        target_weights, divisor = _loss.class_index_targets(logits, target.long(), weight, ignore_index, smoothing)
    output = _loss.CrossEntropyFunction.apply(logits, target_weights, reduction, divisor)
    return _unbatched_output(output, input, reduction)


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    """Negative log-likelihood as torch.nn.functional.nll_loss, through ``NLLLossFunction``:
    ℓ_i = −w[t_i] · input[i, t_i] for kept samples (t_i ≠ ignore_index); 'mean' divides by Σ w[t_i] over them.

    input log-probabilities (C,), (N, C) or (N, C, d1, ...); target (), (N,) or (N, d1, ...) (int64/uint8).
    """
    reduction = _reduction_name(size_average, reduce, reduction)
    _loss.check_class_index_targets(input, target, weight, ignore_index)
    batched_input = input.view(1, -1) if input.dim() == 1 else input
    target = target.reshape(1) if input.dim() == 1 else target
    weight = None if weight is None else weight.reshape(-1)
    target_weights, divisor = _loss.class_index_targets(batched_input, target.long(), weight, ignore_index, 0.0)
    output = _loss.NLLLossFunction.apply(batched_input, target_weights, reduction, divisor)
    return _unbatched_output(output, input, reduction)


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    """Mean squared error as torch.nn.functional.mse_loss, through ``MSELossFunction``: ℓ = w ⊙ (x − y)²,
    'mean' = Σ ℓ / numel, or Σ ℓ / Σ w with a weight (of the input's shape). Input and target broadcast, with
    torch's warning when their sizes differ."""
    if target.size() != input.size():
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
            "This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=2,
        )
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    expanded_input, expanded_target = torch.broadcast_tensors(input, target)
    if weight is None:
        reduction = _reduction_name(None, None, reduction)
        dtype = torch.result_type(input, target)
        _loss.require_floating(dtype, "mse_cpu")
        divisor = expanded_input.new_tensor(expanded_input.numel(), dtype=dtype) if reduction == "mean" else None
    else:
        if weight.size() != input.size():
            raise ValueError("Weights and input must have the same size.")
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"Invalid reduction mode: {reduction}. Expected one of 'none', 'mean', 'sum'.")
        dtype = torch.promote_types(torch.result_type(input, target), weight.dtype)
        weight = weight.to(dtype)
        divisor = weight.sum() if reduction == "mean" else None
        weight = weight.expand(expanded_input.shape)
    return _loss.MSELossFunction.apply(
        expanded_input.to(dtype), expanded_target.to(dtype), weight, reduction, divisor
    )


# -------------------------------------------------------------------------------------------------- normalization

