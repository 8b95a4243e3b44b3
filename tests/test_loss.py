"""Losses: cross_entropy, nll_loss, mse_loss and their modules against PyTorch.

gradcheck/gradgradcheck prove our hand-written backwards (and their backwards) against finite differences of our
own forwards; the parity tests compare values and gradients with torch.nn.functional on randomized shapes and
options; bad arguments must raise what torch raises.
"""
import math
import warnings

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch.autograd import gradcheck, gradgradcheck

import manual_conv.functional as mF
import manual_conv.nn as mnn
from manual_conv.ops.loss import (
    CrossEntropyFunction,
    CrossEntropyProbabilitiesFunction,
    MSELossFunction,
    NLLLossFunction,
    WeightedMSELossFunction,
)

REDUCTIONS = ["none", "mean", "sum"]


def leaf(*shape, dtype=torch.float64, low=None):
    tensor = torch.rand(*shape, dtype=dtype) + low if low is not None else torch.randn(*shape, dtype=dtype)
    return tensor.requires_grad_()


def class_indices(num_classes, *shape, ignored_fraction=0.0, ignore_index=-100):
    target = torch.randint(num_classes, shape)
    return torch.where(torch.rand(shape) < ignored_fraction, ignore_index, target)


# ---------------------------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "shape, options",
    [
        ((4, 5), {}),
        ((4, 5), {"weight": True, "label_smoothing": 0.3, "ignored_fraction": 0.3}),
        ((2, 3, 2, 3), {"weight": True, "ignored_fraction": 0.2}),
        ((2, 3, 4), {"label_smoothing": 1.0}),
        ((5,), {"weight": True}),
    ],
    ids=["plain", "weight-smoothing-ignore", "spatial-weight-ignore", "3d-full-smoothing", "unbatched"],
)
def test_cross_entropy_class_indices_gradcheck(shape, options, reduction):
    torch.manual_seed(0)
    logits = leaf(*shape)
    num_classes = shape[0] if len(shape) == 1 else shape[1]
    target_shape = () if len(shape) == 1 else shape[:1] + shape[2:]
    target = class_indices(num_classes, *target_shape, ignored_fraction=options.get("ignored_fraction", 0.0))
    if target.dim() and (target == -100).all():
        target[0] = 0
    weight = torch.rand(num_classes, dtype=torch.float64) + 0.5 if options.get("weight") else None

    def loss(z):
        return mF.cross_entropy(
            z, target, weight=weight, reduction=reduction, label_smoothing=options.get("label_smoothing", 0.0)
        )

    assert gradcheck(loss, (logits,))
    assert gradgradcheck(loss, (logits,))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2, 2), (4,)], ids=["2d", "spatial", "unbatched"])
def test_cross_entropy_probabilities_gradcheck(shape, reduction):
    """Gradients flow to the logits, the target and the class weights (torch's probability path allows all)."""
    torch.manual_seed(0)
    num_classes = shape[0] if len(shape) == 1 else shape[1]
    logits, target, weight = leaf(*shape), leaf(*shape, low=0.1), leaf(num_classes, low=0.5)

    def loss(z, p, w):
        return mF.cross_entropy(z, p, weight=w, reduction=reduction, label_smoothing=0.2)

    assert gradcheck(loss, (logits, target, weight))
    assert gradgradcheck(loss, (logits, target, weight))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2), (3,)], ids=["2d", "spatial", "unbatched"])
def test_nll_loss_gradcheck(shape, reduction):
    torch.manual_seed(0)
    num_classes = shape[0] if len(shape) == 1 else shape[1]
    target_shape = () if len(shape) == 1 else shape[:1] + shape[2:]
    target = class_indices(num_classes, *target_shape, ignored_fraction=0.0 if len(shape) == 1 else 0.2)
    weight = torch.rand(num_classes, dtype=torch.float64) + 0.5

    def loss(log_probs):
        return mF.nll_loss(log_probs, target, weight=weight, reduction=reduction)

    assert gradcheck(loss, (leaf(*shape),))
    assert gradgradcheck(loss, (leaf(*shape),))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((4,), (3, 4)), ((3, 1), (1, 4))], ids=["same", "bcast", "both"])
def test_mse_loss_gradcheck(shapes, weighted, reduction):
    torch.manual_seed(0)
    input_shape, target_shape = shapes
    inputs = (leaf(*input_shape), leaf(*target_shape)) + ((leaf(*input_shape, low=0.5),) if weighted else ())

    def loss(x, y, w=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the broadcasting warning
            return mF.mse_loss(x, y, reduction=reduction, weight=w)

    assert gradcheck(loss, inputs)
    assert gradgradcheck(loss, inputs)


# ----------------------------------------------------------------------------------------- parity with torch


def assert_same_values_and_gradients(torch_fn, our_fn, inputs, rtol, atol):
    """Run both on copies of ``inputs`` (floating ones require grad); compare outputs and every gradient."""
    theirs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    ours = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    expected, actual = torch_fn(*theirs), our_fn(*ours)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
    grad_output = torch.randn_like(expected)
    differentiable = [i for i, t in enumerate(inputs) if t.is_floating_point()]
    expected_grads = torch.autograd.grad(expected, [theirs[i] for i in differentiable], grad_output, allow_unused=True)
    actual_grads = torch.autograd.grad(actual, [ours[i] for i in differentiable], grad_output, allow_unused=True)
    for expected_grad, actual_grad in zip(expected_grads, actual_grads):
        if expected_grad is None:
            assert actual_grad is None or not actual_grad.any()
        else:
            torch.testing.assert_close(actual_grad, expected_grad, rtol=rtol, atol=atol, equal_nan=True)


TOLERANCES = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-5)}


