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


# -------------------------------------------------------------------------------------------------- normalization

