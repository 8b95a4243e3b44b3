"""LayerNorm and BatchNorm (functional and modules) against PyTorch.

gradcheck/gradgradcheck prove the compact closed-form backwards and their own backwards (double backward) against
finite differences of our forwards; parity tests compare values, gradients and running statistics with torch on
randomized shapes and options; bad arguments must raise what torch raises.
"""
import copy

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch.autograd import gradcheck, gradgradcheck

import manual_conv.functional as mF
import manual_conv.nn as mnn
from manual_conv.ops.norm import BatchNormEvalFunction, BatchNormFunction, LayerNormFunction

# float32: a single normalized value has x − μ = 0 up to rounding, which 1/√ε (≈ 316) magnifies in torch's kernel
TOLERANCES = {torch.float64: (1e-9, 1e-11), torch.float32: (1e-4, 1e-4)}


def leaf(*shape, low=None):
    tensor = torch.randn(*shape, dtype=torch.float64) if low is None else torch.rand(*shape, dtype=torch.float64) + low
    return tensor.requires_grad_()


# ---------------------------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(
    "input_shape, normalized_shape",
    [((3, 5), (5,)), ((2, 3, 4), (3, 4)), ((2, 2, 2, 3), (2, 3)), ((4,), (4,))],
    ids=["2d", "two-dims", "4d", "unbatched"],
)
@pytest.mark.parametrize("affine", ["both", "weight-only", "none"])
def test_layer_norm_gradcheck(input_shape, normalized_shape, affine):
    torch.manual_seed(0)
    inputs = [leaf(*input_shape)]
    if affine != "none":
        inputs.append(leaf(*normalized_shape))
    if affine == "both":
        inputs.append(leaf(*normalized_shape))

    def layer_norm(input, weight=None, bias=None):
        return mF.layer_norm(input, normalized_shape, weight, bias, eps=1e-3)

    assert gradcheck(layer_norm, inputs)
    assert gradgradcheck(layer_norm, inputs)


@pytest.mark.parametrize("input_shape", [(4, 3), (3, 2, 4), (2, 3, 2, 3)], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_batch_norm_gradcheck(input_shape, training, affine):
    torch.manual_seed(0)
    channels = input_shape[1]
    running_mean, running_var = torch.randn(channels, dtype=torch.float64), torch.rand(channels, dtype=torch.float64)
    inputs = [leaf(*input_shape)] + ([leaf(channels), leaf(channels)] if affine else [])

    def batch_norm(input, weight=None, bias=None):
        # fresh copies: a training step updates the running statistics in place
        return mF.batch_norm(input, running_mean.clone(), running_var.clone(), weight, bias, training, eps=1e-3)

    assert gradcheck(batch_norm, inputs)
    assert gradgradcheck(batch_norm, inputs)


# ----------------------------------------------------------------------------------------- parity with torch


def assert_same_values_and_gradients(torch_fn, our_fn, inputs, dtype):
    rtol, atol = TOLERANCES[dtype]
    theirs = [t.detach().clone().requires_grad_() for t in inputs]
    ours = [t.detach().clone().requires_grad_() for t in inputs]
    expected, actual = torch_fn(*theirs), our_fn(*ours)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
    grad_output = torch.randn_like(expected)
    for expected_grad, actual_grad in zip(
        torch.autograd.grad(expected, theirs, grad_output), torch.autograd.grad(actual, ours, grad_output)
    ):
        torch.testing.assert_close(actual_grad, expected_grad, rtol=rtol, atol=atol)


@settings(deadline=None)  # shared, noisy machine: never a timed assertion
@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=4),
    st.data(),
    st.sampled_from(["both", "weight-only", "bias-only", "none"]),
    st.sampled_from([torch.float64, torch.float32]),
    st.sampled_from([1e-5, 0.1]),
)
def test_layer_norm_parity(shape, data, affine, dtype, eps):
    normalized_ndim = data.draw(st.integers(1, len(shape)))
    normalized_shape = shape[len(shape) - normalized_ndim:]
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    inputs = [torch.randn(shape, dtype=dtype) * 3 + 1]
    weight_index = bias_index = None
    if affine in ("both", "weight-only"):
        weight_index = len(inputs)
        inputs.append(torch.randn(normalized_shape, dtype=dtype))
    if affine in ("both", "bias-only"):
        bias_index = len(inputs)
        inputs.append(torch.randn(normalized_shape, dtype=dtype))

    def call(function):
        def layer_norm(*args):
            weight = None if weight_index is None else args[weight_index]
            bias = None if bias_index is None else args[bias_index]
            return function(args[0], normalized_shape, weight, bias, eps)

        return layer_norm

    assert_same_values_and_gradients(call(F.layer_norm), call(mF.layer_norm), inputs, dtype)


