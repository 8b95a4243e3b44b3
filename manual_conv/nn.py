"""Drop-in modules: the names, constructor signatures, parameters, state_dict keys and repr of torch.nn.

Each module subclasses its torch.nn twin, so construction, initialisation, ``extra_repr``, state_dict loading and
``isinstance`` checks are PyTorch's own, and overrides only the computation, which goes through
``manual_conv.functional``. Sections follow the op families of ``manual_conv/ops/``.

Every other public name of torch.nn resolves to torch's own object (``manual_conv.torch_names``): containers,
Parameter, ``init`` and ``utils`` silently, a layer without a twin with a warning that it runs natively.
``functional`` is ``manual_conv.functional``.
"""
import sys

import torch.nn.functional as F
from torch import nn

from . import functional  # noqa: F401  (manual_conv.nn.functional, as torch.nn.functional)
from . import functional as mF
from . import torch_names

# (a star import gives torch.nn's names only: StochasticDepth would import torchvision, TORCHVISION_TWINS below)
_torch_nn_name = torch_names.resolver(sys.modules[__name__], nn, torch_names.nn_layer_computes, "torch.nn layers")


def __getattr__(name):
    """A twin of a torchvision.ops layer, made at its first use (``TORCHVISION_TWINS``), or torch.nn's name."""
    if name in TORCHVISION_TWINS:
        twin = TORCHVISION_TWINS[name]()
        twin.__module__, twin.__qualname__ = __name__, name  # pickled by name, as the other twins
        globals()[name] = twin
        return twin
    return _torch_nn_name(name)


def __dir__():
    return sorted(set(torch_names.directory(sys.modules[__name__], nn)) | set(TORCHVISION_TWINS))


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


class LazyConv2d(nn.LazyConv2d):
    """torch.nn.LazyConv2d computed by manual_conv.functional.conv2d; becomes manual_conv.nn.Conv2d once its
    weight's shape is known (at the first call)."""

    cls_to_become = Conv2d
    _conv_forward = Conv2d._conv_forward


class LazyConvTranspose2d(nn.LazyConvTranspose2d):
    """torch.nn.LazyConvTranspose2d computed by manual_conv.functional.conv_transpose2d; becomes
    manual_conv.nn.ConvTranspose2d at the first call."""

    cls_to_become = ConvTranspose2d
    forward = ConvTranspose2d.forward

# -------------------------------------------------------------------------------------------------------- pooling


class MaxPool2d(nn.MaxPool2d):
    """torch.nn.MaxPool2d computed by manual_conv.functional.max_pool2d."""

    def forward(self, input):
        return mF.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(nn.AvgPool2d):
    """torch.nn.AvgPool2d computed by manual_conv.functional.avg_pool2d."""

    def forward(self, input):
        return mF.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """torch.nn.AdaptiveAvgPool2d computed by manual_conv.functional.adaptive_avg_pool2d."""

    def forward(self, input):
        return mF.adaptive_avg_pool2d(input, self.output_size)


class AdaptiveMaxPool2d(nn.AdaptiveMaxPool2d):
    """torch.nn.AdaptiveMaxPool2d computed by manual_conv.functional.adaptive_max_pool2d."""

    def forward(self, input):
        return mF.adaptive_max_pool2d(input, self.output_size, self.return_indices)

# ---------------------------------------------------------------------------------------------------- activations


class ReLU(nn.ReLU):
    """torch.nn.ReLU computed by manual_conv.functional.relu (inplace=True overwrites the input, as torch's)."""

    def forward(self, input):
        return mF.relu(input, inplace=self.inplace)


class Sigmoid(nn.Sigmoid):
    """torch.nn.Sigmoid computed by manual_conv.functional.sigmoid."""

    def forward(self, input):
        return mF.sigmoid(input)


class Tanh(nn.Tanh):
    """torch.nn.Tanh computed by manual_conv.functional.tanh."""

    def forward(self, input):
        return mF.tanh(input)


class GELU(nn.GELU):
    """torch.nn.GELU computed by manual_conv.functional.gelu."""

    def forward(self, input):
        return mF.gelu(input, approximate=self.approximate)


class Softmax(nn.Softmax):
    """torch.nn.Softmax computed by manual_conv.functional.softmax."""

    def forward(self, input):
        return mF.softmax(input, self.dim, _stacklevel=5)


class LogSoftmax(nn.LogSoftmax):
    """torch.nn.LogSoftmax computed by manual_conv.functional.log_softmax."""

    def forward(self, input):
        return mF.log_softmax(input, self.dim, _stacklevel=5)


class Hardtanh(nn.Hardtanh):
    """torch.nn.Hardtanh computed by manual_conv.functional.hardtanh."""

    def forward(self, input):
        return mF.hardtanh(input, self.min_val, self.max_val, self.inplace)


class ReLU6(nn.ReLU6):
    """torch.nn.ReLU6 (a torch.nn.Hardtanh with bounds 0 and 6) computed by manual_conv.functional.hardtanh."""

    forward = Hardtanh.forward


