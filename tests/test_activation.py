"""Activations by hand (manual_conv.ops.activation): relu, sigmoid, tanh, gelu, softmax, log_softmax, hardtanh/relu6,
leaky_relu, elu, silu, mish, hardswish, hardsigmoid, softplus, their in-place forms and modules.

gradcheck/gradgradcheck prove the hand-written backwards (and their backwards) against finite differences of our
own forward, complex sigmoid/tanh included; parity tests prove outputs and gradients equal to PyTorch's on random
shapes, dims and scales, including logits of ±1000 where a naive softmax overflows. Issue 12's examples: ReLU in place
on views, float16/bfloat16 no less precise than torch against float64, complex dtypes, the layouts of outputs and
gradients, and inf/NaN landing where torch's do. Most run on both backends (the `backend` fixture): on 'cpp' ReLU's
backward is the compiled kernel.
"""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import manual_conv
import manual_conv.functional as mF
import manual_conv.nn as mnn
from test_differential import assert_no_less_precise

# id: (ours, torch's, Function node)
ACTIVATIONS = {
    "relu": (mF.relu, F.relu, "ReLUFunctionBackward"),
    "sigmoid": (mF.sigmoid, torch.sigmoid, "SigmoidFunctionBackward"),
    "tanh": (mF.tanh, torch.tanh, "TanhFunctionBackward"),
    "gelu": (mF.gelu, F.gelu, "GELUFunctionBackward"),
    "gelu-tanh": (lambda x: mF.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"),
                  "GELUFunctionBackward"),
    "softmax-dim0": (lambda x: mF.softmax(x, 0), lambda x: F.softmax(x, 0), "SoftmaxFunctionBackward"),
    "softmax-dim1": (lambda x: mF.softmax(x, 1), lambda x: F.softmax(x, 1), "SoftmaxFunctionBackward"),
    "softmax-last": (lambda x: mF.softmax(x, -1), lambda x: F.softmax(x, -1), "SoftmaxFunctionBackward"),
    "log-softmax-dim0": (lambda x: mF.log_softmax(x, 0), lambda x: F.log_softmax(x, 0), "LogSoftmaxFunctionBackward"),
    "log-softmax-dim1": (lambda x: mF.log_softmax(x, 1), lambda x: F.log_softmax(x, 1), "LogSoftmaxFunctionBackward"),
    "log-softmax-last": (lambda x: mF.log_softmax(x, -1), lambda x: F.log_softmax(x, -1),
                         "LogSoftmaxFunctionBackward"),
}


def _both(call, node):
    """(ours, torch's, node) for call(library, x)."""
    return (lambda x: call(mF, x), lambda x: call(F, x), node)


# Issue 13's activations; the in-place forms act on x · 1, a non-leaf, as inside a model.
ACTIVATIONS.update({
    "relu6": _both(lambda f, x: f.relu6(x * 4), "HardtanhFunctionBackward"),
    "hardtanh": _both(lambda f, x: f.hardtanh(x, -0.5, 1.5), "HardtanhFunctionBackward"),
    "leaky_relu": _both(lambda f, x: f.leaky_relu(x, 0.2), "LeakyReLUFunctionBackward"),
    "leaky_relu-negative-slope": _both(lambda f, x: f.leaky_relu(x, -1.5), "LeakyReLUFunctionBackward"),
    "elu": _both(lambda f, x: f.elu(x, 0.7), "ELUFunctionBackward"),
    "silu": _both(lambda f, x: f.silu(x), "SiLUFunctionBackward"),
    "mish": _both(lambda f, x: f.mish(x * 3), "MishFunctionBackward"),
    "hardswish": _both(lambda f, x: f.hardswish(x * 4), "HardswishFunctionBackward"),
    "hardsigmoid": _both(lambda f, x: f.hardsigmoid(x * 4), "HardsigmoidFunctionBackward"),
    "softplus": _both(lambda f, x: f.softplus(x), "SoftplusFunctionBackward"),
    "softplus-beta-threshold": _both(lambda f, x: f.softplus(x, 2.0, 1.5), "SoftplusFunctionBackward"),
    "softplus-negative-beta": _both(lambda f, x: f.softplus(x, -0.5, 0.5), "SoftplusFunctionBackward"),
    "relu6_": _both(lambda f, x: f.relu6(x * 4, inplace=True), "HardtanhFunctionBackward"),
    "hardtanh_": _both(lambda f, x: f.hardtanh_(x * 1, -0.5, 1.5), "HardtanhFunctionBackward"),
    "leaky_relu_": _both(lambda f, x: f.leaky_relu_(x * 1, 0.2), "LeakyReLUFunctionBackward"),
    "elu_": _both(lambda f, x: f.elu_(x * 1, 2.0, 0.5, 1.5), "ELUFunctionBackward"),
    "silu_": _both(lambda f, x: f.silu(x * 1, inplace=True), "SiLUFunctionBackward"),
    "mish_": _both(lambda f, x: f.mish(x * 3, inplace=True), "MishFunctionBackward"),
    "hardswish_": _both(lambda f, x: f.hardswish(x * 4, inplace=True), "HardswishFunctionBackward"),
    "hardsigmoid_": _both(lambda f, x: f.hardsigmoid(x * 4, inplace=True), "HardsigmoidFunctionBackward"),
})


