"""LayerNorm, BatchNorm, GroupNorm, InstanceNorm and F.normalize (functional and modules) against PyTorch.

gradcheck/gradgradcheck prove the compact closed-form backwards and their own backwards (double backward) against
finite differences of our forwards; parity tests compare values, gradients and running statistics with torch on
randomized shapes and options; bad arguments must raise what torch raises, in torch's order. Issue 12's examples:
float16/bfloat16 (and float32 parameters with them) no less precise than torch against float64 at realistic sizes,
running statistics in their dtype, the layouts of outputs and gradients, and inf/NaN landing where torch's do.
"""
import copy
import math

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch.autograd import gradcheck, gradgradcheck

import manual_conv.functional as mF
import manual_conv.nn as mnn
from manual_conv.ops.norm import (BatchNormEvalFunction, BatchNormFunction, GroupNormFunction, LayerNormFunction,
                                  NormalizeFunction)
from test_differential import assert_no_less_precise

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


# ---------------------------------------------------------------------------- float16 and bfloat16 precision


def errors_against_float64(function, inputs, upstream):
    """{'ours', 'torch', 'reference'}: (output, *gradients of the inputs) of function(mF or F, *inputs) in the
    inputs' dtypes, and of F in float64 (the same values, the same gradient from above)."""
    results = {}
    for key, library in (("ours", mF), ("torch", F), ("reference", F)):
        leaves = [t.double() if key == "reference" else t.clone() for t in inputs]
        leaves = [t.requires_grad_() for t in leaves]
        output = function(library, *leaves)
        grads = torch.autograd.grad(output, leaves, upstream.to(output.dtype))
        results[key] = [t.detach() for t in (output, *grads)]
    return results


def scaled_ulp_error(values, reference):
    """The largest |values − reference| in ulps of values' dtype at the larger of |reference| and its RMS: a
    norm-wise error. A result that cancels (x·α ≈ −β) carries float32's absolute rounding error, in torch's kernels
    as in ours, which in ulps of its own tiny magnitude is noise."""
    info = torch.finfo(values.dtype)
    reference = reference.double()
    magnitude = reference.abs().clamp(min=reference.square().mean().sqrt().item(), max=info.max)
    ulp = info.eps * torch.exp2(torch.floor(torch.log2(magnitude)))
    return ((values.double() - reference) / ulp).abs().max().item()


def assert_as_exact_as_torch(results):
    """Each float16/bfloat16 output and gradient no less precise than torch's against float64, give or take
    float32's own error in a result rounded once from float32 (0.05 ulp, as the differential harness); each float32
    one (the parameters' gradients in mixed precision, which torch sums partly in the input's half precision) no
    less precise than torch's or within float32's tolerance of float64 (2e-5, as the harness)."""
    for index, (ours, theirs, reference) in enumerate(zip(*results.values())):
        assert ours.dtype == theirs.dtype
        error, torch_error = scaled_ulp_error(ours, reference), scaled_ulp_error(theirs, reference)
        if ours.dtype in (torch.float16, torch.bfloat16):
            allowed = max(torch_error, 0.5) + 0.05
        else:
            allowed = max(torch_error, 2e-5 / torch.finfo(ours.dtype).eps)
        assert error <= allowed, f"result {index}: {error:.3f} ulp, torch's {torch_error:.3f}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("parameter_dtype", ["same", "float32"])
def test_layer_norm_over_768_features_in_half_precision_is_as_exact_as_torchs(dtype, parameter_dtype):
    """Item 8: float16/bfloat16 computed in float32 and rounded once (γ, β of the input's dtype or float32), over
    the 768 features of a transformer's tokens, forward and backward."""
    generator = torch.Generator().manual_seed(0)
    parameter_dtype = dtype if parameter_dtype == "same" else torch.float32
    input = (torch.randn(4, 32, 768, generator=generator, dtype=torch.float64) * 2 + 1).to(dtype)
    weight, bias = (torch.randn(768, generator=generator, dtype=torch.float64).to(parameter_dtype) for _ in range(2))
    upstream = torch.randn(4, 32, 768, generator=generator, dtype=torch.float64).to(dtype)
    results = errors_against_float64(lambda f, *args: f.layer_norm(args[0], (768,), *args[1:]),
                                     (input, weight, bias), upstream)
    assert_as_exact_as_torch(results)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_batch_norm_of_a_64x32x26x26_batch_in_half_precision_is_as_exact_as_torchs(dtype, training):
    """Item 8: the MNIST net's first activations in float16/bfloat16 with float32 parameters and running statistics
    (mixed precision), forward and backward; the running statistics stay float32 and end as torch's."""
    generator = torch.Generator().manual_seed(0)
    input = (torch.randn(64, 32, 26, 26, generator=generator, dtype=torch.float64) * 2 + 1).to(dtype)
    weight, bias = torch.randn(2, 32, generator=generator)
    upstream = torch.randn(64, 32, 26, 26, generator=generator, dtype=torch.float64).to(dtype)
    start = torch.randn(32, generator=generator), torch.rand(32, generator=generator) + 0.5
    running = []

    def batch_norm(library, input, weight, bias):
        running.append([statistic.to(weight.dtype) for statistic in start])
        return library.batch_norm(input, *running[-1], weight, bias, training=training)

    results = errors_against_float64(batch_norm, (input, weight, bias), upstream)
    assert_as_exact_as_torch(results)
    for ours, theirs in zip(*running[:2]):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("statistics_dtype", [torch.float32, torch.bfloat16])
