"""linear and dropout by hand (manual_conv.ops.linear), and the Linear, Flatten and Dropout modules.

gradcheck/gradgradcheck prove the hand-written backwards against finite differences of our own forward; parity
tests prove outputs and gradients equal to PyTorch's (dropout: bit for bit, since the mask is drawn as torch draws
it); a small CNN made of manual_conv.nn gives torch.nn's gradients for every parameter.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import manual_conv.functional as mF
import manual_conv.nn as mnn

# id: (input shape, weight shape, bias shape or None)
LINEAR_CASES = {
    "matrix": ((3, 4), (5, 4), (5,)),
    "no-bias": ((3, 4), (5, 4), None),
    "vector-input": ((4,), (3, 4), (3,)),
    "leading-dims": ((2, 3, 4), (2, 4), (2,)),
    "broadcast-bias": ((3, 4), (2, 4), (3, 2)),
    "vector-weight": ((3, 4), (4,), None),
}


def leaves(*shapes, dtype=torch.float64):
    return tuple(None if shape is None else torch.randn(shape, dtype=dtype).requires_grad_() for shape in shapes)


@pytest.mark.parametrize("shapes", LINEAR_CASES.values(), ids=LINEAR_CASES.keys())
def test_linear_gradcheck_and_gradgradcheck(shapes):
    torch.manual_seed(0)
    inputs = tuple(t for t in leaves(*shapes) if t is not None)
    assert gradcheck(mF.linear, inputs)
    assert gradgradcheck(mF.linear, inputs)


def seeded_dropout(p, training=True):
    """dropout with the same mask on every call (gradcheck evaluates the function many times)."""
    def dropout(input):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return mF.dropout(input, p, training)
    return dropout


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_dropout_gradcheck_and_gradgradcheck(p):
    input = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert gradcheck(seeded_dropout(p), (input,))
    assert gradgradcheck(seeded_dropout(p), (input,))


def test_the_graph_runs_through_our_functions():
    input, weight, bias = leaves((2, 3), (4, 3), (4,))
    assert type(mF.linear(input, weight, bias).grad_fn).__name__ == "LinearFunctionBackward"
    assert type(mnn.Linear(3, 4).double()(input).grad_fn).__name__ == "LinearFunctionBackward"
    assert type(mF.dropout(input, 0.5).grad_fn).__name__ == "DropoutFunctionBackward"
    assert type(mnn.Dropout()(input).grad_fn).__name__ == "DropoutFunctionBackward"


# --------------------------------------------------------------------------------------------- parity with torch


@given(leading=st.lists(st.integers(0, 3), max_size=3), in_features=st.integers(1, 6),
       out_features=st.integers(1, 6), bias=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**16))
def test_linear_matches_torch(leading, in_features, out_features, bias, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(*leading, in_features, generator=generator, dtype=dtype),
               torch.randn(out_features, in_features, generator=generator, dtype=dtype)]
    if bias:
        tensors.append(torch.randn(out_features, generator=generator, dtype=dtype))
    mine = [t.clone().requires_grad_() for t in tensors]
    reference = [t.clone().requires_grad_() for t in tensors]
    output, expected = mF.linear(*mine), F.linear(*reference)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
    torch.testing.assert_close(output, expected, **tolerance)
    upstream = torch.randn(expected.shape, generator=generator, dtype=dtype)
    output.backward(upstream)
    expected.backward(upstream)
    for ours, theirs in zip(mine, reference):
        torch.testing.assert_close(ours.grad, theirs.grad, **tolerance)


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), p=st.sampled_from([0.1, 0.25, 0.5, 0.9]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
       seed=st.integers(0, 2**16))
def test_dropout_draws_torchs_mask(backend, shape, p, dtype, seed):
    """The same seed gives PyTorch's very mask: identical outputs and gradients, bit for bit."""
    input = torch.randn(shape, dtype=dtype)
    mine, reference = input.clone().requires_grad_(), input.clone().requires_grad_()
    torch.manual_seed(seed)
    output = mF.dropout(mine, p)
    torch.manual_seed(seed)
    expected = F.dropout(reference, p)
    assert torch.equal(output, expected)
    output.backward(torch.ones_like(output))
    expected.backward(torch.ones_like(expected))
    assert torch.equal(mine.grad, reference.grad)


def test_dropout_scales_the_kept_elements_and_zeroes_the_rest():
    input = torch.rand(1000, dtype=torch.float64) + 1
    output = mF.dropout(input, 0.2)
    kept = output != 0
    torch.testing.assert_close(output[kept], input[kept] / 0.8)
    assert 0.7 < kept.double().mean() < 0.9


def test_dropout_identity_cases_return_the_input_itself_like_torch():
    input = torch.randn(3, 4, requires_grad=True)
    assert mF.dropout(input, 0.5, training=False) is input
    assert mF.dropout(input, 0.0) is input


def test_dropout_p1_gives_zeros_and_draws_nothing():
    input = torch.tensor([1.0, -2.0, float("nan")], requires_grad=True)
    torch.manual_seed(0)
    output = mF.dropout(input, 1.0)
    after_ours = torch.rand(1)
    torch.manual_seed(0)
    expected = F.dropout(input, 1.0)
    assert torch.equal(after_ours, torch.rand(1))  # no random numbers consumed, as torch
    torch.testing.assert_close(output, expected, equal_nan=True)
    output.sum().backward()
    assert torch.equal(input.grad, torch.zeros(3))


