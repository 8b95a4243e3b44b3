"""Drop-in modules: the names, constructor signatures, parameters, state_dict keys and repr of torch.nn.

Each module subclasses its torch.nn twin, so construction, initialisation, ``extra_repr``, state_dict loading and
``isinstance`` checks are PyTorch's own, and overrides only the computation, which goes through
``manual_conv.functional``. Sections follow the op families of ``manual_conv/ops/``.
"""
import torch.nn.functional as F
from torch import nn

from . import functional as mF

# ---------------------------------------------------------------------------------------------------- convolution


class Conv2d(nn.Conv2d):
    """torch.nn.Conv2d computed by manual_conv.functional.conv2d. padding_mode 'zeros', 'reflect', 'replicate'
    or 'circular': non-zero modes pad the input first (as torch.nn does), then convolve with padding 0."""

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return mF.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return mF.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2d(nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d computed by manual_conv.functional.conv_transpose2d; ``output_size`` in forward
    chooses the output_padding as torch.nn does."""

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        return mF.conv_transpose2d(
            input, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation
        )

# -------------------------------------------------------------------------------------------------------- pooling


# ---------------------------------------------------------------------------------------------------- activations


# --------------------------------------------------------------------------------------- linear, dropout, flatten


# --------------------------------------------------------------------------------------------------------- losses


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """torch.nn.CrossEntropyLoss computed by manual_conv.functional.cross_entropy (log-softmax fused in)."""

    def forward(self, input, target):
        return mF.cross_entropy(
            input, target, weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


class NLLLoss(nn.NLLLoss):
    """torch.nn.NLLLoss computed by manual_conv.functional.nll_loss."""

    def forward(self, input, target):
        return mF.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class MSELoss(nn.MSELoss):
    """torch.nn.MSELoss computed by manual_conv.functional.mse_loss."""

    def forward(self, input, target):
        return mF.mse_loss(input, target, reduction=self.reduction)


# -------------------------------------------------------------------------------------------------- normalization