def test_batch_norm_running_statistics_of_a_bfloat16_input_are_updated_as_torchs(statistics_dtype):
    """float32 running statistics of a bfloat16 input stay float32 and equal torch's (the batch's statistics in
    float32, not rounded to bfloat16 first); bfloat16 ones are updated in float32 and rounded once (torch multiplies
    and adds them in bfloat16), no farther from the float64 update than torch's."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(16, 8, 5, 5, generator=generator, dtype=torch.float64).to(torch.bfloat16)
    start = torch.randn(8, generator=generator), torch.rand(8, generator=generator) + 0.5
    results = {}
    for key, library, dtype in (("ours", mF, statistics_dtype), ("torch", F, statistics_dtype),
                                ("reference", F, torch.float64)):
        mean, var = (statistic.to(dtype) for statistic in start)
        library.batch_norm(input.to(torch.float64 if key == "reference" else torch.bfloat16), mean, var,
                           training=True, momentum=0.3)
        results[key] = mean, var
    for what, ours, theirs, reference in zip(("running mean", "running var"), *results.values()):
        assert ours.dtype == statistics_dtype
        if statistics_dtype == torch.float32:
            torch.testing.assert_close(ours, theirs)
        else:
            assert_no_less_precise(ours, theirs, reference, what)


# ------------------------------------------------------------------------------------- layouts, inf and NaN


@pytest.mark.parametrize("layout", ["transposed", "channels_last", "sliced"])
def test_layer_norm_output_and_gradient_are_contiguous_like_torch(layout):
    """Item 7: layer_norm of a transposed, channels_last or strided input is contiguous, as torch's, and so is the
    input's gradient."""
    base = torch.randn(2, 3, 4, 6)
    input = {"transposed": base.transpose(1, 2), "channels_last": base.contiguous(memory_format=torch.channels_last),
             "sliced": base[..., ::2]}[layout].requires_grad_()
    upstream = torch.randn(input.shape).contiguous(memory_format=torch.channels_last)
    output, expected = mF.layer_norm(input, input.shape[-1:]), F.layer_norm(input, input.shape[-1:])
    assert output.stride() == expected.stride() == torch.empty(input.shape).stride()
    (grad,) = torch.autograd.grad(output, input, upstream)
    (expected_grad,) = torch.autograd.grad(expected, input, upstream)
    assert grad.stride() == expected_grad.stride()
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("layout", ["channels_last", "one-channel-channels_last", "transposed", "sliced"])
def test_batch_norm_output_and_gradient_are_laid_out_like_torch(training, layout):
    """Item 7: batch_norm keeps a channels_last input channels_last, output and input gradient (a 1-channel one is
    contiguous, as torch decides the tie), and lays out a strided input's output as torch does."""
    channels = 1 if layout.startswith("one") else 3
    base = torch.randn(2, channels, 4, 6)
    input = {"transposed": base.transpose(2, 3), "sliced": base[..., ::2]}.get(
        layout, base.contiguous(memory_format=torch.channels_last)).requires_grad_()
    upstream, weight = torch.randn(input.shape), torch.randn(channels)
    results = []
    for library in (mF, F):
        output = library.batch_norm(input, torch.zeros(channels), torch.ones(channels), weight, training=training)
        results.append((output, *torch.autograd.grad(output, input, upstream)))
    for ours, theirs in zip(*results):
        assert ours.stride() == theirs.stride()
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("layout", ["contiguous", "sliced"])
def test_batch_norm_inf_and_nan_land_where_torchs_do(training, layout):
    """Item 4: torch folds a contiguous input's channel into y = x·α + β (α = r·γ, β = β − μ·α) and computes a
    strided one as ((x − μ)·r)·γ + β; an infinite γ gives NaN where x and μ share a sign in the first, ±inf in the
    second. Ours lands inf and NaN where torch's do, in the output and in the gradients (inf and NaN from above)."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4, 3, 5, 8, generator=generator) + 0.5
    input = base if layout == "contiguous" else base[..., ::2]
    weight = torch.tensor([math.inf, -1.0, 2.0])
    bias = torch.tensor([0.5, -math.inf, 1.0])
    upstream = torch.randn(input.shape, generator=generator)
    upstream[0, 2, 1, 1], upstream[1, 2, 0, 3] = math.inf, math.nan
    results = []
    for library in (mF, F):
        leaves = [t.clone().requires_grad_() for t in (input, weight, bias)]
        output = library.batch_norm(leaves[0], torch.full((3,), 0.25), torch.ones(3), *leaves[1:], training=training)
        results.append((output, *torch.autograd.grad(output, leaves, upstream)))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, equal_nan=True)


def test_layer_norm_inf_and_nan_land_where_torchs_do():
    """Item 4: the backward in torch's arrangement, dL/dx = r·ĝ + b·x + c, spreads an inf or NaN from above or
    in γ exactly as torch's does."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(4, 6, generator=generator)
    weight, bias = torch.randn(6, generator=generator), torch.randn(6, generator=generator)
    weight[1], bias[2], input[3, 4] = -math.inf, math.nan, math.inf
    upstream = torch.randn(4, 6, generator=generator)
    upstream[0, 0], upstream[2, 5] = math.inf, -math.inf
    results = []
    for library in (mF, F):
        leaves = [t.clone().requires_grad_() for t in (input, weight, bias)]
        output = library.layer_norm(leaves[0], (6,), *leaves[1:])
        results.append((output, *torch.autograd.grad(output, leaves, upstream)))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, equal_nan=True)