@st.composite
def class_loss_case(draw):
    batch = draw(st.integers(0, 4))
    num_classes = draw(st.integers(1, 6))
    spatial = draw(st.lists(st.integers(1, 3), max_size=3))
    unbatched = not spatial and draw(st.booleans())
    shape = (num_classes,) if unbatched else (batch, num_classes, *spatial)
    return dict(
        shape=shape,
        num_classes=num_classes,
        target_shape=() if unbatched else (batch, *spatial),
        reduction=draw(st.sampled_from(REDUCTIONS)),
        weighted=draw(st.booleans()),
        label_smoothing=draw(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, -0.2])),
        ignored_fraction=draw(st.sampled_from([0.0, 0.3, 1.0])),
        ignore_index=draw(st.sampled_from([-100, 0, num_classes + 1])),
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        scale=draw(st.sampled_from([1.0, 30.0])),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(deadline=None)  # shared, noisy machine: never a timed assertion
@given(class_loss_case())
def test_cross_entropy_class_indices_parity(case):
    torch.manual_seed(case["seed"])
    logits = torch.randn(case["shape"], dtype=case["dtype"]) * case["scale"]
    target = class_indices(
        case["num_classes"], *case["target_shape"], ignored_fraction=case["ignored_fraction"],
        ignore_index=case["ignore_index"],
    )
    weight = torch.rand(case["num_classes"], dtype=case["dtype"]) if case["weighted"] else None
    options = dict(
        weight=weight, ignore_index=case["ignore_index"], reduction=case["reduction"],
        label_smoothing=case["label_smoothing"],
    )
    assert_same_values_and_gradients(
        lambda z: F.cross_entropy(z, target, **options), lambda z: mF.cross_entropy(z, target, **options),
        [logits], *TOLERANCES[case["dtype"]],
    )


@settings(deadline=None)  # shared, noisy machine: never a timed assertion
@given(class_loss_case())
def test_cross_entropy_probabilities_parity(case):
    torch.manual_seed(case["seed"])
    logits = torch.randn(case["shape"], dtype=case["dtype"]) * case["scale"]
    target = torch.rand(case["shape"], dtype=case["dtype"])
    weight = torch.rand(case["num_classes"], dtype=case["dtype"]) if case["weighted"] else None
    options = dict(reduction=case["reduction"], label_smoothing=case["label_smoothing"])
    inputs = [logits, target] + ([weight] if weight is not None else [])
    assert_same_values_and_gradients(
        lambda *args: F.cross_entropy(*args[:2], weight=args[2] if len(args) > 2 else None, **options),
        lambda *args: mF.cross_entropy(*args[:2], weight=args[2] if len(args) > 2 else None, **options),
        inputs, *TOLERANCES[case["dtype"]],
    )


@settings(deadline=None)  # shared, noisy machine: never a timed assertion
@given(class_loss_case())
def test_nll_loss_parity(case):
    torch.manual_seed(case["seed"])
    log_probs = torch.randn(case["shape"], dtype=case["dtype"])
    target = class_indices(
        case["num_classes"], *case["target_shape"], ignored_fraction=case["ignored_fraction"],
        ignore_index=case["ignore_index"],
    )
    weight = torch.rand(case["num_classes"], dtype=case["dtype"]) if case["weighted"] else None
    options = dict(weight=weight, ignore_index=case["ignore_index"], reduction=case["reduction"])
    assert_same_values_and_gradients(
        lambda x: F.nll_loss(x, target, **options), lambda x: mF.nll_loss(x, target, **options),
        [log_probs], *TOLERANCES[case["dtype"]],
    )


