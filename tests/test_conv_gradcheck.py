"""float64 gradcheck and gradgradcheck of conv2d and conv_transpose2d over a grid of configurations.

gradcheck compares our hand-written backward with finite differences of our own forward, so it proves the
backward independently of PyTorch; gradgradcheck does the same for the backward's backward (double backward).
First derivatives are checked entry by entry (full Jacobians); second derivatives with gradcheck's fast mode,
which compares uᵀJv for random u, v (any wrong entry changes it), except for the "everything" cases, which get
the full second-order Jacobians too. Shapes are small: each Jacobian column costs two forward passes.
"""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import manual_conv.functional as mF

pytestmark = pytest.mark.usefixtures("single_thread")

BATCH = 2

# id: (in_channels, out_channels, kernel_size, input (H, W), conv keyword arguments, bias)
CONV2D_CASES = {
    "plain": (2, 3, (3, 3), (5, 5), {}, True),
    "no-bias": (2, 3, (3, 3), (5, 5), {}, False),
    "non-square-kernel": (2, 2, (2, 3), (5, 6), {"padding": (1, 0)}, True),
    "stride-2-padding-1": (2, 2, (3, 3), (6, 5), {"stride": 2, "padding": 1}, True),
    "stride-pair-padding-pair": (2, 2, (3, 2), (6, 7), {"stride": (2, 1), "padding": (0, 2)}, True),
    "stride-larger-than-kernel": (1, 2, (2, 2), (7, 7), {"stride": 3}, True),
    "dilation-2": (2, 2, (3, 3), (6, 6), {"dilation": 2, "padding": 1}, True),
    "dilation-pair": (2, 2, (2, 3), (6, 6), {"dilation": (3, 1)}, False),
    "groups-2": (4, 2, (3, 3), (5, 5), {"groups": 2}, True),
    "depthwise": (3, 3, (3, 3), (5, 5), {"groups": 3, "padding": 1}, True),
    "depthwise-multiplier-2": (2, 4, (2, 2), (4, 5), {"groups": 2}, False),
    "padding-valid": (2, 2, (3, 2), (5, 5), {"padding": "valid"}, True),
    "padding-same-odd-kernel": (2, 2, (3, 3), (5, 5), {"padding": "same"}, True),
    "padding-same-even-kernel": (2, 2, (2, 4), (5, 5), {"padding": "same"}, True),
    "padding-same-even-kernel-dilation": (2, 2, (2, 3), (6, 6), {"padding": "same", "dilation": (3, 2)}, True),
    "padding-same-groups": (4, 2, (4, 1), (5, 4), {"padding": "same", "groups": 2}, False),
    "everything": (4, 2, (3, 2), (6, 7), {"stride": (2, 3), "padding": (1, 2), "dilation": (2, 1), "groups": 2}, True),
}

# id: (in_channels, out_channels, kernel_size, input (H, W), conv_transpose keyword arguments, bias)
CONV_TRANSPOSE2D_CASES = {
    "plain": (2, 3, (3, 3), (4, 4), {}, True),
    "no-bias": (2, 3, (3, 3), (4, 4), {}, False),
    "non-square-kernel": (2, 2, (2, 3), (4, 3), {"padding": (1, 0)}, True),
    "stride-2": (2, 2, (3, 3), (3, 4), {"stride": 2}, True),
    "stride-2-output-padding-1": (2, 2, (3, 3), (3, 3), {"stride": 2, "padding": 1, "output_padding": 1}, True),
    "stride-pair-output-padding-pair": (
        2, 2, (2, 3), (3, 3), {"stride": (3, 2), "padding": (1, 0), "output_padding": (2, 1)}, True
    ),
    "output-padding-below-dilation": (2, 2, (3, 3), (3, 3), {"dilation": 2, "output_padding": 1}, True),
    "padding-crops": (2, 2, (3, 3), (4, 4), {"stride": 2, "padding": 2}, False),
    "groups-2": (4, 2, (3, 3), (4, 4), {"groups": 2}, True),
    "depthwise": (3, 3, (3, 3), (4, 4), {"groups": 3, "padding": 1}, True),
    "everything": (
        4, 2, (3, 2), (3, 4),
        {"stride": (2, 3), "padding": (1, 2), "output_padding": (1, 0), "groups": 2, "dilation": (2, 1)}, True,
    ),
}


def make_inputs(in_channels, out_channels, kernel_size, input_size, groups, bias, transposed):
    """float64 leaves: input (N, C_in, H, W), weight in conv2d or conv_transpose2d layout, and the bias if any."""
    weight_shape = (
        (in_channels, out_channels // groups, *kernel_size)
        if transposed
        else (out_channels, in_channels // groups, *kernel_size)
    )
    tensors = [torch.randn(BATCH, in_channels, *input_size), torch.randn(weight_shape)]
    if bias:
        tensors.append(torch.randn(out_channels))
    return tuple(t.double().requires_grad_() for t in tensors)


def check_first_and_second_derivatives(function, case, transposed, full_second_order):
    in_channels, out_channels, kernel_size, input_size, kwargs, bias = case
    torch.manual_seed(0)
    inputs = make_inputs(in_channels, out_channels, kernel_size, input_size, kwargs.get("groups", 1), bias, transposed)

    def conv(input, weight, bias=None):
        return function(input, weight, bias, **kwargs)

    assert gradcheck(conv, inputs)
    assert gradgradcheck(conv, inputs, fast_mode=not full_second_order)


@pytest.mark.parametrize("name", CONV2D_CASES)
def test_conv2d_gradcheck_and_gradgradcheck(backend, name):
    check_first_and_second_derivatives(
        mF.conv2d, CONV2D_CASES[name], transposed=False, full_second_order=name == "everything"
    )


@pytest.mark.parametrize("name", CONV_TRANSPOSE2D_CASES)
def test_conv_transpose2d_gradcheck_and_gradgradcheck(backend, name):
    check_first_and_second_derivatives(
        mF.conv_transpose2d, CONV_TRANSPOSE2D_CASES[name], transposed=True, full_second_order=name == "everything"
    )


@pytest.mark.parametrize("function, weight_shape", [(mF.conv2d, (3, 2, 2, 3)), (mF.conv_transpose2d, (2, 3, 2, 3))])
def test_unbatched_input_gradcheck_and_gradgradcheck(backend, function, weight_shape):
    torch.manual_seed(0)
    inputs = (torch.randn(2, 4, 5), torch.randn(weight_shape), torch.randn(3))
    inputs = tuple(t.double().requires_grad_() for t in inputs)

    def conv(input, weight, bias):
        return function(input, weight, bias, stride=(2, 1), padding=1)

    assert gradcheck(conv, inputs)
    assert gradgradcheck(conv, inputs, fast_mode=True)