@pytest.mark.parametrize("ours, theirs, node", ACTIVATIONS.values(), ids=ACTIVATIONS.keys())
def test_gradcheck_and_gradgradcheck(backend, ours, theirs, node):
    torch.manual_seed(0)
    input = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert gradcheck(ours, (input,))
    assert gradgradcheck(ours, (input,))


@pytest.mark.parametrize("ours, theirs, node", ACTIVATIONS.values(), ids=ACTIVATIONS.keys())
def test_the_graph_runs_through_our_functions(ours, theirs, node):
    output = ours(torch.randn(3, 4, 5, requires_grad=True))
    assert type(output.grad_fn).__name__ == node


# --------------------------------------------------------------------------------------------- parity with torch


def assert_same_forward_and_backward(ours, theirs, input, upstream, **tolerance):
    mine, reference = input.clone().requires_grad_(), input.clone().requires_grad_()
    output, expected = ours(mine), theirs(reference)
    torch.testing.assert_close(output, expected, equal_nan=True, **tolerance)
    output.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(mine.grad, reference.grad, equal_nan=True, **tolerance)


@given(name=st.sampled_from(sorted(ACTIVATIONS)), shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
       scale=st.sampled_from([0.1, 1.0, 10.0, 100.0]), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**16))
def test_matches_torch(backend, name, shape, scale, dtype, seed):
    ours, theirs, _ = ACTIVATIONS[name]
    if name.startswith("hardsigmoid") and dtype == torch.float64:
        return  # torch's float64 slope is float32's 1/6: test_hardsigmoid_slope_is_one_sixth_in_float64
    if "dim1" in name and len(shape) < 2:
        shape = [*shape, 2]
    generator = torch.Generator().manual_seed(seed)
    input = torch.randn(shape, dtype=dtype, generator=generator) * scale
    upstream = torch.randn(shape, dtype=dtype, generator=generator)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-10}
    assert_same_forward_and_backward(ours, theirs, input, upstream, **tolerance)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_logits_of_plus_minus_1000_stay_finite(name):
    logits = torch.tensor([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -1000.0], [1000.0, 1000.0, 999.0]],
                          dtype=torch.float64)
    upstream = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0], [2.0, 1.0, -1.0]], dtype=torch.float64)
    ours, theirs = getattr(mF, name), getattr(F, name)
    mine = logits.clone().requires_grad_()
    output = ours(mine, 1)
    output.backward(upstream)
    assert torch.isfinite(output).all() and torch.isfinite(mine.grad).all()
    assert_same_forward_and_backward(lambda x: ours(x, 1), lambda x: theirs(x, 1), logits, upstream,
                                     atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "gelu", "elu", "silu", "mish", "softplus"])
def test_large_inputs_saturate_without_nan(name):
    input = torch.tensor([-1000.0, -50.0, -1e-8, 0.0, 1e-8, 50.0, 1000.0], dtype=torch.float64)
    upstream = torch.ones_like(input)
    assert_same_forward_and_backward(getattr(mF, name), getattr(F, name), input, upstream, atol=1e-15, rtol=1e-12)


def test_relu_nan_zero_and_infinite_gradients_like_torch(backend):
    """NaN stays NaN and passes its gradient; x = 0 gets none; an infinite gradient at x < 0 gives 0."""
    input = torch.tensor([float("nan"), -1.0, 0.0, 2.0, -3.0])
    upstream = torch.tensor([1.0, 1.0, 1.0, 1.0, float("inf")])
    assert_same_forward_and_backward(mF.relu, F.relu, input, upstream, atol=0, rtol=0)


def test_relu_inplace_overwrites_the_input_like_torch(backend):
    base = torch.randn(3, 4, requires_grad=True)
    mine, reference = base * 1, base * 1
    output = mF.relu(mine, inplace=True)
    F.relu(reference, inplace=True)
    assert output is mine
    assert torch.equal(mine, reference)
    assert type(mine.grad_fn).__name__ == "ReLUFunctionBackward"
    (grad,) = torch.autograd.grad(output.sum(), base)
    (expected,) = torch.autograd.grad(reference.sum(), base)
    assert torch.equal(grad, expected)


def test_relu_gradient_is_laid_out_as_its_output_like_torch(backend):
    """Item 7: the input gradient takes the output's layout (channels_last here) whatever the layout of the
    gradient from above, as torch's threshold_backward."""
    input = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    upstream = torch.randn(2, 3, 4, 5)
    (grad,) = torch.autograd.grad(mF.relu(input), input, upstream)
    (expected,) = torch.autograd.grad(F.relu(input), input, upstream)
    assert grad.stride() == expected.stride() == input.stride()
    assert torch.equal(grad, expected)


