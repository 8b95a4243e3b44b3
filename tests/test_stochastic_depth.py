"""Stochastic depth by hand (manual_conv.ops.stochastic_depth) against torchvision.ops.stochastic_depth, its
reference: the same noise for a seed, hence torchvision's very result; the gradient δ ⊙ m / (1 − p); torchvision's
errors; the module a subclass of torchvision's; convert() swapping torchvision's layer for it and naming the
torchvision.ops layers it leaves."""
import math
import subprocess
import sys
import warnings

import pytest
import torch
import torchvision
from torch.autograd import gradcheck, gradgradcheck
from torchvision.ops import stochastic_depth

import manual_conv
import manual_conv.functional as mF
import manual_conv.nn as mnn
from manual_conv.ops.stochastic_depth import StochasticDepthFunction


def both(input, *args, seed=0, **kwargs):
    """(ours, torchvision's) for the same seed."""
    results = []
    for function in (mF.stochastic_depth, stochastic_depth):
        torch.manual_seed(seed)
        results.append(function(input, *args, **kwargs))
    return results


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_seed_gives_torchvisions_very_result(mode, p, dtype):
    input = torch.randn(16, 3, 4, 4, dtype=dtype)
    for seed in range(5):
        ours, theirs = both(input, p, mode, seed=seed)
        assert torch.equal(ours, theirs)
    if mode == "row" and p < 1:  # some samples kept, some dropped
        kept = ours.flatten(1).ne(0).any(1)
        assert 0 < kept.sum() < 16


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_torchvisions_noise_and_rounds_once(dtype):
    """The same samples dropped as torchvision's; the kept ones scaled by 1/(1 − p) in float32 and rounded once
    (torchvision rounds 1/(1 − p) to the input's dtype first), so no farther from the exact x/(1 − p)."""
    input = torch.randn(64, 8, dtype=torch.float64).to(dtype)
    ours, theirs = both(input, 0.3, "row")
    assert torch.equal(ours == 0, theirs == 0)
    exact = torch.where(theirs == 0, 0.0, input.double() / 0.7)
    assert (ours.double() - exact).abs().max() <= (theirs.double() - exact).abs().max()
    assert ((ours.double() - exact).abs() <= torch.finfo(dtype).eps * exact.abs() / 2 + 1e-12).all()


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_gradient_is_the_scaled_noise_and_the_graph_is_ours(mode):
    input = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    output = mF.stochastic_depth(input, 0.5, mode)
    assert isinstance(output.grad_fn, StochasticDepthFunction._backward_cls)
    upstream = torch.randn(6, 5, dtype=torch.float64)
    (grad,) = torch.autograd.grad(output, input, upstream)
    torch.manual_seed(1)
    expected_input = input.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(stochastic_depth(expected_input, 0.5, mode), expected_input, upstream)
    assert torch.equal(grad, expected)


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_gradcheck_and_gradgradcheck(mode):
    input = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)

    def seeded(x):  # the same noise at every evaluation
        torch.manual_seed(3)
        return mF.stochastic_depth(x, 0.5, mode)

    assert gradcheck(seeded, (input,))
    assert gradgradcheck(seeded, (input,))


def test_identity_when_not_training_or_p_is_zero():
    input = torch.randn(3, 4)
    assert mF.stochastic_depth(input, 0.5, "row", training=False) is input
    assert mF.stochastic_depth(input, 0.0, "batch") is input


def test_inf_and_nan_as_torchvision():
    """A dropped infinite sample is NaN (inf · 0), as torchvision's product; an infinite gradient on a dropped
    sample too."""
    input = torch.randn(8, 3)
    input[:, 0] = math.inf
    input[:, 1] = math.nan
    ours, theirs = both(input.requires_grad_(), 0.5, "row", seed=2)
    torch.testing.assert_close(ours, theirs, equal_nan=True)
    upstream = torch.full((8, 3), math.inf)
    torch.testing.assert_close(torch.autograd.grad(ours, input, upstream)[0],
                               torch.autograd.grad(theirs, input, upstream)[0], equal_nan=True)