class LeakyReLU(nn.LeakyReLU):
    """torch.nn.LeakyReLU computed by manual_conv.functional.leaky_relu."""

    def forward(self, input):
        return mF.leaky_relu(input, self.negative_slope, self.inplace)


class ELU(nn.ELU):
    """torch.nn.ELU computed by manual_conv.functional.elu."""

    def forward(self, input):
        return mF.elu(input, self.alpha, self.inplace)


class SiLU(nn.SiLU):
    """torch.nn.SiLU computed by manual_conv.functional.silu."""

    def forward(self, input):
        return mF.silu(input, inplace=self.inplace)


class Mish(nn.Mish):
    """torch.nn.Mish computed by manual_conv.functional.mish."""

    def forward(self, input):
        return mF.mish(input, inplace=self.inplace)


class Hardswish(nn.Hardswish):
    """torch.nn.Hardswish computed by manual_conv.functional.hardswish."""

    def forward(self, input):
        return mF.hardswish(input, self.inplace)


class Hardsigmoid(nn.Hardsigmoid):
    """torch.nn.Hardsigmoid computed by manual_conv.functional.hardsigmoid."""

    def forward(self, input):
        return mF.hardsigmoid(input, self.inplace)


class Softplus(nn.Softplus):
    """torch.nn.Softplus computed by manual_conv.functional.softplus."""

    def forward(self, input):
        return mF.softplus(input, self.beta, self.threshold)

# --------------------------------------------------------------------------------------- linear, dropout, flatten


class Linear(nn.Linear):
    """torch.nn.Linear computed by manual_conv.functional.linear."""

    def forward(self, input):
        return mF.linear(input, self.weight, self.bias)


class LazyLinear(nn.LazyLinear):
    """torch.nn.LazyLinear computed by manual_conv.functional.linear; becomes manual_conv.nn.Linear at the first
    call."""

    cls_to_become = Linear
    forward = Linear.forward


class Flatten(nn.Flatten):
    """torch.nn.Flatten, unchanged: flattening is a reshape, y and x hold the same numbers in the same order, so
    there is nothing to derive (∂L/∂x is δ reshaped back, which PyTorch's view tracking already does without
    arithmetic). A Function here would only turn a free view into a copy. The class exists so that a model
    written against manual_conv.nn finds every layer it needs in one namespace."""


class Dropout(nn.Dropout):
    """torch.nn.Dropout computed by manual_conv.functional.dropout (active in train(), the identity in eval())."""

    def forward(self, input):
        return mF.dropout(input, self.p, self.training, self.inplace)

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


# ------------------------------------------------------------------------------- stochastic depth (torchvision.ops)

# Twins of torchvision.ops layers subclass torchvision's classes, so they are made when first asked for: importing
# torchvision takes seconds that a model of torch.nn layers need not pay (and manual_conv does not depend on it).


def _stochastic_depth():
    from torchvision.ops import StochasticDepth as TorchvisionStochasticDepth

    class StochasticDepth(TorchvisionStochasticDepth):
        """torchvision.ops.StochasticDepth computed by manual_conv.functional.stochastic_depth (torchvision's
        constructor, repr and state_dict: a subclass)."""

        def forward(self, input):
            return mF.stochastic_depth(input, self.p, self.mode, self.training)

    return StochasticDepth


# {name: a function making the twin of torchvision.ops.<name>}
TORCHVISION_TWINS = {"StochasticDepth": _stochastic_depth}

# -------------------------------------------------------------------------------------------------- normalization


class LayerNorm(nn.LayerNorm):
    """torch.nn.LayerNorm computed by manual_conv.functional.layer_norm."""

    def forward(self, input):
        return mF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


def _batch_norm_forward(module, input):
    """torch.nn's _BatchNorm.forward, computed by manual_conv.functional.batch_norm.

    In training with tracked statistics, num_batches_tracked counts the batch and the running statistics are
    updated with momentum, or, when momentum is None, as the cumulative average over the batches seen
    (factor 1 / num_batches_tracked). The batch's own statistics normalize in training, and in evaluation
    when there are no running statistics (track_running_stats=False).
    """
    module._check_input_dim(input)
    average_factor = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats and module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
        if module.momentum is None:
            average_factor = 1.0 / float(module.num_batches_tracked)
    use_batch_stats = module.training or (module.running_mean is None and module.running_var is None)
    update_or_use_running_stats = not module.training or module.track_running_stats
    return mF.batch_norm(
        input,
        module.running_mean if update_or_use_running_stats else None,
        module.running_var if update_or_use_running_stats else None,
        module.weight,
        module.bias,
        use_batch_stats,
        average_factor,
        module.eps,
    )


class BatchNorm1d(nn.BatchNorm1d):
    """torch.nn.BatchNorm1d (input (N, C) or (N, C, L)) computed by manual_conv.functional.batch_norm."""

    def forward(self, input):
        return _batch_norm_forward(self, input)


class BatchNorm2d(nn.BatchNorm2d):
    """torch.nn.BatchNorm2d (input (N, C, H, W)) computed by manual_conv.functional.batch_norm."""

    def forward(self, input):
        return _batch_norm_forward(self, input)