# ------------------------------------------------------------------------------- complex sigmoid and tanh


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_complex_gradcheck_proves_the_conjugate_wirtinger_backward(backend, name):
    """Item 8: complex128 sigmoid/tanh; gradcheck checks PyTorch's convention ∂L/∂x = δ ⊙ conj(f'(x))."""
    torch.manual_seed(0)
    input = torch.randn(3, 4, dtype=torch.complex128, requires_grad=True)
    assert gradcheck(getattr(mF, name), (input,))
    assert gradgradcheck(getattr(mF, name), (input,))


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_values_and_gradients_like_torch(backend, name, dtype):
    """Item 8 and 4: complex values and gradients as torch's, the infinite and NaN real parts included (tanh of
    ±inf + iy is ±1, tanh of NaN + i0 is NaN + i0, as C99's ctanh)."""
    torch.manual_seed(0)
    special = torch.tensor([complex(math.inf, 0), complex(-math.inf, 0), complex(math.nan, 0), complex(math.inf, 1),
                            complex(-math.inf, -2), complex(50, 1), complex(-50, 1), complex(0, 1.5)], dtype=dtype)
    input = torch.cat([special, torch.randn(24, dtype=dtype)])
    upstream = torch.randn(32, dtype=dtype)
    for layout in (lambda t: t, lambda t: torch.stack([t, t], -1)[..., 0]):  # contiguous and strided
        ours, theirs = input.clone().requires_grad_(), input.clone().requires_grad_()
        output, expected = getattr(mF, name)(layout(ours)), getattr(torch, name)(layout(theirs))
        assert output.dtype == expected.dtype == dtype
        for part in ("real", "imag"):
            torch.testing.assert_close(getattr(output, part), getattr(expected, part), equal_nan=True)
        (grad,) = torch.autograd.grad(output, ours, upstream)
        (expected_grad,) = torch.autograd.grad(expected, theirs, upstream)
        for part in ("real", "imag"):
            torch.testing.assert_close(getattr(grad, part), getattr(expected_grad, part), equal_nan=True)


# ------------------------------------------------------------------------------ float16 and bfloat16 precision


HALF_PRECISION_CALLS = {
    "sigmoid": lambda library, x: library.sigmoid(x),
    "tanh": lambda library, x: library.tanh(x),
    "gelu": lambda library, x: library.gelu(x),
    "gelu-tanh": lambda library, x: library.gelu(x, approximate="tanh"),
    "softmax": lambda library, x: library.softmax(x, 1),
    "log_softmax": lambda library, x: library.log_softmax(x, 1),
    "relu6": lambda library, x: library.relu6(x * 4),
    "hardtanh": lambda library, x: library.hardtanh(x, -0.7, 1.3),
    "leaky_relu": lambda library, x: library.leaky_relu(x, 0.3),
    "elu": lambda library, x: library.elu(x, 1.3),
    "elu_": lambda library, x: library.elu_(x * 1, 1.3, 1.0507, 0.7),
    "silu": lambda library, x: library.silu(x * 4),
    "mish": lambda library, x: library.mish(x * 4),
    "hardswish": lambda library, x: library.hardswish(x * 4),
    "hardsigmoid": lambda library, x: library.hardsigmoid(x * 4),
    "softplus": lambda library, x: library.softplus(x * 4, 0.5, 1.0),
}
# torch's own float64 gelu computes 1 + erf (1 + tanh) and cancels to 0 for x < −8: the references write Φ without
# that cancellation (½ erfc(−x/√2); ½(1 + tanh u) = σ(2u)).
EXACT_REFERENCES = {
    "gelu": lambda x: x * 0.5 * torch.erfc(-x / math.sqrt(2)),
    "gelu-tanh": lambda x: x * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", HALF_PRECISION_CALLS)
def test_half_precision_is_as_exact_as_torchs(backend, name, dtype):
    """Item 8: in float16/bfloat16 the activations compute in float32 and round once, as torch's kernels: over
    1000 classes of 64 samples our largest error against float64, forward and backward, is no larger than torch's
    (bfloat16 log_softmax was off by up to 0.03, one ulp, when it computed in bfloat16)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 1000, generator=generator, dtype=torch.float64).to(dtype)
    upstream = torch.randn(64, 1000, generator=generator, dtype=torch.float64).to(dtype)
    call = HALF_PRECISION_CALLS[name]
    functions = {"ours": lambda x: call(mF, x), "torch": lambda x: call(F, x),
                 "reference": EXACT_REFERENCES.get(name, lambda x: call(F, x))}
    results = {}
    for key, function in functions.items():
        input = logits.to(torch.float64 if key == "reference" else dtype).requires_grad_()
        output = function(input)
        results[key] = (output, *torch.autograd.grad(output, input, upstream.to(input.dtype)))
    assert results["ours"][0].dtype == results["ours"][1].dtype == dtype
    for what, ours, theirs, reference in zip(("output", "gradient"), *results.values()):
        assert_no_less_precise(ours.detach(), theirs.detach(), reference.detach(), what)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softmax", "log_softmax"])
def test_half_precision_gradients_where_they_cancel_are_as_exact_as_torchs(name, dtype):
    """Item 8: with four classes softmax's gradient y ⊙ (δ − Σ δ ⊙ y) and log_softmax's δ − e^y Σ δ often cancel,
    and torch's float16 sigmoid backward rounds after every operation: from the rounded y our gradient now and then
    landed farther from float64 than torch's. y is recomputed in float32 from x: none of 200 calls does."""
    generator = torch.Generator().manual_seed(0)
    call = HALF_PRECISION_CALLS[name]
    for _ in range(200):
        logits = torch.randn(3, 4, generator=generator, dtype=torch.float64).to(dtype)
        upstream = torch.randn(3, 4, generator=generator, dtype=torch.float64).to(dtype)
        grads = []
        for library, precision in ((mF, dtype), (F, dtype), (F, torch.float64)):
            input = logits.to(precision).requires_grad_()
            grads.append(*torch.autograd.grad(call(library, input), input, upstream.to(precision)))
        assert_no_less_precise(*grads, "gradient")


# ------------------------------------------------------------------------------------------- layouts, inf, NaN


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("layout", ["transposed", "channels_last"])
def test_softmax_output_and_gradient_are_contiguous_like_torch(backend, name, layout):
    """Item 7: softmax of a transposed or channels_last input is contiguous, as torch's, and so is its gradient."""
    input = torch.randn(2, 3, 4, 5)
    input = input.transpose(1, 3) if layout == "transposed" else input.contiguous(memory_format=torch.channels_last)
    input.requires_grad_()
    upstream = torch.randn(input.shape).contiguous(memory_format=torch.channels_last)
    output, expected = getattr(mF, name)(input, 1), getattr(F, name)(input, 1)
    assert output.stride() == expected.stride() == torch.empty(input.shape).stride()
    (grad,) = torch.autograd.grad(output, input, upstream)
    (expected_grad,) = torch.autograd.grad(expected, input, upstream)
    assert grad.stride() == expected_grad.stride()
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "gelu", "gelu-tanh", "softmax", "log_softmax", "relu6", "hardtanh",
                                  "leaky_relu", "elu", "elu_", "silu", "mish", "hardswish", "hardsigmoid", "softplus"])