def test_batch_norm_of_an_empty_batch_computes_as_torch():
    """Item 8: no element, no dtype check: an empty integer batch times a float32 γ is an empty float32 tensor, as
    torch's input.clone() · γ[0] + β[0]."""
    input = torch.ones(0, 3, dtype=torch.int64)
    output = mF.batch_norm(input, None, None, torch.ones(3), torch.zeros(3), training=True)
    expected = F.batch_norm(input, None, None, torch.ones(3), torch.zeros(3), training=True)
    assert output.dtype == expected.dtype == torch.float32 and output.shape == expected.shape


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
    "layer-norm-integer-input-without-rows": ("layer_norm", (torch.ones(0, 2, dtype=torch.long), (2,)), {}),
    "layer-norm-complex-input": ("layer_norm", (torch.ones(3, 2, dtype=torch.complex64), (2,)), {}),
    "layer-norm-bool-input-float-weight": ("layer_norm", (torch.ones(3, 2, dtype=torch.bool), (2,)),
                                           dict(weight=torch.ones(2))),
    "layer-norm-mixed-dtype-before-shape": ("layer_norm", (X.double(), (3,)), dict(weight=torch.ones(2))),
    "layer-norm-half-weight-float-input": ("layer_norm", (X, (2,)), dict(weight=torch.ones(2).half())),
    "layer-norm-weight-and-bias-dtypes": ("layer_norm", (X.bfloat16(), (2,)),
                                          dict(weight=torch.ones(2).bfloat16(), bias=torch.ones(2))),
    "strided-integer-input-training": ("batch_norm", (torch.ones(3, 4, dtype=torch.long).t(), None, None),
                                       dict(training=True)),
    "strided-integer-input-float-weight": ("batch_norm", (torch.ones(3, 4, dtype=torch.long).t(), None, None),
                                           dict(weight=torch.ones(4), training=True)),
    "complex-input": ("batch_norm", (X.to(torch.complex64), RM, RV), {}),
    "input-float-weight-double": ("batch_norm", (X, None, None), dict(weight=torch.ones(3).double(), training=True)),
    "weight-float-bias-double": ("batch_norm", (X, RM, RV), dict(weight=torch.ones(3), bias=torch.ones(3).double())),
    "1d-input-training": ("batch_norm", (torch.randn(3), None, None), dict(training=True)),
    "1d-input-without-channels": ("batch_norm", (torch.randn(3), torch.zeros(0), torch.ones(0)), {}),
    "0d-input-training": ("batch_norm", (torch.randn(()), None, None), dict(training=True)),
    "empty-batch-empty-weight": ("batch_norm", (torch.randn(3, 0, 2), None, None), dict(weight=torch.ones(0))),
}