BAD_CALLS = {
    "p-negative": ((torch.randn(2, 3), -0.1, "row"), {}),
    "p-above-one": ((torch.randn(2, 3), 1.5, "batch"), {}),
    "unknown-mode": ((torch.randn(2, 3), 0.5, "column"), {}),
    "row-of-a-scalar": ((torch.tensor(1.0), 0.5, "row"), {}),
    "integer-input": ((torch.ones(2, 3, dtype=torch.int64), 0.5, "row"), {}),
    "bool-input": ((torch.ones(2, 3, dtype=torch.bool), 0.5, "batch"), {}),
    "complex-input": ((torch.ones(2, 3, dtype=torch.complex64), 0.5, "row"), {}),
}


@pytest.mark.parametrize("args, kwargs", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_input_raises_as_torchvision(args, kwargs):
    with pytest.raises(Exception) as expected:
        stochastic_depth(*args, **kwargs)
    with pytest.raises(expected.type) as raised:
        mF.stochastic_depth(*args, **kwargs)
    assert str(raised.value) == str(expected.value)


def test_integer_input_dropped_whole_as_torchvision():
    """p = 1 needs no division: torchvision multiplies an integer input by its zero noise, and so do we."""
    input = torch.arange(6).view(3, 2)
    ours, theirs = both(input, 1.0, "row")
    assert ours.dtype == theirs.dtype == torch.int64 and torch.equal(ours, theirs)


def test_module_is_torchvisions_with_our_computation():
    ours, theirs = mnn.StochasticDepth(0.25, "row"), torchvision.ops.StochasticDepth(0.25, "row")
    assert isinstance(ours, torchvision.ops.StochasticDepth)
    assert repr(ours) == repr(theirs) and ours.state_dict().keys() == theirs.state_dict().keys()
    input = torch.randn(8, 4, requires_grad=True)
    torch.manual_seed(0)
    output = ours(input)
    torch.manual_seed(0)
    assert torch.equal(output, theirs(input))
    assert isinstance(output.grad_fn, StochasticDepthFunction._backward_cls)
    assert ours.eval()(input) is input


def test_importing_manual_conv_does_not_import_torchvision():
    """The twin of a torchvision layer is made when first asked for: `import manual_conv` stays free of
    torchvision's import time."""
    code = "import sys, manual_conv; assert 'torchvision' not in sys.modules; manual_conv.nn.StochasticDepth"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_convert_swaps_torchvisions_stochastic_depth_and_names_the_torchvision_layers_it_leaves():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 1),
        torchvision.ops.StochasticDepth(0.2, "row"),
        torchvision.ops.SqueezeExcitation(4, 2),  # a block of torch.nn layers: looked inside
        torchvision.ops.FrozenBatchNorm2d(4),  # a layer without a twin
        torchvision.ops.Permute([0, 2, 3, 1]),  # a view: nothing to compute
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = manual_conv.convert(model)
    assert type(converted[1]) is mnn.StochasticDepth and converted[1].p == 0.2
    assert type(converted[2].fc1) is mnn.Conv2d
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 1 and "FrozenBatchNorm2d ×1 (3)" in messages[0]
    assert "Permute" not in messages[0] and "SqueezeExcitation" not in messages[0]
    input = torch.randn(2, 3, 5, 5)
    model.train(), converted.train()
    torch.manual_seed(0)
    expected = model(input)
    torch.manual_seed(0)
    torch.testing.assert_close(converted(input), expected)


def test_compiles_into_one_graph(backend):
    """torch.compile(fullgraph=True) traces the noise's draw and the Function: a seed gives the eager result."""
    input = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(lambda x: mF.stochastic_depth(x, 0.5, "row"), backend="aot_eager", fullgraph=True)
    results = []
    for function in (compiled, lambda x: mF.stochastic_depth(x, 0.5, "row")):
        torch.manual_seed(0)
        output = function(input)
        results.append((output, *torch.autograd.grad(output.sum(), input)))
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected)
    torch._dynamo.reset()