def test_inf_and_nan_land_where_torchs_do(backend, name):
    """Item 4: ±inf and NaN in the input and in the gradient from above give NaN and ±inf exactly where torch's
    do (gelu(−inf) is NaN, softmax of a slice holding +inf is NaN, silu(−∞) = −∞/∞ is NaN, ...)."""
    call = HALF_PRECISION_CALLS[name]
    input = torch.tensor([[-math.inf, -3.0, 0.5, 2.0], [1.0, math.nan, -1.0, 0.0], [math.inf, 0.25, -0.5, 1.5],
                          [0.5, -0.25, 1.0, -2.0]])
    upstream = torch.tensor([[1.0, -1.0, 0.5, 2.0], [0.5, 1.0, math.inf, -1.0], [1.0, 1.0, 1.0, 1.0],
                             [-math.inf, 1.0, math.nan, 0.5]])
    if name == "gelu":  # torch's vectorised gelu(+inf) is NaN, its strided one +inf: not copied (see the harness)
        input[2, 0] = -math.inf
    if name in ("relu6", "hardtanh", "elu", "elu_", "hardswish"):  # test_a_nan_input_passes_the_gradient...
        input[1, 1] = math.inf
    ours, theirs = input.clone().requires_grad_(), input.clone().requires_grad_()
    output, expected = call(mF, ours), call(F, theirs)
    torch.testing.assert_close(output, expected, equal_nan=True)
    (grad,) = torch.autograd.grad(output, ours, upstream)
    (expected_grad,) = torch.autograd.grad(expected, theirs, upstream)
    torch.testing.assert_close(grad, expected_grad, equal_nan=True)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("ndim", [0, 1, 2, 3, 4])