# GroupNorm, InstanceNorm, normalize
BAD_CALLS.update({
    "group-norm-1d-input": ("group_norm", (torch.randn(4), 2), {}),
    "group-norm-one-value-per-group": ("group_norm", (torch.randn(1, 2, 1), 2), {}),
    "group-norm-zero-groups": ("group_norm", (X, 0), {}),
    "group-norm-negative-groups": ("group_norm", (X, -1), {}),
    "group-norm-float-groups": ("group_norm", (X, 1.0), {}),
    "group-norm-groups-not-dividing": ("group_norm", (X, 2), {}),
    "group-norm-no-channels": ("group_norm", (torch.randn(2, 0, 3), 1), {}),
    "group-norm-empty-plane": ("group_norm", (torch.randn(2, 3, 0), 1), {}),
    "group-norm-weight-shape": ("group_norm", (X, 3), dict(weight=torch.ones(3, 1))),
    "group-norm-bias-shape": ("group_norm", (X, 3), dict(bias=torch.ones(4))),
    "group-norm-weight-double": ("group_norm", (X, 3), dict(weight=torch.ones(3).double())),
    "group-norm-integer-input": ("group_norm", (torch.ones(2, 3, 2, dtype=torch.long), 3), {}),
    "group-norm-integer-input-float-weight": ("group_norm", (torch.ones(2, 3, 2, dtype=torch.long), 3),
                                              dict(weight=torch.ones(3))),
    "group-norm-weight-and-bias-dtypes": ("group_norm", (X.bfloat16(), 3),
                                          dict(weight=torch.ones(3).bfloat16(), bias=torch.ones(3))),
    "group-norm-complex-empty-batch-requiring-grad": (
        "group_norm", (torch.zeros(0, 3, 2, dtype=torch.complex64), 3),
        dict(bias=torch.ones(3, dtype=torch.complex64, requires_grad=True))),
    "instance-norm-one-spatial-element": ("instance_norm", (torch.randn(2, 3, 1),), {}),
    "instance-norm-2d-input": ("instance_norm", (torch.randn(2, 3),), {}),
    "instance-norm-eval-without-running-stats": ("instance_norm", (X,), dict(use_input_stats=False)),
    "instance-norm-one-running-stat": ("instance_norm", (X, RM), {}),
    "instance-norm-one-running-stat-of-another-dtype": ("instance_norm", (X, RM.double()), {}),
    "instance-norm-running-mean-size": ("instance_norm", (X, torch.zeros(4), RV), {}),
    "instance-norm-weight-size": ("instance_norm", (X,), dict(weight=torch.ones(4))),
    "instance-norm-weight-2d": ("instance_norm", (X,), dict(weight=torch.ones(3, 1))),
    "instance-norm-weight-double": ("instance_norm", (X,), dict(weight=torch.ones(3).double())),
    "instance-norm-momentum-none": ("instance_norm", (X,), dict(momentum=None)),
    "instance-norm-integer-input": ("instance_norm", (torch.ones(2, 3, 4, dtype=torch.long),), {}),
    "instance-norm-empty-batch-weight": ("instance_norm", (torch.randn(0, 3, 4),), dict(weight=torch.ones(3))),
    "normalize-integer-input": ("normalize", (torch.ones(2, 3, dtype=torch.long),), {}),
    "normalize-dim-out-of-range": ("normalize", (torch.randn(3),), {}),
    "normalize-repeated-dim": ("normalize", (X,), dict(dim=(1, 1))),
    "normalize-inf-norm-of-nothing": ("normalize", (torch.randn(2, 0),), dict(p=math.inf)),
    "normalize-out-dtype": ("normalize", (X,), dict(out=torch.empty(0, dtype=torch.long))),
})


@pytest.mark.parametrize("case", BAD_CALLS, ids=list(BAD_CALLS))
def test_bad_input_raises_as_torch(case):
    function, args, kwargs = BAD_CALLS[case]
    with pytest.raises(Exception) as expected:
        getattr(F, function)(*args, **kwargs)
    with pytest.raises(expected.type) as raised:
        getattr(mF, function)(*args, **kwargs)
    assert str(raised.value) == str(expected.value)


# --------------------------------------------------------------------------- GroupNorm, InstanceNorm, normalize


@pytest.mark.parametrize("input_shape, num_groups", [((3, 4), 2), ((2, 6, 3), 3), ((2, 4, 2, 3), 2), ((2, 4, 3, 2), 1),
                                                    ((2, 2, 1, 2, 2), 2)],
                         ids=["2d", "3d", "4d", "4d-one-group", "5d-one-channel-per-group"])
@pytest.mark.parametrize("affine", ["both", "weight-only", "bias-only", "none"])
def test_group_norm_gradcheck(input_shape, num_groups, affine):
    torch.manual_seed(0)
    channels = input_shape[1]
    inputs = [leaf(*input_shape)] + [leaf(channels) for _ in range(affine.count("-") + 2 * (affine == "both"))]

    def group_norm(input, *parameters):
        weight = parameters[0] if affine in ("both", "weight-only") else None
        bias = parameters[-1] if affine in ("both", "bias-only") else None
        return mF.group_norm(input, num_groups, weight, bias, eps=1e-3)

    assert gradcheck(group_norm, inputs)
    assert gradgradcheck(group_norm, inputs)