@settings(deadline=None)  # shared, noisy machine: never a timed assertion
@given(
    st.lists(st.integers(1, 3), max_size=3),
    st.data(),
    st.sampled_from(REDUCTIONS),
    st.booleans(),
    st.sampled_from([torch.float64, torch.float32]),
)
def test_mse_loss_parity(shape, data, reduction, weighted, dtype):
    """Target of the same shape or of one that broadcasts with the input (either way round)."""
    target_shape = data.draw(st.sampled_from([shape, [1] * len(shape), shape[1:], [2, *shape]]))
    input_shape = data.draw(st.sampled_from([shape, [2, *shape]])) if target_shape == shape else shape
    inputs = [torch.randn(input_shape, dtype=dtype), torch.randn(target_shape, dtype=dtype)]
    if weighted:
        inputs.append(torch.rand(input_shape, dtype=dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same_values_and_gradients(
            lambda *args: F.mse_loss(*args[:2], reduction=reduction, weight=args[2] if weighted else None),
            lambda *args: mF.mse_loss(*args[:2], reduction=reduction, weight=args[2] if weighted else None),
            inputs, *TOLERANCES[dtype],
        )


def test_mixed_dtypes_promote_as_torch():
    logits32, logits64 = torch.randn(3, 4), torch.randn(3, 4, dtype=torch.float64)
    probabilities64 = torch.rand(3, 4, dtype=torch.float64)
    assert mF.cross_entropy(logits32, probabilities64).dtype == F.cross_entropy(logits32, probabilities64).dtype
    torch.testing.assert_close(mF.cross_entropy(logits32, probabilities64), F.cross_entropy(logits32, probabilities64))
    assert mF.mse_loss(logits32, logits64).dtype == torch.float64
    assert mF.mse_loss(logits32, torch.zeros(3, 4, dtype=torch.long)).dtype == torch.float32
    uint8_target = torch.tensor([0, 3, 1], dtype=torch.uint8)
    torch.testing.assert_close(mF.cross_entropy(logits64, uint8_target), F.cross_entropy(logits64, uint8_target))


# ------------------------------------------------------------------------------------- stability, edge cases


def test_cross_entropy_is_stable_for_huge_logits():
    logits = torch.tensor([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 999.0]], requires_grad=True)
    target = torch.tensor([1, 2])
    loss = mF.cross_entropy(logits, target, label_smoothing=0.1)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    expected = F.cross_entropy(logits, target, label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, torch.autograd.grad(expected, logits)[0])


def test_minus_infinity_logit_off_target_costs_nothing():
    """0 · log 0 = 0: a class of probability 0 that is not the target adds no NaN (as torch)."""
    logits = torch.tensor([[float("-inf"), 0.0, 1.0]], requires_grad=True)
    loss = mF.cross_entropy(logits, torch.tensor([2]))
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([2])))
    assert torch.isfinite(torch.autograd.grad(loss, logits)[0]).all()


@pytest.mark.parametrize("function", ["cross_entropy", "nll_loss"])
def test_all_targets_ignored_gives_nan_and_zero_gradient_as_torch(function):
    input = leaf(4, 3)
    target = torch.full((4,), -100)
    loss = getattr(mF, function)(input, target)
    assert torch.isnan(loss) and torch.isnan(getattr(F, function)(input, target))
    assert torch.equal(torch.autograd.grad(loss, input)[0], torch.zeros(4, 3, dtype=torch.float64))


def test_grad_fn_is_ours():
    logits = leaf(4, 5)
    target = torch.tensor([0, 1, 2, 3])
    assert isinstance(mF.cross_entropy(logits, target).grad_fn, CrossEntropyFunction._backward_cls)
    probabilities = logits.softmax(1).detach()
    assert isinstance(mF.cross_entropy(logits, probabilities).grad_fn, CrossEntropyProbabilitiesFunction._backward_cls)
    assert isinstance(mF.nll_loss(logits, target).grad_fn, NLLLossFunction._backward_cls)
    assert isinstance(mF.mse_loss(logits, torch.zeros(4, 5)).grad_fn, MSELossFunction._backward_cls)
    weighted = mF.mse_loss(logits, torch.zeros(4, 5), weight=leaf(4, 5))
    assert isinstance(weighted.grad_fn, WeightedMSELossFunction._backward_cls)


def test_legacy_reduction_flags():
    logits, target = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    for legacy in [dict(size_average=False), dict(reduce=False), dict(size_average=True, reduce=True)]:
        with pytest.warns(UserWarning, match="deprecated"):
            ours = mF.cross_entropy(logits, target, **legacy)
        with pytest.warns(UserWarning, match="deprecated"):
            torch.testing.assert_close(ours, F.cross_entropy(logits, target, **legacy))
    with pytest.warns(UserWarning, match="deprecated"):
        torch.testing.assert_close(mF.mse_loss(logits, logits * 2, reduce=False), (logits - logits * 2) ** 2)