def test_implicit_dim_is_torchs_with_its_warning(name, ndim):
    input = torch.randn((3,) * ndim, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        output = getattr(mF, name)(input)
        expected = getattr(F, name)(input)
        module_output = getattr(mnn, "Softmax" if name == "softmax" else "LogSoftmax")()(input)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(module_output, expected)
    ours, theirs, _module = caught
    assert str(ours.message) == str(theirs.message)
    assert ours.filename == theirs.filename == __file__  # the warning points at the caller, as torch's does


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_dtype_argument_casts_before_the_op_like_torch(name):
    input = torch.randn(3, 4, requires_grad=True)
    output = getattr(mF, name)(input, 1, dtype=torch.float64)
    expected = getattr(F, name)(input, 1, dtype=torch.float64)
    assert output.dtype == torch.float64
    torch.testing.assert_close(output, expected)
    (grad,) = torch.autograd.grad(output.sum(), input)
    (expected_grad,) = torch.autograd.grad(expected.sum(), input)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape, dim", [((), 0), ((), -1), ((3, 0), 1), ((0, 3), 1)])
def test_softmax_of_scalars_and_empty_tensors_like_torch(name, shape, dim):
    input = torch.randn(shape)
    torch.testing.assert_close(getattr(mF, name)(input, dim), getattr(F, name)(input, dim))


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "relu6", "hardtanh"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int8])
def test_integer_input_like_torch(backend, name, dtype):
    """relu, relu6 and hardtanh keep integers (hardtanh's bounds truncated to integers, as torch's); sigmoid and
    tanh promote them to the default floating dtype."""
    input = torch.arange(-8, 9, dtype=dtype)
    call = (lambda f: f.hardtanh(input, -2.5, 3.7)) if name == "hardtanh" else (lambda f: getattr(f, name)(input))
    output, expected = call(mF), call(F)
    assert output.dtype == expected.dtype
    torch.testing.assert_close(output, expected)


# ---------------------------------------------------------------------------------------------------- bad input