@pytest.mark.parametrize("input_shape", [(3, 2, 4), (2, 3, 2, 3)], ids=["1d", "2d"])
@pytest.mark.parametrize("use_input_stats", [True, False], ids=["instance-stats", "running-stats"])
def test_instance_norm_gradcheck(input_shape, use_input_stats):
    torch.manual_seed(0)
    channels = input_shape[1]
    running_mean, running_var = torch.randn(channels, dtype=torch.float64), torch.rand(channels, dtype=torch.float64)

    def instance_norm(input, weight, bias):
        return mF.instance_norm(input, running_mean.clone(), running_var.clone(), weight, bias,
                                use_input_stats=use_input_stats, eps=1e-3)

    inputs = [leaf(*input_shape), leaf(channels), leaf(channels)]
    assert gradcheck(instance_norm, inputs)
    assert gradgradcheck(instance_norm, inputs)


@pytest.mark.parametrize("p", [2.0, 1.0, 0.0, 3.0, 1.5, 0.5, -1.0, math.inf, -math.inf])
@pytest.mark.parametrize("dim", [1, (0, 2), None], ids=["dim1", "dims02", "all"])
def test_normalize_gradcheck(p, dim):
    torch.manual_seed(0)
    input = torch.randn(3, 4, 2, dtype=torch.float64).requires_grad_()
    assert gradcheck(lambda x: mF.normalize(x, p, dim), (input,))
    assert gradgradcheck(lambda x: mF.normalize(x, p, dim), (input,))


def test_normalize_gradcheck_complex_and_clamped():
    """A complex input (n real, conjugate-Wirtinger gradients) and slices whose norm is below ε (divided by ε)."""
    torch.manual_seed(0)
    input = torch.randn(3, 4, dtype=torch.complex128).requires_grad_()
    assert gradcheck(lambda x: mF.normalize(x, 2.0, 1), (input,))
    assert gradgradcheck(lambda x: mF.normalize(x, 3.0, 0), (input,))
    small = (torch.randn(3, 4, dtype=torch.float64) * 0.1).requires_grad_()
    assert gradcheck(lambda x: mF.normalize(x, 2.0, 1, eps=0.3), (small,))


@settings(deadline=None)
@given(st.integers(0, 3), st.sampled_from([(1, 1), (2, 1), (2, 2), (3, 3), (4, 2)]),
       st.lists(st.integers(1, 4), max_size=2), st.sampled_from(["both", "weight-only", "none"]),
       st.sampled_from([torch.float64, torch.float32]), st.booleans(), st.integers(0, 2**16))