def test_dropout_inplace_overwrites_the_input_like_torch():
    base = torch.randn(4, 5, requires_grad=True)
    mine, reference = base * 1, base * 1
    torch.manual_seed(1)
    output = mF.dropout(mine, 0.4, inplace=True)
    torch.manual_seed(1)
    F.dropout(reference, 0.4, inplace=True)
    assert output is mine
    assert torch.equal(mine, reference)
    (grad,) = torch.autograd.grad(output.sum(), base)
    (expected,) = torch.autograd.grad(reference.sum(), base)
    assert torch.equal(grad, expected)


# ---------------------------------------------------------------------------------------------------- bad input

BAD_LINEAR = {
    "shapes-mismatch": ((2, 3), (4, 5), None),
    "shapes-mismatch-leading-dims": ((2, 2, 3), (4, 5), None),
    "scalar-input": ((), (4, 3), None),
    "3d-weight": ((2, 3), (1, 4, 3), None),
    "vector-weight-with-bias": ((2, 3), (3,), ()),
    "bias-wrong-size": ((2, 3), (4, 3), (5,)),
    "bias-too-many-dims": ((2, 3), (4, 3), (3, 2, 4)),
}


@pytest.mark.parametrize("shapes", BAD_LINEAR.values(), ids=BAD_LINEAR.keys())
def test_linear_bad_input_raises_like_torch(shapes):
    tensors = [None if shape is None else torch.randn(shape) for shape in shapes]
    with pytest.raises(Exception) as expected:
        F.linear(*tensors)
    with pytest.raises(expected.type):
        mF.linear(*tensors)


@pytest.mark.parametrize("weight_dtype, bias_dtype", [(torch.float64, None), (torch.float32, torch.float64)])
def test_linear_dtype_mismatch_raises_like_torch(weight_dtype, bias_dtype):
    tensors = [torch.randn(2, 3), torch.randn(4, 3, dtype=weight_dtype)]
    tensors.append(None if bias_dtype is None else torch.randn(4, dtype=bias_dtype))
    with pytest.raises(RuntimeError):
        F.linear(*tensors)
    with pytest.raises(RuntimeError):
        mF.linear(*tensors)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_probability_out_of_range_raises_like_torch(p):
    with pytest.raises(ValueError) as expected:
        F.dropout(torch.randn(3), p)
    with pytest.raises(ValueError) as got:
        mF.dropout(torch.randn(3), p)
    assert str(got.value) == str(expected.value)


def test_dropout_of_integers_raises_like_torch():
    with pytest.raises(RuntimeError):
        F.dropout(torch.ones(3, dtype=torch.long), 0.5)
    with pytest.raises(RuntimeError):
        mF.dropout(torch.ones(3, dtype=torch.long), 0.5)


# ------------------------------------------------------------------------------------------------------ modules


@pytest.mark.parametrize("name, args, kwargs", [
    ("Linear", (5, 3), {}),
    ("Linear", (5, 3), {"bias": False}),
    ("Flatten", (), {}),
    ("Flatten", (0, 1), {}),
    ("Dropout", (0.3,), {}),
    ("Dropout", (), {"inplace": True}),
])
def test_modules_are_torch_modules(name, args, kwargs):
    ours, theirs = getattr(mnn, name)(*args, **kwargs), getattr(torch.nn, name)(*args, **kwargs)
    assert isinstance(ours, getattr(torch.nn, name))
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)


def test_linear_module_loads_torch_weights_and_computes_the_same():
    theirs = torch.nn.Linear(5, 3).double()
    ours = mnn.Linear(5, 3).double()
    ours.load_state_dict(theirs.state_dict())
    input = torch.randn(4, 2, 5, dtype=torch.float64)
    torch.testing.assert_close(ours(input), theirs(input))


def test_dropout_module_is_the_identity_in_eval_mode():
    module = mnn.Dropout(0.5).eval()
    input = torch.randn(3, 4)
    assert module(input) is input


class SmallNet(torch.nn.Module):
    """train_mnist's network in miniature: conv, ReLU, max pool, dropout, flatten, linear, from ``layers``."""

    def __init__(self, layers):
        super().__init__()
        self.features = torch.nn.Sequential(
            layers.Conv2d(1, 4, 3), layers.ReLU(), layers.MaxPool2d(2), layers.Dropout(0.25), layers.Flatten()
        )
        self.head = torch.nn.Sequential(layers.Linear(4 * 4 * 4, 8), layers.ReLU(), layers.Dropout(0.5),
                                        layers.Linear(8, 3))

    def forward(self, x):
        return self.head(self.features(x))


def test_small_cnn_gives_torchs_gradients_for_every_parameter():
    torch.manual_seed(0)
    theirs = SmallNet(torch.nn).double()
    ours = SmallNet(mnn).double()
    ours.load_state_dict(theirs.state_dict())
    input = torch.randn(5, 1, 10, 10, dtype=torch.float64)
    losses = []
    for model in (ours, theirs):
        torch.manual_seed(1)  # the same dropout masks
        loss = model(input).logsumexp(1).sum()
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(*losses)
    for (name, mine), (_, reference) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(mine.grad, reference.grad, msg=name)