BAD_CALLS = {
    "relu-bool": (lambda f: f.relu(torch.ones(3, dtype=torch.bool))),
    "gelu-unknown-approximation": (lambda f: f.gelu(torch.ones(3), approximate="erf")),
    "gelu-approximate-positional": (lambda f: f.gelu(torch.ones(3), "tanh")),
    "gelu-approximate-none": (lambda f: f.gelu(torch.ones(3), approximate=None)),
    "gelu-integers": (lambda f: f.gelu(torch.ones(3, dtype=torch.int32))),
    "softmax-integers": (lambda f: f.softmax(torch.ones(2, 3, dtype=torch.long), 0)),
    "softmax-integers-last-dim": (lambda f: f.softmax(torch.ones(2, 3, dtype=torch.long), 1)),
    "softmax-integer-dtype": (lambda f: f.softmax(torch.ones(2, 3), 1, dtype=torch.long)),
    "log-softmax-integers": (lambda f: f.log_softmax(torch.ones(2, 3, dtype=torch.long), -1)),
    "softmax-dim-out-of-range": (lambda f: f.softmax(torch.ones(2, 3), 2)),
    "log-softmax-dim-out-of-range": (lambda f: f.log_softmax(torch.ones(2, 3), -3)),
    "relu6-bool": (lambda f: f.relu6(torch.ones(3, dtype=torch.bool))),
    "relu6-complex": (lambda f: f.relu6(torch.ones(3, dtype=torch.complex64))),
    "hardtanh-min-above-max": (lambda f: f.hardtanh(torch.ones(3), 2.0, 1.0)),
    "hardtanh-uint8-negative-bound": (lambda f: f.hardtanh(torch.ones(3, dtype=torch.uint8))),
    "hardtanh-integer-nan-bound": (lambda f: f.hardtanh(torch.ones(3, dtype=torch.int64), math.nan, 1.0)),
    "hardtanh-half-bound-overflows": (lambda f: f.hardtanh(torch.ones(3, dtype=torch.float16), -1e6, 1e6)),
    "hardtanh_-bound-none": (lambda f: f.hardtanh_(torch.ones(3), None)),
    "leaky-relu-integers": (lambda f: f.leaky_relu(torch.ones(3, dtype=torch.int64))),
    "leaky-relu-complex-slope": (lambda f: f.leaky_relu(torch.ones(3), 1j)),
    "leaky-relu-slope-none": (lambda f: f.leaky_relu(torch.ones(3), None)),
    "leaky-relu-slope-tensor-requiring-grad": (lambda f: f.leaky_relu(torch.ones(3),
                                                                      torch.tensor(0.2, requires_grad=True))),
    "elu-empty-integers": (lambda f: f.elu(torch.ones(0, dtype=torch.int32))),
    "elu_-scale-str": (lambda f: f.elu_(torch.ones(3), 1.0, "2")),
    "silu-bool": (lambda f: f.silu(torch.ones(3, dtype=torch.bool))),
    "silu-complex-requiring-grad": (lambda f: f.silu(torch.ones(3, dtype=torch.complex64, requires_grad=True))),
    "mish-integers": (lambda f: f.mish(torch.ones(3, dtype=torch.int64))),
    "hardswish-complex": (lambda f: f.hardswish(torch.ones(3, dtype=torch.complex64))),
    "hardsigmoid-integers": (lambda f: f.hardsigmoid(torch.ones(3, dtype=torch.uint8))),
    "softplus-complex": (lambda f: f.softplus(torch.ones(3, dtype=torch.complex64))),
    "softplus-beta-str": (lambda f: f.softplus(torch.ones(3), "2")),
    "softplus-complex-threshold": (lambda f: f.softplus(torch.ones(3, dtype=torch.float64), 1, 2j)),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_input_raises_like_torch(call):
    with pytest.raises(Exception) as expected:
        call(F)
    with pytest.raises(expected.type) as got:
        call(mF)
    if expected.type in (RuntimeError, NotImplementedError):  # our own checks: PyTorch's very message
        assert str(got.value) == str(expected.value)


# ------------------------------------------------------------------------------------------------------ modules


@pytest.mark.parametrize("name, kwargs", [
    ("ReLU", {}), ("ReLU", {"inplace": True}), ("Sigmoid", {}), ("Tanh", {}), ("GELU", {}),
    ("GELU", {"approximate": "tanh"}), ("Softmax", {"dim": 1}), ("LogSoftmax", {"dim": -1}),
    ("ReLU6", {}), ("ReLU6", {"inplace": True}), ("Hardtanh", {"min_val": -0.5, "max_val": 0.25}),
    ("Hardtanh", {"inplace": True}), ("LeakyReLU", {}), ("LeakyReLU", {"negative_slope": 0.2, "inplace": True}),
    ("ELU", {"alpha": 0.5}), ("ELU", {"inplace": True}), ("SiLU", {}), ("SiLU", {"inplace": True}), ("Mish", {}),
    ("Mish", {"inplace": True}), ("Hardswish", {}), ("Hardswish", {"inplace": True}), ("Hardsigmoid", {}),
    ("Hardsigmoid", {"inplace": True}), ("Softplus", {}), ("Softplus", {"beta": 2.0, "threshold": 0.5}),
])
def test_modules_are_torch_modules_with_our_computation(name, kwargs):
    ours, theirs = getattr(mnn, name)(**kwargs), getattr(torch.nn, name)(**kwargs)
    assert isinstance(ours, getattr(torch.nn, name))
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    # float32 for Hardsigmoid, whose float64 slope in torch is float32's 1/6 (see below)
    dtype = torch.float32 if name == "Hardsigmoid" else torch.float64
    input = torch.randn(2, 3, 4, dtype=dtype) * 3
    upstream = torch.randn(2, 3, 4, dtype=dtype)
    base = input.clone().requires_grad_()
    output = ours(base * 1)  # not a leaf, so that inplace=True is allowed
    output.backward(upstream)
    assert type(output.grad_fn).__name__.endswith("FunctionBackward")
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    assert_same_forward_and_backward(lambda x: ours(x * 1), lambda x: theirs(x * 1), input, upstream,
                                     atol=tolerance, rtol=tolerance)


# ------------------------------------------------------------ issue 13's activations: kinks, NaN, in place, models

KINKS = {  # name: (call, the points where its derivative jumps)
    "relu6": (lambda f, x: f.relu6(x), [0.0, 6.0]),
    "hardtanh": (lambda f, x: f.hardtanh(x, -0.5, 1.5), [-0.5, 1.5]),
    "leaky_relu": (lambda f, x: f.leaky_relu(x, 0.2), [0.0, -0.0]),
    "elu": (lambda f, x: f.elu(x, 0.7), [0.0, -0.0]),
    "elu_-scaled": (lambda f, x: f.elu_(x * 1, 2.0, 0.5, 0.75), [0.0]),
    "hardswish": (lambda f, x: f.hardswish(x), [-3.0, 3.0]),
    "hardsigmoid": (lambda f, x: f.hardsigmoid(x), [-3.0, 3.0]),
    "softplus": (lambda f, x: f.softplus(x, 2.0, 3.0), [1.5]),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", KINKS)
def test_slopes_at_the_kinks_are_torchs(backend, name, dtype):
    """Issue 13: where the derivative jumps, the slope is the one torch's kernels take: relu6 and hardtanh 0 at
    both bounds, leaky_relu the negative slope at 0, elu its exponential piece (α·scale·input_scale) at 0,
    hardswish 0 at −3 and 1 at 3, hardsigmoid 0 at ±3, softplus σ(βx) at βx = threshold; on each side too.
    Contiguous (torch's vectorised loop) and strided (its scalar loop)."""
    call, kinks = KINKS[name]
    points = torch.tensor([kink + step for kink in kinks for step in (0.0, -0.25, 0.25)] * 12, dtype=dtype)
    for layout in (lambda t: t, lambda t: torch.stack([t, t], -1)[..., 0]):
        ours, theirs = points.clone().requires_grad_(), points.clone().requires_grad_()
        (grad,) = torch.autograd.grad(call(mF, layout(ours)).sum(), ours)
        (expected,) = torch.autograd.grad(call(F, layout(theirs)).sum(), theirs)
        # rtol: torch's float64 hardsigmoid slope is float32's 1/6 (test_hardsigmoid_slope_is_one_sixth...)
        torch.testing.assert_close(grad, expected, rtol=1e-6, atol=0)


NAN_INPUT_CALLS = {  # called on a non-leaf, so that elu_ may overwrite it
    "relu6": lambda f, x: f.relu6(x),
    "hardtanh": lambda f, x: f.hardtanh(x, -0.7, 1.3),
    "elu": lambda f, x: f.elu(x, 1.3),
    "elu_": lambda f, x: f.elu_(x, 1.3, 1.0507, 0.7),
    "hardswish": lambda f, x: f.hardswish(x),
}


@pytest.mark.parametrize("name", NAN_INPUT_CALLS)
def test_a_nan_input_passes_the_gradient_as_torchs_scalar_loop(backend, name):
    """For a NaN x, torch's hardtanh (relu6), elu and hardswish backwards disagree with themselves: the vectorised
    CPU loop blends on x > min_val (x > 0, x ≥ 3) and gives 0 or NaN, the scalar loop (strided tensors, the tail of
    contiguous ones, torch._decomp) selects on x ≤ min_val and passes δ (δ·scale for elu). Ours is the scalar
    loop's wherever the NaN lies. The harness draws no NaN inputs that require grad for these; when torch's loops
    agree, the last assertion fails and the harness may draw them again."""
    call = NAN_INPUT_CALLS[name]
    input = torch.tensor([math.nan, 1.0, -4.0, 0.5] * 16)
    upstream = torch.randn(64)

    def gradient(library, layout):
        leaf = input.clone().requires_grad_()
        return torch.autograd.grad(call(library, layout(leaf)), leaf, upstream)[0]

    strided = lambda leaf: torch.stack([leaf, leaf], -1)[..., 0]  # noqa: E731
    grad, scalar_loop = gradient(mF, lambda leaf: leaf * 1), gradient(F, strided)
    vector_loop = gradient(F, lambda leaf: leaf * 1)
    torch.testing.assert_close(grad, scalar_loop, equal_nan=True)
    torch.testing.assert_close(gradient(mF, strided), scalar_loop, equal_nan=True)
    assert grad[0].isfinite() and not torch.equal(vector_loop[:1], scalar_loop[:1])


def test_hardsigmoid_slope_is_one_sixth_in_float64(backend):
    """hardsigmoid's slope between ±3 is 1/6: here δ/6, correctly rounded. torch's float64 kernel multiplies δ by
    float32's 1/6 (0.16666667163…), a relative error of 3·10⁻⁸ that the harness' float64 tolerance rejects, so it
    compares hardsigmoid's float64 forwards only. (torch._decomp's hardsigmoid_backward has 1/6 in float64.)"""
    input = torch.linspace(-2.9, 2.9, 64, dtype=torch.float64)
    upstream = torch.randn(64, dtype=torch.float64)
    ours, theirs = input.clone().requires_grad_(), input.clone().requires_grad_()
    (grad,) = torch.autograd.grad(mF.hardsigmoid(ours), ours, upstream)
    (expected,) = torch.autograd.grad(F.hardsigmoid(theirs), theirs, upstream)
    assert torch.equal(grad, upstream / 6)
    assert torch.equal(expected, upstream * torch.tensor(1 / 6, dtype=torch.float32).item())


INPLACE_CALLS = {
    "relu": lambda f, x: f.relu(x, inplace=True),
    "relu6": lambda f, x: f.relu6(x, inplace=True),
    "hardtanh_": lambda f, x: f.hardtanh_(x, -0.5, 0.5),
    "leaky_relu_": lambda f, x: f.leaky_relu_(x, 0.2),
    "elu_": lambda f, x: f.elu_(x, 1.5),
    "silu": lambda f, x: f.silu(x, inplace=True),
    "mish": lambda f, x: f.mish(x, inplace=True),
    "hardswish": lambda f, x: f.hardswish(x, inplace=True),
    "hardsigmoid": lambda f, x: f.hardsigmoid(x, inplace=True),
}


@pytest.mark.parametrize("view", ["slice", "transpose", "channels_last"])
@pytest.mark.parametrize("name", INPLACE_CALLS)
def test_inplace_on_a_view_like_torch(backend, name, view):
    """Issue 12, item 2, and issue 13: in place on a view of an intermediate (a slice, a transpose, a channels_last
    tensor) overwrites the view and its base as torch's in-place activations do, and the gradients reach the leaf
    as torch's."""
    base = torch.randn(2, 3, 4, 6, requires_grad=True)
    take = {"slice": lambda t: t[..., 1:4], "transpose": lambda t: t.transpose(1, 3),
            "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last)}[view]
    upstream = torch.randn(2, 3, 4, 6)
    results = []
    for library in (mF, F):
        intermediate = base * 3
        output = INPLACE_CALLS[name](library, take(intermediate))
        (grad,) = torch.autograd.grad((intermediate * upstream).sum() + output.sum(), base)
        results.append((intermediate.detach(), output.detach(), grad))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs)
        assert ours.stride() == theirs.stride()


@pytest.mark.parametrize("name", INPLACE_CALLS)
def test_modifying_an_inplace_output_before_the_backward_is_like_torch(name):
    """In place, torch saves a copy of x for relu6, hardtanh_, silu, mish, hardswish and hardsigmoid (so the
    output may change before the backward) and y itself for relu, leaky_relu_ and elu_ (changing it raises):
    so here."""
    input, outcomes = torch.randn(5), []
    for library in (mF, F):
        leaf = input.clone().requires_grad_()
        output = INPLACE_CALLS[name](library, leaf * 1)
        output.mul_(2)
        try:
            outcomes.append(torch.autograd.grad(output.sum(), leaf)[0])
        except RuntimeError as error:
            outcomes.append(type(error))
    if isinstance(outcomes[1], torch.Tensor):
        torch.testing.assert_close(*outcomes)
    else:
        assert outcomes[0] is outcomes[1] is RuntimeError and name in ("relu", "leaky_relu_", "elu_")


@pytest.mark.parametrize("call", [lambda f, x: f.leaky_relu_(x, -0.1), lambda f, x: f.elu_(x, -1.0)],
                         ids=["leaky_relu_", "elu_"])
def test_an_inplace_negative_slope_is_refused_in_the_backward_like_torch(call):
    """leaky_relu_ and elu_ write their slope through y, which a negative slope makes ambiguous: the forward runs,
    the backward raises torch's RuntimeError."""
    messages = []
    for library in (mF, F):
        leaf = torch.randn(4, requires_grad=True)
        output = call(library, leaf * 1)
        with pytest.raises(RuntimeError) as raised:
            output.sum().backward()
        messages.append(str(raised.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("name", INPLACE_CALLS)
def test_inplace_on_a_leaf_or_a_view_of_one_raises_like_torch(name):
    """In place on a leaf that requires grad, or on a view of one: torch's RuntimeError, and the leaf unchanged."""
    for make in (lambda leaf: leaf, lambda leaf: leaf[1:]):
        leaf = torch.randn(3, requires_grad=True)
        before = leaf.detach().clone()
        with pytest.raises(RuntimeError) as expected:
            INPLACE_CALLS[name](F, make(leaf))
        with pytest.raises(RuntimeError) as raised:
            INPLACE_CALLS[name](mF, make(leaf))
        assert str(raised.value) == str(expected.value)
        assert torch.equal(leaf.detach(), before)


@pytest.mark.parametrize("name", ["elu", "mish", "softplus"])
def test_double_backward_stays_finite_for_large_inputs(backend, name):
    """elu's unused exponential and mish's log(1 + eˣ) overflow in float32 above x ≈ 88; written as here, the
    overflow never reaches the double backward (where it would give 0·∞ = NaN, as torch's own float32 mish double
    backward does). Against torch's float64 double backward, which does not overflow at these points."""
    call = {"elu": lambda f, x: f.elu(x, 0.5), "mish": lambda f, x: f.mish(x),
            "softplus": lambda f, x: f.softplus(x, 1.0, 150.0)}[name]
    points = torch.tensor([-100.0, -5.0, 0.5, 90.0, 200.0])

    def second_derivative(library, dtype):
        leaf = points.to(dtype).requires_grad_()
        (grad,) = torch.autograd.grad(call(library, leaf).sum(), leaf, create_graph=True)
        return torch.autograd.grad(grad.sum(), leaf)[0]

    ours = second_derivative(mF, torch.float32)
    assert ours.isfinite().all()
    torch.testing.assert_close(ours, second_derivative(F, torch.float64).float())


def test_complex_silu_like_torch():
    """silu computes complex input (forward only, as torch): x / (1 + e^{−x}) in complex arithmetic."""
    torch.manual_seed(0)
    for dtype in (torch.complex64, torch.complex128):
        input = torch.randn(40, dtype=dtype) * 3
        for layout in (lambda t: t, lambda t: torch.stack([t, t], -1)[..., 0]):
            output, expected = mF.silu(layout(input)), F.silu(layout(input))
            assert output.dtype == expected.dtype
            torch.testing.assert_close(output, expected)


@pytest.mark.parametrize("model_name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_mobilenet_v3_and_efficientnet_activations_run_by_hand(model_name):
    """Issue 13, item 1: convert() now gives these models' Hardswish, Hardsigmoid and SiLU layers their twins:
    it names none of them among the layers it leaves, and a training step's graph holds our Functions' nodes and
    none of torch's activation nodes."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(num_classes=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = manual_conv.convert(model).train()
    assert not any(name in str(warning.message) for warning in caught
                   for name in ("Hardswish", "Hardsigmoid", "SiLU", "ReLU6"))
    loss = converted(torch.randn(2, 3, 32, 32)).square().sum()
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    nodes = {type(node).__name__ for node in seen}
    ours = {"mobilenet_v3_small": {"HardswishFunctionBackward", "HardsigmoidFunctionBackward"},
            "efficientnet_b0": {"SiLUFunctionBackward"}}[model_name]
    assert ours <= nodes
    assert not nodes & {"HardswishBackward0", "HardsigmoidBackward0", "SiluBackward0", "HardtanhBackward0",
                        "SigmoidBackward0", "ReluBackward0"}