def test_mse_broadcasting_warns_as_torch():
    with pytest.warns(UserWarning, match="Using a target size"):
        mF.mse_loss(torch.randn(3, 4), torch.randn(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mF.mse_loss(torch.randn(3, 4), torch.randn(3, 4))


def test_weight_requiring_grad_for_class_indices_raises_as_torch():
    logits, target, weight = torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.ones(4, requires_grad=True)
    for function in ["cross_entropy", "nll_loss"]:
        with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
            getattr(mF, function)(logits, target, weight=weight)
        with torch.no_grad():
            getattr(mF, function)(logits, target, weight=weight)


# ---------------------------------------------------------------- torch's values at the edges (issue 12, items 5-8)

INF, NAN = math.inf, math.nan


def run_both(function, args, kwargs, grad_output=None, differentiable_kwargs=()):
    """(torch's, ours): the loss and the gradients of every floating or complex positional input and of the
    keyword arguments named in differentiable_kwargs, each library on fresh copies; the gradient arriving at the
    loss is grad_output (ones by default)."""
    def copy(value, differentiable):
        if not torch.is_tensor(value):
            return value
        differentiable = differentiable and (value.is_floating_point() or value.is_complex())
        return value.detach().clone().requires_grad_(differentiable)

    results = []
    for library in (F, mF):
        inputs = [copy(a, True) for a in args]
        options = {k: copy(v, k in differentiable_kwargs) for k, v in kwargs.items()}
        loss = getattr(library, function)(*inputs, **options)
        leaves = [t for t in (*inputs, *options.values()) if torch.is_tensor(t) and t.requires_grad]
        grads = torch.autograd.grad(loss, leaves, torch.ones_like(loss) if grad_output is None else grad_output)
        results.append((loss.detach(), grads))
    return results


def assert_same_values(actual, expected):
    """Same dtype, shape, NaN positions and infinities, and values."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, equal_nan=True, rtol=1e-6, atol=1e-7)


def assert_matches_torch(function, args, kwargs, grad_output=None, differentiable_kwargs=()):
    (expected, expected_grads), (actual, actual_grads) = run_both(function, args, kwargs, grad_output,
                                                                  differentiable_kwargs)
    assert_same_values(actual, expected)
    for actual_grad, expected_grad in zip(actual_grads, expected_grads):
        assert_same_values(actual_grad, expected_grad)
        assert actual_grad.is_contiguous() == expected_grad.is_contiguous()


def test_probability_target_zero_times_minus_infinity_is_nan_as_torch():
    """The issue's example: torch multiplies the target into log p, and 0 · (−∞) is NaN (was 0 here)."""
    loss = mF.cross_entropy(torch.tensor([[0.0, -INF]]), torch.tensor([[1.0, 0.0]]))
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(torch.tensor([[0.0, -INF]]), torch.tensor([[1.0, 0.0]])))


def test_uint8_target_156_is_out_of_bounds_not_ignored():
    """The issue's example: the default ignore_index −100 is compared with the target as integers, never as a
    byte (−100 wraps to 156 in uint8)."""
    for function in ("cross_entropy", "nll_loss"):
        for library in (F, mF):
            with pytest.raises(IndexError, match="^Target 156 is out of bounds.$"):
                getattr(library, function)(torch.zeros(1, 2), torch.tensor([156], dtype=torch.uint8))
    # reduction='none': torch prints the byte as a character and, for 156, raises UnicodeDecodeError (its bug)
    with pytest.raises(IndexError, match="^Target 156 is out of bounds.$"):
        mF.cross_entropy(torch.zeros(1, 2), torch.tensor([156], dtype=torch.uint8), reduction="none")


EDGE_CASES = {
    # id: (function, args, kwargs)
    "probabilities-minus-inf-on-target": ("cross_entropy", (torch.tensor([[0.0, -INF]]), torch.tensor([[0.0, 1.0]])),
                                          {}),
    "probabilities-smoothing-minus-inf": (
        "cross_entropy", (torch.tensor([[0.0, -INF]]), torch.tensor([[1.0, 0.0]])), dict(label_smoothing=0.5)),
    "probabilities-weight-zero-class": (
        "cross_entropy", (torch.tensor([[0.0, -INF, 1.0]]), torch.tensor([[0.5, 0.25, 0.25]])),
        dict(weight=torch.tensor([1.0, 0.0, 1.0]))),
    "probabilities-empty-batch-mean": ("cross_entropy", (torch.zeros(0, 3), torch.zeros(0, 3)), {}),
    "indices-minus-inf-off-target": ("cross_entropy", (torch.tensor([[-INF, 0.0, 1.0]]), torch.tensor([2])), {}),
    "indices-minus-inf-on-target": ("cross_entropy", (torch.tensor([[-INF, 0.0, 1.0]]), torch.tensor([0])), {}),
    "indices-smoothing-minus-inf": (
        "cross_entropy", (torch.tensor([[-INF, 0.0, 1.0]]), torch.tensor([2])), dict(label_smoothing=0.1)),
    "indices-full-smoothing-infinite-nll": (  # (1 − ε) · ∞ with ε = 1: 0 · ∞ = NaN in torch
        "cross_entropy", (torch.tensor([[-INF, 0.0]]), torch.tensor([0])), dict(label_smoothing=1.0)),
    "indices-plus-inf-logit": ("cross_entropy", (torch.tensor([[INF, 0.0], [0.0, 1.0]]), torch.tensor([1, 0])), {}),
    "ignored-sample-with-nan-logits": (  # loss exactly 0, but log-softmax's backward gives the row NaN in torch
        "cross_entropy", (torch.tensor([[NAN, 0.0], [0.0, 1.0]]), torch.tensor([-100, 1])), dict(reduction="none")),
    "ignored-sample-with-nan-log-probs": (
        "nll_loss", (torch.tensor([[NAN, 0.0], [0.0, 1.0]]), torch.tensor([-100, 1])), dict(reduction="none")),
    "ignored-sample-smoothing-nan": (
        "cross_entropy", (torch.tensor([[NAN, 0.0], [0.0, 1.0]]), torch.tensor([-100, 1])),
        dict(label_smoothing=0.2, weight=torch.tensor([INF, 1.0]))),
    "zero-weight-times-minus-inf": (
        "nll_loss", (torch.tensor([[-INF, 0.0]]), torch.tensor([0])), dict(weight=torch.tensor([0.0, 1.0]),
                                                                          reduction="none")),
    "kept-weights-all-zero-mean": (  # −g/0 = −∞ times the weight 0: NaN at the targets in torch's backward
        "nll_loss", (torch.randn(2, 3), torch.tensor([0, 1])), dict(weight=torch.tensor([0.0, 0.0, 1.0]))),
    "kept-weights-all-zero-mean-ce": (
        "cross_entropy", (torch.randn(2, 3), torch.tensor([0, 1])), dict(weight=torch.tensor([0.0, 0.0, 1.0]))),
    "no-class-all-ignored-smoothing": (  # ε / C = ∞ for C = 0, times a zero loss: NaN
        "cross_entropy", (torch.zeros(2, 0), torch.tensor([-100, -100])), dict(label_smoothing=0.5, reduction="none")),
    "empty-batch-mean": ("nll_loss", (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), {}),
    "empty-spatial-sum": ("cross_entropy", (torch.zeros(2, 3, 0), torch.zeros(2, 0, dtype=torch.long)),
                          dict(reduction="sum", label_smoothing=0.3)),
    "mse-inf-minus-inf": ("mse_loss", (torch.tensor([INF, 1.0]), torch.tensor([INF, 0.0])), {}),
    "mse-weighted-zero-times-inf": (
        "mse_loss", (torch.tensor([INF, 1.0]), torch.tensor([0.0, 0.0])), dict(weight=torch.tensor([0.0, 1.0]))),
    "mse-empty-mean": ("mse_loss", (torch.zeros(0, 2), torch.zeros(0, 2)), {}),
}


@pytest.mark.parametrize("case", EDGE_CASES, ids=list(EDGE_CASES))
def test_non_finite_and_empty_edges_as_torch(case):
    """Values, NaN positions and infinities of the loss and of every gradient equal torch's."""
    function, args, kwargs = EDGE_CASES[case]
    probabilities = function == "cross_entropy" and args[0].shape == args[1].shape
    assert_matches_torch(function, args, kwargs, differentiable_kwargs=("weight",) if probabilities or (
        function == "mse_loss") else ())


@pytest.mark.parametrize("function", ["cross_entropy", "nll_loss", "mse_loss"])
def test_non_finite_gradient_from_above_as_torch(function):
    """An infinite or NaN gradient arriving at an ignored sample passes nothing (torch's nll backward skips it);
    at a kept one it spreads as torch's products spread it."""
    input = torch.randn(3, 4)
    target = torch.tensor([0, -100, 2]) if function != "mse_loss" else torch.randn(3, 4)
    grad_output = torch.tensor([INF, NAN, -INF])
    if function == "mse_loss":
        grad_output = torch.tensor([[INF, 1.0, NAN, 0.0]]).expand(3, 4)
    assert_matches_torch(function, (input, target), dict(reduction="none"), grad_output)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.bool, torch.float32])
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 2), (2, 3, 2, 2)], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("function", ["cross_entropy", "nll_loss"])
def test_class_target_dtypes_are_refused_as_torch(function, shape, dtype):
    """Only int64 and uint8 class indices are taken; every other dtype gets torch's error."""
    target = torch.zeros((shape[0], *shape[2:]), dtype=dtype)
    with pytest.raises(RuntimeError) as expected:
        getattr(F, function)(torch.zeros(shape), target)
    with pytest.raises(RuntimeError, match=f"^{expected.value}$"):
        getattr(mF, function)(torch.zeros(shape), target)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("function", ["cross_entropy", "nll_loss"])