@settings(deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 4),
    st.lists(st.integers(1, 3), max_size=2),
    st.booleans(),
    st.booleans(),
    st.sampled_from([0.1, 0.5, 1.0]),
    st.sampled_from([torch.float64, torch.float32]),
    st.integers(0, 2**16),
)
def test_batch_norm_parity(batch, channels, spatial, training, affine, momentum, dtype, seed):
    """Output, gradients, and the running statistics (updated in place when training) as torch."""
    shape = (batch, channels, *spatial)
    if training and batch * torch.Size(spatial).numel() == 1:
        batch, shape = 2, (2, channels, *spatial)
    torch.manual_seed(seed)
    running = [torch.randn(channels, dtype=dtype), torch.rand(channels, dtype=dtype) + 0.1]
    expected_running, actual_running = copy.deepcopy(running), copy.deepcopy(running)
    inputs = [torch.randn(shape, dtype=dtype) * 2 - 1]
    if affine:
        inputs += [torch.randn(channels, dtype=dtype), torch.randn(channels, dtype=dtype)]

    def call(function, running_stats):
        def batch_norm(input, weight=None, bias=None):
            return function(input, *running_stats, weight, bias, training, momentum, 1e-5)

        return batch_norm

    assert_same_values_and_gradients(
        call(F.batch_norm, expected_running), call(mF.batch_norm, actual_running), inputs, dtype
    )
    for actual, expected in zip(actual_running, expected_running):
        torch.testing.assert_close(actual, expected, rtol=TOLERANCES[dtype][0], atol=TOLERANCES[dtype][1])


def test_batch_norm_without_running_stats_uses_batch_statistics():
    input = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(
        mF.batch_norm(input, None, None, training=True), F.batch_norm(input, None, None, training=True)
    )


def test_mixed_precision_parameters_keep_the_input_dtype():
    input = torch.randn(4, 3, 5).to(torch.bfloat16)
    weight, bias = torch.randn(5), torch.randn(5)
    output = mF.layer_norm(input, (5,), weight, bias)
    assert output.dtype == F.layer_norm(input, (5,), weight, bias).dtype == torch.bfloat16
    torch.testing.assert_close(output, F.layer_norm(input, (5,), weight, bias), rtol=0.05, atol=0.05)
    running_mean, running_var = torch.zeros(3), torch.ones(3)
    output = mF.batch_norm(input, running_mean, running_var, training=True)
    assert output.dtype == torch.bfloat16 and running_mean.dtype == torch.float32


def test_empty_batch_leaves_running_stats_alone():
    running_mean, running_var = torch.randn(3), torch.rand(3)
    expected_mean, expected_var = running_mean.clone(), running_var.clone()
    output = mF.batch_norm(torch.randn(0, 3, 2), running_mean, running_var, training=True)
    assert output.shape == (0, 3, 2)
    assert torch.equal(running_mean, expected_mean) and torch.equal(running_var, expected_var)


