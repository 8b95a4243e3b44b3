"""Activations by hand (manual_conv.ops.activation): relu, sigmoid, tanh, gelu, softmax, log_softmax and modules.

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


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "gelu"])
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


@pytest.mark.parametrize("view", ["slice", "transpose", "channels_last"])
def test_relu_inplace_on_a_view_like_torch(backend, view):
    """Issue 12, item 2: inplace=True on a view of an intermediate (a slice, a transpose, a channels_last tensor)
    overwrites the view and its base as torch.relu_ does, and the gradients reach the leaf as torch's."""
    base = torch.randn(2, 3, 4, 6, requires_grad=True)
    take = {"slice": lambda t: t[..., 1:4], "transpose": lambda t: t.transpose(1, 3),
            "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last)}[view]
    upstream = torch.randn(2, 3, 4, 6)
    results = []
    for library in (mF, F):
        intermediate = base * 1
        output = library.relu(take(intermediate), inplace=True)
        (grad,) = torch.autograd.grad((intermediate * upstream).sum() + output.sum(), base)
        results.append((intermediate.detach(), output.detach(), grad))
    for ours, theirs in zip(*results):
        assert torch.equal(ours, theirs) and ours.stride() == theirs.stride()


def test_relu_inplace_on_a_leaf_or_a_view_of_one_raises_like_torch():
    """torch's RuntimeError, and the leaf left as it was."""
    for make in (lambda leaf: leaf, lambda leaf: leaf[1:]):
        leaf = torch.randn(3, requires_grad=True)
        before = leaf.detach().clone()
        with pytest.raises(RuntimeError) as expected:
            F.relu(make(leaf), inplace=True)
        with pytest.raises(RuntimeError) as raised:
            mF.relu(make(leaf), inplace=True)
        assert str(raised.value) == str(expected.value)
        assert torch.equal(leaf.detach(), before)


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


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "gelu", "gelu-tanh", "softmax", "log_softmax"])
def test_inf_and_nan_land_where_torchs_do(backend, name):
    """Item 4: ±inf and NaN in the input and in the gradient from above give NaN and ±inf exactly where torch's
    do (gelu(−inf) is NaN, softmax of a slice holding +inf is NaN, ...)."""
    call = HALF_PRECISION_CALLS[name]
    input = torch.tensor([[-math.inf, -3.0, 0.5, 2.0], [1.0, math.nan, -1.0, 0.0], [math.inf, 0.25, -0.5, 1.5],
                          [0.5, -0.25, 1.0, -2.0]])
    upstream = torch.tensor([[1.0, -1.0, 0.5, 2.0], [0.5, 1.0, math.inf, -1.0], [1.0, 1.0, 1.0, 1.0],
                             [-math.inf, 1.0, math.nan, 0.5]])
    if name == "gelu":  # torch's vectorised gelu(+inf) is NaN, its strided one +inf: not copied (see the harness)
        input[2, 0] = -math.inf
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


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
def test_integer_input_like_torch(backend, name):
    """relu keeps integers; sigmoid and tanh promote them to the default floating dtype."""
    input = torch.arange(-3, 4)
    output, expected = getattr(mF, name)(input), getattr(F, name)(input)
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
])
def test_modules_are_torch_modules_with_our_computation(name, kwargs):
    ours, theirs = getattr(mnn, name)(**kwargs), getattr(torch.nn, name)(**kwargs)
    assert isinstance(ours, getattr(torch.nn, name))
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    input = torch.randn(2, 3, 4, dtype=torch.float64)
    upstream = torch.randn(2, 3, 4, dtype=torch.float64)
    base = input.clone().requires_grad_()
    output = ours(base * 1)  # not a leaf, so that inplace=True is allowed
    output.backward(upstream)
    assert type(output.grad_fn).__name__.endswith("FunctionBackward")
    assert_same_forward_and_backward(lambda x: ours(x * 1), lambda x: theirs(x * 1), input, upstream,
                                     atol=1e-12, rtol=1e-12)