def test_uint8_spatial_targets_are_refused_as_torch(function, reduction):
    """torch's spatial kernel reads int64 targets only: a uint8 target of an (N, C, d1, ...) input is refused."""
    input, target = torch.zeros(2, 3, 2), torch.zeros(2, 2, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="^expected scalar type Long but found Byte$"):
        getattr(F, function)(input, target, reduction=reduction)
    with pytest.raises(RuntimeError, match="^expected scalar type Long but found Byte$"):
        getattr(mF, function)(input, target, reduction=reduction)


@pytest.mark.parametrize("function", ["cross_entropy", "nll_loss"])
def test_uint8_targets_compute_as_int64(function):
    """uint8 indices of a (C,) or (N, C) input give the int64 result, ignore_index compared as an integer."""
    input = torch.randn(4, 5, requires_grad=True)
    target = torch.tensor([0, 4, 1, 3])
    for ignore_index in (-100, 1, 4):
        expected = getattr(F, function)(input, target, ignore_index=ignore_index, reduction="none")
        torch.testing.assert_close(
            getattr(mF, function)(input, target.to(torch.uint8), ignore_index=ignore_index, reduction="none"), expected
        )


def ulp_error(actual, reference):
    """The largest |actual − reference| in units in the last place of actual's dtype at the reference."""
    info = torch.finfo(actual.dtype)
    ulp = info.eps * torch.exp2(torch.floor(torch.log2(reference.abs().clamp(min=info.tiny))))
    return ((actual.double() - reference) / ulp).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["indices", "smoothing", "probabilities", "nll", "mse", "mse-weighted"])
