"""Activations by hand (manual_conv.ops.activation): relu, sigmoid, tanh, gelu, softmax, log_softmax and modules.

gradcheck/gradgradcheck prove the hand-written backwards (and their backwards) against finite differences of our
own forward; parity tests prove outputs and gradients equal to PyTorch's on random shapes, dims and scales,
including logits of ±1000 where a naive softmax overflows. The gradient, parity and ReLU tests run on both backends
(the `backend` fixture): on 'cpp' ReLU's backward is the compiled kernel.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import manual_conv.functional as mF
import manual_conv.nn as mnn

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


def test_relu_inplace_on_a_leaf_raises_like_torch():
    with pytest.raises(RuntimeError):
        F.relu(torch.randn(3, requires_grad=True), inplace=True)
    with pytest.raises(RuntimeError):
        mF.relu(torch.randn(3, requires_grad=True), inplace=True)


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