def test_grad_fn_is_ours():
    input = leaf(4, 3, 2)
    assert isinstance(mF.layer_norm(input, (3, 2)).grad_fn, LayerNormFunction._backward_cls)
    assert isinstance(mF.batch_norm(input, None, None, training=True).grad_fn, BatchNormFunction._backward_cls)
    eval_output = mF.batch_norm(input, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    assert isinstance(eval_output.grad_fn, BatchNormEvalFunction._backward_cls)


# --------------------------------------------------------------------------------------------------- modules


@pytest.mark.parametrize(
    "name, kwargs, input_shape",
    [
        ("BatchNorm1d", {}, (6, 3)),
        ("BatchNorm1d", dict(momentum=None), (4, 3, 5)),
        ("BatchNorm2d", {}, (3, 4, 3, 3)),
        ("BatchNorm2d", dict(momentum=None, eps=1e-3), (3, 4, 3, 3)),
        ("BatchNorm2d", dict(affine=False, momentum=0.3), (3, 4, 2, 2)),
        ("BatchNorm2d", dict(track_running_stats=False), (3, 4, 2, 2)),
    ],
    ids=["1d", "1d-cumulative", "2d", "2d-cumulative", "2d-no-affine", "2d-untracked"],
)
def test_batch_norm_modules_track_running_stats_as_torch(name, kwargs, input_shape):
    """Several training steps (with an SGD update between them), then evaluation: outputs, parameter
    gradients, running statistics and num_batches_tracked stay equal to torch.nn's."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(input_shape[1], **kwargs).double()
    ours = getattr(mnn, name)(input_shape[1], **kwargs).double()
    ours.load_state_dict(theirs.state_dict())
    assert repr(ours) == repr(theirs) and isinstance(ours, getattr(torch.nn, name))
    affine = kwargs.get("affine", True)
    optimizers = [torch.optim.SGD(module.parameters(), lr=0.1) for module in (theirs, ours)] if affine else []
    for step in range(4):
        input = torch.randn(input_shape, dtype=torch.float64) * (step + 1) + step
        grad_output = torch.randn(input_shape, dtype=torch.float64)
        inputs = [input.clone().requires_grad_() for _ in range(2)]
        for module, module_input in zip((theirs, ours), inputs):
            module(module_input).backward(grad_output)
        torch.testing.assert_close(inputs[1].grad, inputs[0].grad)
        for (key, expected), actual in zip(theirs.state_dict().items(), ours.state_dict().values()):
            torch.testing.assert_close(actual, expected, msg=f"step {step}: {key}")
        for expected, actual in zip(theirs.parameters(), ours.parameters()):
            torch.testing.assert_close(actual.grad, expected.grad)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
    theirs.eval(), ours.eval()
    input = torch.randn(input_shape, dtype=torch.float64)
    torch.testing.assert_close(ours(input), theirs(input))


@pytest.mark.parametrize(
    "kwargs",
    [{}, dict(elementwise_affine=False), dict(bias=False), dict(eps=1e-3)],
    ids=["affine", "none", "no-bias", "eps"],
)
def test_layer_norm_module_matches_torch(kwargs):
    theirs = torch.nn.LayerNorm((3, 4), **kwargs).double()
    ours = mnn.LayerNorm((3, 4), **kwargs).double()
    with torch.no_grad():
        for parameter in theirs.parameters():
            parameter.normal_()
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    assert repr(ours) == repr(theirs)
    input = torch.randn(2, 3, 4, dtype=torch.float64)
    assert_same_values_and_gradients(theirs, ours, [input], torch.float64)
    for expected, actual in zip(theirs.parameters(), ours.parameters()):
        torch.testing.assert_close(actual.grad, expected.grad)


def test_batch_norm_module_checks_input_dims_as_torch():
    with pytest.raises(ValueError, match="expected 4D input"):
        mnn.BatchNorm2d(3)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        mnn.BatchNorm1d(3)(torch.randn(2, 3, 4, 4))


# ------------------------------------------------------------------------------------------------- bad input

X = torch.randn(4, 3, 2, 2)
RM, RV = torch.zeros(3), torch.ones(3)
# id: (function, positional arguments, keyword arguments)
BAD_CALLS = {
    "one-value-per-channel": ("batch_norm", (torch.randn(1, 3), RM, RV), dict(training=True)),
    "one-value-per-channel-4d": ("batch_norm", (torch.randn(1, 3, 1, 1), RM, RV), dict(training=True)),
    "eps-zero-training": ("batch_norm", (X, RM, RV), dict(training=True, eps=0.0)),
    "eps-negative": ("batch_norm", (X, RM, RV), dict(eps=-1.0)),
    "running-mean-size": ("batch_norm", (X, torch.zeros(4), RV), dict(training=True)),
    "running-var-size": ("batch_norm", (X, RM, torch.ones(4)), {}),
    "weight-size": ("batch_norm", (X, RM, RV), dict(weight=torch.ones(4), training=True)),
    "bias-size": ("batch_norm", (X, RM, RV), dict(bias=torch.ones(2))),
    "eval-without-running-mean": ("batch_norm", (X, None, None), {}),
    "eval-without-running-var": ("batch_norm", (X, RM, None), {}),
    "training-with-one-running-stat": ("batch_norm", (X, RM, None), dict(training=True)),
    "running-mean-requires-grad": ("batch_norm", (X, torch.zeros(3, requires_grad=True), RV), dict(training=True)),
    "running-stats-dtype": ("batch_norm", (X, RM.double(), RV.double()), dict(training=True)),
    "input-double-params-float": ("batch_norm", (X.double(), RM, RV), {}),
    "integer-input": ("batch_norm", (torch.ones(4, 3, dtype=torch.long), RM, RV), dict(training=True)),
    "1d-input": ("batch_norm", (torch.randn(3), RM, RV), {}),
    "momentum-none": ("batch_norm", (X, RM, RV), dict(training=True, momentum=None)),
    "normalized-shape-int": ("layer_norm", (X, 2), {}),
    "normalized-shape-float": ("layer_norm", (X, (2.0,)), {}),
    "normalized-shape-empty": ("layer_norm", (X, ()), {}),
    "normalized-shape-mismatch": ("layer_norm", (X, (3, 2)), {}),
    "normalized-shape-too-long": ("layer_norm", (X, (1, 4, 3, 2, 2)), {}),
    "layer-norm-weight-shape": ("layer_norm", (X, (2, 2)), dict(weight=torch.ones(4))),
    "layer-norm-bias-shape": ("layer_norm", (X, (2,)), dict(bias=torch.ones(3))),
    "layer-norm-weight-dtype": ("layer_norm", (X, (2,)), dict(weight=torch.ones(2, dtype=torch.float64))),
    "layer-norm-integer-input": ("layer_norm", (torch.ones(3, 2, dtype=torch.long), (2,)), {}),
}


@pytest.mark.parametrize("case", BAD_CALLS, ids=list(BAD_CALLS))
def test_bad_input_raises_as_torch(case):
    function, args, kwargs = BAD_CALLS[case]
    with pytest.raises(Exception) as expected:
        getattr(F, function)(*args, **kwargs)
    with pytest.raises(expected.type) as raised:
        getattr(mF, function)(*args, **kwargs)
    assert str(raised.value) == str(expected.value)