def test_half_precision_accumulates_in_float32(case, dtype):
    """float16/bfloat16 losses and gradients are computed in float32 and rounded once: within half an ulp of the
    float64 result and never less precise than torch's (which rounds at every step of its kernels)."""
    torch.manual_seed(0)
    input = (torch.randn(64, 10) * 3).to(dtype)
    target = {"indices": torch.randint(0, 10, (64,)), "smoothing": torch.randint(0, 10, (64,)),
              "nll": torch.randint(0, 10, (64,)), "probabilities": torch.rand(64, 10).softmax(1).to(dtype),
              "mse": torch.randn(64, 10).to(dtype), "mse-weighted": torch.randn(64, 10).to(dtype)}[case]
    function = {"nll": "nll_loss", "mse": "mse_loss", "mse-weighted": "mse_loss"}.get(case, "cross_entropy")
    kwargs = {"smoothing": dict(label_smoothing=0.1), "mse-weighted": dict(weight=torch.rand(64, 10).to(dtype))}
    kwargs = kwargs.get(case, {})
    (theirs, their_grads), (ours, our_grads) = run_both(function, (input, target), kwargs, None, ("weight",))
    double = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
    target64 = target.double() if target.is_floating_point() else target
    (reference, reference_grads), _ = run_both(function, (input.double(), target64), double, None, ("weight",))
    assert ours.dtype == dtype
    for actual, expected, exact in [(ours, theirs, reference), *zip(our_grads, their_grads, reference_grads)]:
        assert ulp_error(actual, exact) <= max(0.5, ulp_error(expected, exact)) + 0.01


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float64), (torch.bfloat16, torch.float32),
                                    (torch.float16, torch.float64), (torch.float32, torch.float16)],
                         ids=["f32-f64", "bf16-f32", "f16-f64", "f32-f16"])
def test_mixed_dtype_probability_targets_as_torch(dtypes):
    """torch computes log p in the logits' dtype and the products in the promoted one: same dtype as torch, same
    values to the logits' precision (the differential harness leaves these out: its tolerance is the result's)."""
    torch.manual_seed(0)
    logits_dtype, target_dtype = dtypes
    logits = torch.randn(5, 4).to(logits_dtype)
    target = torch.rand(5, 4).softmax(1).to(target_dtype)
    (expected, expected_grads), (actual, actual_grads) = run_both("cross_entropy", (logits, target),
                                                                  dict(label_smoothing=0.1, reduction="none"))
    tolerance = 4 * torch.finfo(logits_dtype).eps
    for mine, theirs in [(actual, expected), *zip(actual_grads, expected_grads)]:
        assert mine.dtype == theirs.dtype
        torch.testing.assert_close(mine, theirs, rtol=tolerance, atol=tolerance)