class LazyBatchNorm1d(nn.LazyBatchNorm1d):
    """torch.nn.LazyBatchNorm1d computed by manual_conv.functional.batch_norm; becomes manual_conv.nn.BatchNorm1d
    at the first call."""

    cls_to_become = BatchNorm1d
    forward = BatchNorm1d.forward


class LazyBatchNorm2d(nn.LazyBatchNorm2d):
    """torch.nn.LazyBatchNorm2d computed by manual_conv.functional.batch_norm; becomes manual_conv.nn.BatchNorm2d
    at the first call."""

    cls_to_become = BatchNorm2d
    forward = BatchNorm2d.forward


class GroupNorm(nn.GroupNorm):
    """torch.nn.GroupNorm (input (N, C, ...)) computed by manual_conv.functional.group_norm."""

    def forward(self, input):
        return mF.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


def _apply_instance_norm(module, input):
    """torch.nn's _InstanceNorm._apply_instance_norm, computed by manual_conv.functional.instance_norm: the
    instance's own statistics in training and whenever no running statistics are tracked, the running ones (updated
    with momentum, 0 for None) otherwise. torch.nn's forward around it checks the input and takes unbatched input."""
    return mF.instance_norm(input, module.running_mean, module.running_var, module.weight, module.bias,
                            module.training or not module.track_running_stats,
                            module.momentum if module.momentum is not None else 0.0, module.eps)


class InstanceNorm1d(nn.InstanceNorm1d):
    """torch.nn.InstanceNorm1d (input (N, C, L) or (C, L)) computed by manual_conv.functional.instance_norm."""

    _apply_instance_norm = _apply_instance_norm


class InstanceNorm2d(nn.InstanceNorm2d):
    """torch.nn.InstanceNorm2d (input (N, C, H, W) or (C, H, W)) computed by manual_conv.functional.instance_norm."""

    _apply_instance_norm = _apply_instance_norm


class InstanceNorm3d(nn.InstanceNorm3d):
    """torch.nn.InstanceNorm3d (input (N, C, D, H, W) or (C, D, H, W)) computed by
    manual_conv.functional.instance_norm."""

    _apply_instance_norm = _apply_instance_norm


class LazyInstanceNorm1d(nn.LazyInstanceNorm1d):
    """torch.nn.LazyInstanceNorm1d computed by manual_conv.functional.instance_norm; becomes
    manual_conv.nn.InstanceNorm1d at the first call."""

    cls_to_become = InstanceNorm1d
    _apply_instance_norm = _apply_instance_norm


class LazyInstanceNorm2d(nn.LazyInstanceNorm2d):
    """torch.nn.LazyInstanceNorm2d computed by manual_conv.functional.instance_norm; becomes
    manual_conv.nn.InstanceNorm2d at the first call."""

    cls_to_become = InstanceNorm2d
    _apply_instance_norm = _apply_instance_norm


class LazyInstanceNorm3d(nn.LazyInstanceNorm3d):
    """torch.nn.LazyInstanceNorm3d computed by manual_conv.functional.instance_norm; becomes
    manual_conv.nn.InstanceNorm3d at the first call."""

    cls_to_become = InstanceNorm3d
    _apply_instance_norm = _apply_instance_norm


# ------------------------------------------------------------------------------------------------------ attention


class MultiheadAttention(nn.MultiheadAttention):
    """torch.nn.MultiheadAttention computed by manual_conv.functional.multi_head_attention_forward: the in- and
    out-projections by manual_conv's linear, the attention by hand (with its weights when need_weights). Always
    torch's general path: torch's fast path (one fused native kernel, in eval mode without autograd) is never taken.
    Masks are canonicalized and batch_first inputs transposed as torch's forward does."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if query.is_nested or key.is_nested or value.is_nested:
            raise AssertionError("MultiheadAttention does not support NestedTensor outside of its fast path. The "
                                 "fast path was not hit because manual_conv never takes it")
        is_batched = query.dim() == 3
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        if self.batch_first and is_batched:  # transposed views that keep query is key is value where it holds
            query, key, value = _sequence_first(query, key, value)
        separate = not self._qkv_same_embed_dim
        attn_output, attn_output_weights = mF.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias, self.bias_k,
            self.bias_v, self.add_zero_attn, self.dropout, self.out_proj.weight, self.out_proj.bias,
            training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, use_separate_proj_weight=separate,
            q_proj_weight=self.q_proj_weight if separate else None,
            k_proj_weight=self.k_proj_weight if separate else None,
            v_proj_weight=self.v_proj_weight if separate else None,
            average_attn_weights=average_attn_weights, is_causal=is_causal,
        )
        if self.batch_first and is_batched:
            attn_output = attn_output.transpose(1, 0)
        return attn_output, attn_output_weights


def _sequence_first(query, key, value):
    """(N, L, E) inputs as (L, N, E) views, one view for arguments that are the same tensor."""
    views = {}
    return tuple(views.setdefault(id(tensor), tensor.transpose(1, 0)) for tensor in (query, key, value))