def test_group_norm_parity(batch, groups_and_per_group, spatial, affine, dtype, channels_last, seed):
    num_groups, per_group = groups_and_per_group
    shape = (batch, num_groups * per_group, *spatial)
    torch.manual_seed(seed)
    inputs = [torch.randn(shape, dtype=dtype) * 2 + 1]
    if channels_last and len(shape) == 4:
        inputs[0] = inputs[0].contiguous(memory_format=torch.channels_last)
    inputs += [torch.randn(shape[1], dtype=dtype) for _ in range({"both": 2, "weight-only": 1, "none": 0}[affine])]
    if per_group * math.prod(spatial) == 1:  # one value per group: the input's gradient is rounding noise
        return

    def call(function):
        return lambda input, *parameters: function(input, num_groups, *parameters, eps=1e-5)

    assert_same_values_and_gradients(call(F.group_norm), call(mF.group_norm), inputs, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_group_norm_of_32_groups_in_half_precision_is_as_exact_as_torchs(dtype, layout):
    """float16/bfloat16 computed in float32 and rounded once, with float32 γ and β (mixed precision), over a
    ResNet-sized 64×28×28 activation in 32 groups, forward and backward, in both of torch's kernels."""
    generator = torch.Generator().manual_seed(0)
    input = (torch.randn(4, 64, 28, 28, generator=generator, dtype=torch.float64) * 2 + 1).to(dtype)
    if layout == "channels_last":
        input = input.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(2, 64, generator=generator)
    upstream = torch.randn(4, 64, 28, 28, generator=generator, dtype=torch.float64).to(dtype)
    results = errors_against_float64(lambda f, *args: f.group_norm(args[0], 32, *args[1:]), (input, weight, bias),
                                     upstream)
    assert_as_exact_as_torch(results)


@pytest.mark.parametrize("layout", ["channels_last", "one-channel-channels_last", "transposed", "sliced"])
def test_group_norm_output_and_gradient_are_laid_out_like_torch(layout):
    """Output and input gradient in the input's suggested memory format, as torch's kernel allocates them
    (channels_last stays channels_last; a strided input gives its suggested format)."""
    channels = 1 if layout.startswith("one") else 4
    base = torch.randn(2, channels, 4, 6)
    input = {"transposed": base.transpose(2, 3), "sliced": base[..., ::2]}.get(
        layout, base.contiguous(memory_format=torch.channels_last)).requires_grad_()
    upstream, weight = torch.randn(input.shape), torch.randn(channels)
    results = []
    for library in (mF, F):
        output = library.group_norm(input, 1, weight)
        results.append((output, *torch.autograd.grad(output, input, upstream)))
    for ours, theirs in zip(*results):
        assert ours.stride() == theirs.stride()
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_group_norm_inf_and_nan_land_where_torchs_do(layout, affine):
    """torch's kernel folds y = x·α + b (α = r·γ, b = β − α·μ) for channels_last input or with γ, β, and computes
    (x − μ)·r for contiguous input without them; an infinite γ gives NaN where x and μ share a sign, an infinite x
    a NaN group. Its backward sums each channel's plane before the group's channels (ds_c·γ_c): an infinite γ_c
    times a plane summing to 0 is NaN. Ours lands inf and NaN where torch's do, output and every gradient."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(3, 6, 4, 5, generator=generator) + 0.5
    input[2, 4, 1, 1] = math.inf
    if layout == "channels_last":
        input = input.contiguous(memory_format=torch.channels_last)
    weight = torch.tensor([math.inf, -1.0, 2.0, 1.0, 0.5, -math.inf])
    bias = torch.tensor([0.5, -math.inf, 1.0, 0.0, 2.0, 1.0])
    upstream = torch.randn(input.shape, generator=generator)
    upstream[0, 2, 1, 1], upstream[1, 3, 0, 3] = math.inf, math.nan
    results = []
    for library in (mF, F):
        leaves = [t.clone().requires_grad_() for t in ((input, weight, bias) if affine else (input,))]
        output = library.group_norm(leaves[0], 3, *leaves[1:])
        results.append((output, *torch.autograd.grad(output, leaves, upstream)))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, equal_nan=True)


@pytest.mark.parametrize("name, shape, kwargs", [
    ("InstanceNorm1d", (4, 3, 5), {}),
    ("InstanceNorm1d", (3, 5), dict(affine=True)),
    ("InstanceNorm2d", (2, 3, 4, 4), dict(affine=True, track_running_stats=True)),
    ("InstanceNorm2d", (3, 4, 4), dict(track_running_stats=True, momentum=None)),
    ("InstanceNorm3d", (2, 3, 2, 3, 2), dict(affine=True, track_running_stats=True, momentum=0.3)),
], ids=["1d", "1d-unbatched-affine", "2d-tracked", "2d-unbatched-cumulative", "3d"])
def test_instance_norm_modules_match_torch(name, shape, kwargs):
    """Training steps with an SGD update between them, then evaluation (the running statistics when tracked):
    outputs, gradients, parameters and running statistics stay equal to torch.nn's; unbatched input too."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(3, **kwargs).double()
    ours = getattr(mnn, name)(3, **kwargs).double()
    assert isinstance(ours, getattr(torch.nn, name)) and repr(ours) == repr(theirs)
    ours.load_state_dict(theirs.state_dict())
    parameters = list(theirs.parameters())
    optimizers = [torch.optim.SGD(module.parameters(), lr=0.1) for module in (theirs, ours)] if parameters else []
    for step in range(3):
        input = torch.randn(shape, dtype=torch.float64) * (step + 1) + step
        inputs = [input.clone().requires_grad_() for _ in range(2)]
        grad_output = torch.randn(shape, dtype=torch.float64)
        for module, input in zip((theirs, ours), inputs):
            module(input).backward(grad_output)
        torch.testing.assert_close(inputs[1].grad, inputs[0].grad)
        for (key, expected), actual in zip(theirs.state_dict().items(), ours.state_dict().values()):
            torch.testing.assert_close(actual, expected, msg=f"step {step}: {key}")
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
    theirs.eval(), ours.eval()
    input = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(ours(input), theirs(input))


@pytest.mark.parametrize("statistics_dtype", [torch.float64, torch.bfloat16])
def test_instance_norm_running_statistics_take_part_in_the_inputs_dtype(statistics_dtype):
    """torch converts running statistics of another dtype than γ's (else the input's) to it, updates the repeats
    there and converts their mean back; in evaluation it neither converts back nor writes them."""
    input = torch.randn(4, 3, 5)
    for use_input_stats in (True, False):
        results = []
        for library in (mF, F):
            statistics = torch.zeros(3, dtype=statistics_dtype) + 0.25, torch.ones(3, dtype=statistics_dtype)
            output = library.instance_norm(input, *statistics, use_input_stats=use_input_stats, momentum=0.5)
            results.append((output, *statistics))
        for ours, theirs in zip(*results):
            assert ours.dtype == theirs.dtype
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_instance_norm_output_is_contiguous_and_runs_through_batch_norm():
    """torch computes instance norm as the batch norm of input.contiguous() viewed as one sample of N·C channels:
    a channels_last input gives a contiguous output (a view of that batch norm's), and in-place ops on it work."""
    input = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    output = mF.instance_norm(input)
    assert output.stride() == F.instance_norm(input).stride() == (48, 16, 4, 1)
    assert isinstance(output.grad_fn.next_functions[0][0], BatchNormFunction._backward_cls)
    output.mul_(2).sum().backward()
    expected = input.detach().clone().requires_grad_()
    F.instance_norm(expected).mul(2).sum().backward()
    torch.testing.assert_close(input.grad, expected.grad)


@pytest.mark.parametrize("use_input_stats", [True, False], ids=["instance-stats", "running-stats"])
def test_instance_norm_of_one_sample_with_a_channels_last_gradient_is_the_formulas(use_input_stats):
    """Deliberately not as torch: for a batch of one 4-D sample and a channels_last gradient from above, torch's
    F.instance_norm returns wrong input, weight and bias gradients (torch 2.14.1); ours are those of the formula
    written with torch's own operations, as for any other layout."""
    generator = torch.Generator().manual_seed(0)
    input, upstream = torch.randn(2, 1, 3, 4, 2, generator=generator, dtype=torch.float64)
    upstream = upstream.contiguous(memory_format=torch.channels_last)
    weight, bias, running_mean = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    running_var = torch.rand(3, generator=generator, dtype=torch.float64) + 0.5

    def formula(x, w, b):
        if use_input_stats:
            mean, var = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)
        else:
            mean, var = running_mean.view(1, 3, 1, 1), running_var.view(1, 3, 1, 1)
        return (x - mean) / torch.sqrt(var + 1e-5) * w.view(1, 3, 1, 1) + b.view(1, 3, 1, 1)

    def ours(x, w, b):
        return mF.instance_norm(x, running_mean.clone(), running_var.clone(), w, b, use_input_stats)

    results = []
    for function in (formula, ours, lambda x, w, b: F.instance_norm(x, running_mean.clone(), running_var.clone(), w, b,
                                                                    use_input_stats)):
        leaves = [t.clone().requires_grad_() for t in (input, weight, bias)]
        results.append(torch.autograd.grad(function(*leaves), leaves, upstream))
    expected, actual, torchs = results
    for ours_grad, expected_grad in zip(actual, expected):
        torch.testing.assert_close(ours_grad, expected_grad)
    assert not torch.allclose(torchs[0], expected[0])  # torch's bug: when it is fixed, the harness can draw this