ZERO_SIZED = {
    # id: (function, input shape, target shape or None for probabilities, kwargs)
    "batch-0": ("cross_entropy", (0, 3), (0,), {}),
    "batch-0-spatial": ("cross_entropy", (0, 3, 2, 2), (0, 2, 2), dict(label_smoothing=0.2)),
    "spatial-0": ("nll_loss", (2, 3, 0, 2), (2, 0, 2), dict(reduction="sum")),
    "spatial-0-none": ("cross_entropy", (2, 3, 0), (2, 0), dict(reduction="none")),
    "probabilities-batch-0": ("cross_entropy", (0, 3), None, {}),
    "probabilities-spatial-0-sum": ("cross_entropy", (2, 3, 0), None, dict(reduction="sum")),
    "probabilities-no-class": ("cross_entropy", (2, 0), None, dict(reduction="none")),
    "mse-0": ("mse_loss", (0, 4), (0, 4), {}),
    "mse-weighted-0": ("mse_loss", (3, 0), (3, 0), dict(weight=torch.zeros(3, 0))),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", ZERO_SIZED, ids=list(ZERO_SIZED))
def test_zero_sized_dims_as_torch(case, reduction):
    function, shape, target_shape, kwargs = ZERO_SIZED[case]
    input = torch.randn(shape)
    target = torch.rand(shape) if target_shape is None else (
        torch.zeros(target_shape, dtype=torch.long) if function != "mse_loss" else torch.randn(target_shape))
    assert_matches_torch(function, (input, target), {"reduction": reduction, **kwargs},
                         differentiable_kwargs=("weight",) if function == "mse_loss" else ())


def test_gradients_are_contiguous_as_torch():
    """torch's log-softmax and nll/mse backwards return contiguous gradients whatever the layout of their inputs
    (channels_last logits, a channels_last probability target, transposed mse inputs)."""
    logits = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    probabilities = torch.rand(2, 3, 4, 4).softmax(1).contiguous(memory_format=torch.channels_last)
    assert_matches_torch("cross_entropy", (logits, torch.randint(0, 3, (2, 4, 4))), dict(label_smoothing=0.1))
    assert_matches_torch("cross_entropy", (logits, probabilities), dict(reduction="none"))
    assert_matches_torch("cross_entropy", (torch.randn(4, 3), torch.rand(3, 4).t()), {})
    assert_matches_torch("mse_loss", (logits, torch.randn(2, 3, 4, 4)), {})
    assert_matches_torch("mse_loss", (torch.randn(3, 5).t(), torch.randn(5, 3)), dict(reduction="none"))


def test_weighted_mse_follows_torch_layouts_and_promotion():
    """The weighted MSE is torch's (x − y)² · w: its 'none' output has that product's strides; a 0-d float64
    weight does not widen a float32 error but widens its mean; integers stay integers until the mean."""
    x, y, w = torch.randn(3, 4).t(), torch.randn(4, 3), torch.rand(3, 4).t()
    expected = F.mse_loss(x, y, weight=w, reduction="none")
    assert mF.mse_loss(x, y, weight=w, reduction="none").stride() == expected.stride()
    x0, y3, w0 = torch.tensor(1.0), torch.randn(3), torch.tensor(2.0, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the broadcasting warning
        for reduction in REDUCTIONS:
            expected = F.mse_loss(x0, y3, weight=w0, reduction=reduction)
            actual = mF.mse_loss(x0, y3, weight=w0, reduction=reduction)
            assert actual.dtype == expected.dtype
            torch.testing.assert_close(actual, expected)
    ints = (torch.tensor([1, 5, 2]), torch.tensor([3, 1, 2]), torch.tensor([1, 2, 3]))
    for reduction in REDUCTIONS:
        assert torch.equal(mF.mse_loss(*ints[:2], weight=ints[2], reduction=reduction),
                           F.mse_loss(*ints[:2], weight=ints[2], reduction=reduction))


def test_weighted_mse_complex_gradients_follow_pytorch_convention():
    """Complex (x − y)² · w: gradients are conjugate Wirtinger derivatives, grad · conj(∂ℓ/∂z), as torch's."""
    torch.manual_seed(0)
    x, y, w = (torch.randn(3, 2, dtype=torch.complex64) for _ in range(3))
    for reduction in REDUCTIONS:
        assert_matches_torch("mse_loss", (x, y), dict(weight=w, reduction=reduction), differentiable_kwargs=("weight",))


# ------------------------------------------------------------------------------------------------- bad input

L, D = torch.long, torch.float64
INDEX_TARGETS = (torch.randn(3, 4), torch.tensor([0, 2, 1]))
PROBABILITY_TARGETS = (torch.randn(3, 4), torch.rand(3, 4))
# id: (function, positional arguments, keyword arguments)
BAD_CALLS = {
    "target-out-of-range": ("cross_entropy", (torch.randn(3, 4), torch.tensor([0, 4, 1])), {}),
    "target-negative": ("nll_loss", (torch.randn(3, 4), torch.tensor([0, -1, 1])), {}),
    "target-out-of-range-spatial": ("nll_loss", (torch.randn(2, 3, 2, 2), torch.full((2, 2, 2), 3)), {}),
    "target-float-for-indices": ("cross_entropy", (torch.randn(3, 4), torch.rand(3)), {}),
    "target-int32": ("nll_loss", (torch.randn(3, 4), torch.zeros(3, dtype=torch.int32)), {}),
    "target-uint8-out-of-range": ("nll_loss", (torch.randn(3, 4), torch.tensor([0, 200, 1], dtype=torch.uint8)), {}),
    "target-uint8-spatial": ("cross_entropy", (torch.randn(2, 3, 2, 2), torch.zeros(2, 2, 2, dtype=torch.uint8)), {}),
    "target-bool": ("cross_entropy", (torch.randn(3, 4), torch.zeros(3, dtype=torch.bool)), {}),
    "batch-mismatch": ("cross_entropy", (torch.randn(3, 4), torch.zeros(2, dtype=L)), {}),
    "scalar-target-for-batch": ("nll_loss", (torch.randn(3, 4), torch.tensor(1)), {}),
    "2d-target-for-2d-input": ("cross_entropy", (torch.randn(3, 4), torch.zeros(3, 2, dtype=L)), {}),
    "unbatched-two-targets": ("cross_entropy", (torch.randn(4), torch.zeros(2, dtype=L)), {}),
    "spatial-target-shape": ("cross_entropy", (torch.randn(2, 3, 4, 5), torch.zeros(2, 4, 4, dtype=L)), {}),
    "spatial-target-rank": ("nll_loss", (torch.randn(2, 3, 4, 5), torch.zeros(2, 4, dtype=L)), {}),
    "3d-target-shape": ("cross_entropy", (torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=L)), {}),
    "5d-target-shape": ("nll_loss", (torch.randn(2, 3, 2, 2, 2), torch.zeros(2, 2, 2, 3, dtype=L)), {}),
    "0d-input": ("nll_loss", (torch.tensor(1.0), torch.tensor(0)), {}),
    "0d-input-ce": ("cross_entropy", (torch.tensor(1.0), torch.zeros(3, dtype=L)), {}),
    "weight-wrong-size": ("cross_entropy", INDEX_TARGETS, dict(weight=torch.ones(3))),
    "weight-wrong-size-spatial": (
        "nll_loss", (torch.randn(2, 3, 2, 2), torch.zeros(2, 2, 2, dtype=L)), dict(weight=torch.ones(2))
    ),
    "weight-2d": ("nll_loss", INDEX_TARGETS, dict(weight=torch.ones(1, 4))),
    "weight-dtype": ("cross_entropy", INDEX_TARGETS, dict(weight=torch.ones(4, dtype=D))),
    "integer-input": ("cross_entropy", (torch.zeros(3, 4, dtype=L), torch.zeros(3, dtype=L)), {}),
    "integer-input-nll": ("nll_loss", (torch.zeros(3, 4, dtype=L), torch.zeros(3, dtype=L)), {}),
    "integer-input-weight-dtype": (
        "nll_loss", (torch.zeros(3, 4, dtype=L), torch.zeros(3, dtype=L)), dict(weight=torch.ones(4, dtype=D))),
    "integer-input-probabilities-smoothing": (
        "cross_entropy", (torch.zeros(3, 4, dtype=L), torch.rand(3, 4)), dict(label_smoothing=1.5)),
    "smoothing-above-1": ("cross_entropy", INDEX_TARGETS, dict(label_smoothing=1.5)),
    "smoothing-above-1-probabilities": ("cross_entropy", PROBABILITY_TARGETS, dict(label_smoothing=2.0)),
    "probabilities-integer": ("cross_entropy", (torch.randn(3, 4), torch.zeros(3, 4, dtype=L)), {}),
    "probabilities-ignore-index": ("cross_entropy", PROBABILITY_TARGETS, dict(ignore_index=1)),
    "probabilities-weight-size": ("cross_entropy", PROBABILITY_TARGETS, dict(weight=torch.ones(2))),
    "probabilities-0d": ("cross_entropy", (torch.tensor(1.0), torch.tensor(0.5)), {}),
    "bad-reduction": ("cross_entropy", INDEX_TARGETS, dict(reduction="avg")),
    "bad-reduction-nll": ("nll_loss", INDEX_TARGETS, dict(reduction="avg")),
    "bad-reduction-mse": ("mse_loss", (torch.randn(3), torch.randn(3)), dict(reduction="avg")),
    "bad-reduction-mse-weighted": (
        "mse_loss", (torch.randn(3), torch.randn(3)), dict(reduction="avg", weight=torch.ones(3))
    ),
    "mse-not-broadcastable": ("mse_loss", (torch.randn(4, 5), torch.randn(3, 5)), {}),
    "mse-weight-shape": ("mse_loss", (torch.randn(4, 5), torch.randn(4, 5)), dict(weight=torch.ones(5))),
    "mse-integer": ("mse_loss", (torch.zeros(3, dtype=L), torch.zeros(3, dtype=L)), {}),
    "mse-weighted-bool": (
        "mse_loss", (torch.zeros(3, dtype=torch.bool), torch.zeros(3)), dict(weight=torch.ones(3))),
    "mse-weighted-bools": ("mse_loss", (torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)),
                           dict(weight=torch.ones(3))),
}