def test_instance_norm_of_an_empty_batch_leaves_running_stats_alone():
    """Deliberately not as torch: torch sets the running statistics to the mean of no repeats (NaN) for an empty
    batch; here they stay as they are, as batch_norm leaves them."""
    running_mean, running_var = torch.randn(3), torch.rand(3)
    expected = running_mean.clone(), running_var.clone()
    assert mF.instance_norm(torch.randn(0, 3, 4), running_mean, running_var).shape == (0, 3, 4)
    assert torch.equal(running_mean, expected[0]) and torch.equal(running_var, expected[1])


@pytest.mark.parametrize("p", [2.0, 1.0, 0.0, 3.0, 0.5, math.inf, "fro"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex64])
def test_normalize_matches_torch(p, dtype):
    torch.manual_seed(0)
    input = torch.randn(4, 5, 3, dtype=dtype)
    input[1] = 0  # a zero slice: divided by ε
    for dim in (1, -1, (0, 2), None):
        assert_same_values_and_gradients(lambda x: F.normalize(x, p, dim), lambda x: mF.normalize(x, p, dim),
                                         [input], torch.float32 if dtype != torch.float64 else dtype)


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, math.inf])
def test_normalize_inf_and_nan_land_where_torchs_do(p):
    """An infinite x makes its slice's norm infinite: x/∞ is 0 and ∞/∞ NaN; NaN spreads over its slice; an
    infinite gradient from above meets 0 and ∞ in the quotient rule's terms as in torch's autograd."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(5, 4, generator=generator)
    input[1, 2], input[3, 0] = math.inf, math.nan
    upstream = torch.randn(5, 4, generator=generator)
    upstream[0, 1], upstream[2, 3], upstream[1, 0] = math.inf, -math.inf, math.inf
    results = []
    for library in (mF, F):
        leaf_ = input.clone().requires_grad_()
        output = library.normalize(leaf_, p)
        results.append((output, *torch.autograd.grad(output, leaf_, upstream)))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_normalize_of_512_features_in_half_precision_is_as_exact_as_torchs(dtype):
    """An embedding's 512 features normalized in float16/bfloat16: computed in float32 and rounded once (torch
    rounds the norm, the clamp and the quotient, and every step of the backward)."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(64, 512, generator=generator, dtype=torch.float64).to(dtype)
    upstream = torch.randn(64, 512, generator=generator, dtype=torch.float64).to(dtype)
    assert_as_exact_as_torch(errors_against_float64(lambda f, x: f.normalize(x, dim=-1), (input,), upstream))