@pytest.mark.parametrize("case", BAD_CALLS, ids=list(BAD_CALLS))
def test_bad_input_raises_as_torch(case):
    function, args, kwargs = BAD_CALLS[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception) as expected:
            getattr(F, function)(*args, **kwargs)
        with pytest.raises(expected.type) as raised:
            getattr(mF, function)(*args, **kwargs)
    assert str(raised.value) == str(expected.value)


# --------------------------------------------------------------------------------------------------- modules


@pytest.mark.parametrize(
    "name, kwargs, make_inputs",
    [
        ("CrossEntropyLoss", {}, lambda: (torch.randn(4, 5), torch.tensor([0, 1, 4, 2]))),
        (
            "CrossEntropyLoss",
            dict(weight=torch.rand(5), ignore_index=1, reduction="sum", label_smoothing=0.2),
            lambda: (torch.randn(4, 5), torch.tensor([0, 1, 4, 2])),
        ),
        ("CrossEntropyLoss", dict(reduction="none"), lambda: (torch.randn(2, 5, 3), torch.rand(2, 5, 3))),
        ("NLLLoss", dict(weight=torch.rand(5)), lambda: (torch.randn(4, 5), torch.tensor([0, 1, 4, 2]))),
        ("MSELoss", {}, lambda: (torch.randn(3, 4), torch.randn(3, 4))),
        ("MSELoss", dict(reduction="sum"), lambda: (torch.randn(3, 4), torch.randn(3, 4))),
    ],
)
def test_modules_match_torch(name, kwargs, make_inputs):
    ours, theirs = getattr(mnn, name)(**kwargs), getattr(torch.nn, name)(**kwargs)
    assert isinstance(ours, getattr(torch.nn, name))
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    input, target = make_inputs()
    input.requires_grad_()
    output = ours(input, target)
    torch.testing.assert_close(output, theirs(input, target))
    assert type(output.grad_fn).__name__.endswith("FunctionBackward")