def test_normalize_out():
    """out= receives the result (resized, as torch.div's out=), and an input requiring grad is refused."""
    input = torch.randn(3, 4)
    out, expected = torch.empty(0), torch.empty(0)
    assert mF.normalize(input, out=out) is out
    F.normalize(input, out=expected)
    assert torch.equal(out, expected)
    with pytest.raises(RuntimeError, match="out=... arguments don't support automatic differentiation"):
        mF.normalize(input.requires_grad_(), out=out)


def test_group_norm_and_normalize_graphs_are_ours():
    input = leaf(2, 4, 3)
    assert isinstance(mF.group_norm(input, 2).grad_fn, GroupNormFunction._backward_cls)
    assert isinstance(mF.normalize(input).grad_fn, NormalizeFunction._backward_cls)


@pytest.mark.parametrize("kwargs", [{}, dict(affine=False), dict(eps=1e-3)], ids=["affine", "plain", "eps"])
def test_group_norm_module_matches_torch(kwargs):
    theirs = torch.nn.GroupNorm(2, 6, **kwargs).double()
    ours = mnn.GroupNorm(2, 6, **kwargs).double()
    with torch.no_grad():
        for parameter in theirs.parameters():
            parameter.normal_()
    ours.load_state_dict(theirs.state_dict())
    assert repr(ours) == repr(theirs) and isinstance(ours, torch.nn.GroupNorm)
    assert_same_values_and_gradients(theirs, ours, [torch.randn(3, 6, 2, 2, dtype=torch.float64)], torch.float64)
    for expected, actual in zip(theirs.parameters(), ours.parameters()):
        torch.testing.assert_close(actual.grad, expected.grad)


@pytest.mark.parametrize("name, shape", [("LazyInstanceNorm1d", (2, 3, 5)), ("LazyInstanceNorm2d", (2, 3, 4, 4)),
                                         ("LazyInstanceNorm3d", (2, 3, 2, 3, 2))])
def test_lazy_instance_norms_become_our_twins_and_match_torch(name, shape):
    input = torch.randn(shape, dtype=torch.float64)
    outputs = []
    for library in (mnn, torch.nn):
        layer = getattr(library, name)(affine=True, track_running_stats=True).double()
        outputs.append((layer(input), layer.running_mean))
    assert type(layer) is torch.nn.modules.instancenorm.__dict__[name.removeprefix("Lazy")]
    for ours, theirs in zip(*outputs):
        torch.testing.assert_close(ours, theirs)
    ours = getattr(mnn, name)(affine=True)
    output = ours(input.float())
    assert type(ours) is getattr(mnn, name.removeprefix("Lazy"))
    assert isinstance(output.grad_fn.next_functions[0][0], BatchNormFunction._backward_cls)


@pytest.mark.parametrize("function", [
    lambda x, w, b: mF.group_norm(x, 2, w, b),
    lambda x, w, b: mF.instance_norm(x, torch.zeros(4, dtype=x.dtype), torch.ones(4, dtype=x.dtype), w, b),
    lambda x, w, b: mF.normalize(x * w.view(1, 4, 1, 1) + b.view(1, 4, 1, 1), p=3.0, dim=(1, 2)),
], ids=["group_norm", "instance_norm", "normalize"])
def test_compiles_into_one_graph(backend, function):
    """torch.compile(fullgraph=True) traces forward and backward, with values and gradients unchanged."""
    inputs = [torch.randn(shape, dtype=torch.float64, requires_grad=True) for shape in ((2, 4, 3, 3), (4,), (4,))]
    compiled = torch.compile(function, backend="aot_eager", fullgraph=True)
    upstream = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    results = [(output, *torch.autograd.grad(output, inputs, upstream)) for output in (compiled(*inputs),
                                                                                         function(*inputs))]
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected)
    torch._dynamo.reset()
