"""torch.func on the norms and the losses: forward mode (jvp), vmap, and double derivatives through the hand-written
rules of manual_conv/ops/norm.py and manual_conv/ops/loss.py, on both backends.

Every public function of the family passes gradcheck with forward mode and batched (vmapped) gradients and
gradgradcheck forward-over-reverse (``check_derivatives``) over the arguments that change its formula, and vmap equals
a loop over every subset of batched arguments, class-index targets included (``check_vmap``); jvp, jacfwd, jacrev and
hessian equal torch's own; the running statistics and the target range check behave under vmap as native's do; and
counters on the Functions prove that the transforms run through our jvp, backward and forward.
"""
import collections
import functools
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.gradcheck import GradcheckError

import manual_conv.functional as mF
from manual_conv.ops import loss as _loss
from manual_conv.ops import norm as _norm
from manual_conv.ops._utils import is_vmapped
from transforms import check_derivatives, check_vmap, looped_per_sample_gradients, per_sample_gradients

pytestmark = pytest.mark.usefixtures("single_thread")

TRANSFORM_CASES = {name: name for name in (
    "layer_norm", "batch_norm", "instance_norm", "group_norm", "normalize", "cross_entropy", "nll_loss", "mse_loss")}

FUNCTIONS = (_norm.LayerNormFunction, _norm.GroupNormFunction, _norm.BatchNormFunction, _norm.BatchNormEvalFunction,
             _norm.NormalizeFunction, _loss.NLLLossFunction, _loss.CrossEntropyFunction,
             _loss.CrossEntropyProbabilitiesFunction, _loss.MSELossFunction, _loss.WeightedMSELossFunction)


def _randn(*shape, generator):
    return torch.randn(shape, dtype=torch.float64, generator=generator)


def _cases():
    """(id, function of tensors, tensors): every public function over the arguments that change its formula."""
    g = torch.Generator().manual_seed(0)
    x = _randn(2, 3, 2, 2, generator=g)
    gamma, beta = _randn(3, generator=g), _randn(3, generator=g)
    mean, var = _randn(3, generator=g), torch.rand(3, dtype=torch.float64, generator=g) + 0.5
    sequence, ln_gamma, ln_beta = _randn(2, 3, 4, generator=g), _randn(4, generator=g), _randn(4, generator=g)
    logits, logits2d = _randn(2, 3, generator=g), _randn(2, 3, 2, 2, generator=g)
    index, index2d = torch.tensor([0, 2]), torch.tensor([[[0, 2], [1, -100]], [[2, 2], [0, 1]]])
    probabilities = torch.softmax(_randn(2, 3, generator=g), 1)
    class_weight = torch.rand(3, dtype=torch.float64, generator=g) + 0.5
    target, weight = _randn(2, 3, generator=g), torch.rand(2, 3, dtype=torch.float64, generator=g)
    cases = [
        ("layer_norm", lambda x, w, b: mF.layer_norm(x, (4,), w, b), (sequence, ln_gamma, ln_beta)),
        ("layer_norm-2d-no_affine", lambda x: mF.layer_norm(x, (3, 4)), (sequence,)),
        ("group_norm", lambda x, w, b: mF.group_norm(x, 3, w, b), (x, gamma, beta)),
        ("group_norm-no_affine", lambda x: mF.group_norm(x, 1), (x,)),
        ("batch_norm-training", lambda x, w, b: mF.batch_norm(x, None, None, w, b, training=True), (x, gamma, beta)),
        ("batch_norm-training-no_affine", lambda x: mF.batch_norm(x, None, None, training=True), (x,)),
        ("batch_norm-eval", lambda x, m, v, w, b: mF.batch_norm(x, m, v, w, b), (x, mean, var, gamma, beta)),
        ("instance_norm", lambda x, w, b: mF.instance_norm(x, None, None, w, b), (x, gamma, beta)),
        ("instance_norm-eval", lambda x, m, v: mF.instance_norm(x, m, v, use_input_stats=False), (x, mean, var)),
    ]
    cases += [(f"normalize-p{p}", functools.partial(lambda x, p: mF.normalize(x, p=p, dim=1), p=p), (x,))
              for p in (2.0, 1.0, 3.0, 0.5, float("inf"))]
    cases.append(("normalize-dims", lambda x: mF.normalize(x, dim=(1, 2)), (x,)))
    for reduction in ("mean", "sum", "none"):
        cases += [
            (f"cross_entropy-{reduction}", functools.partial(
                lambda z, t, r: mF.cross_entropy(z, t, reduction=r), r=reduction), (logits, index)),
            (f"cross_entropy-weighted-smoothed-ignored-{reduction}", functools.partial(
                lambda z, t, r: mF.cross_entropy(z, t, class_weight, reduction=r, label_smoothing=0.2), r=reduction),
             (logits2d, index2d)),
            (f"cross_entropy-probabilities-{reduction}", functools.partial(
                lambda z, p, r: mF.cross_entropy(z, p, class_weight, reduction=r, label_smoothing=0.1), r=reduction),
             (logits, probabilities)),
            (f"nll_loss-{reduction}", functools.partial(
                lambda x, t, r: mF.nll_loss(x, t, class_weight, reduction=r), r=reduction), (logits2d, index2d)),
            (f"mse_loss-{reduction}", functools.partial(
                lambda x, y, r: mF.mse_loss(x, y, reduction=r), r=reduction), (logits, target)),
            (f"mse_loss-weighted-{reduction}", functools.partial(
                lambda x, y, w, r: mF.mse_loss(x, y, reduction=r, weight=w), r=reduction), (logits, target, weight)),
        ]
    cases.append(("cross_entropy-unbatched", lambda z, t: mF.cross_entropy(z, t), (logits[0], index[1])))
    return cases


CASES = _cases()
CASE_IDS = [case[0] for case in CASES]


def _differentiable_only(function, inputs):
    """(function of the differentiable inputs, those inputs): class-index targets are closed over, and the running
    statistics (arguments m, v) too: torch refuses them requiring grad."""
    names = inspect.signature(function).parameters
    positions = [index for index, (tensor, name) in enumerate(zip(inputs, names))
                 if tensor.is_floating_point() and name not in ("m", "v")]

    def of_differentiable(*differentiable):
        arguments = list(inputs)
        for position, tensor in zip(positions, differentiable):
            arguments[position] = tensor
        return function(*arguments)

    return of_differentiable, [inputs[position] for position in positions]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_derivatives(backend, case):
    """gradcheck (reverse, forward, both batched) and gradgradcheck (reverse- and forward-over-reverse)."""
    _, function, inputs = case
    function, inputs = _differentiable_only(function, inputs)
    check_derivatives(function, *inputs)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_vmap_equals_loop(backend, case):
    """vmap over every subset of the arguments (targets and running statistics included), at random dims."""
    _, function, inputs = case
    check_vmap(function, *inputs)


REPRESENTATIVE = [
    ("layer_norm", lambda lib: lambda x, w, b: lib.layer_norm(x, (4,), w, b), ((2, 3, 4), (4,), (4,))),
    ("group_norm", lambda lib: lambda x, w, b: lib.group_norm(x, 3, w, b), ((2, 3, 2, 2), (3,), (3,))),
    ("batch_norm", lambda lib: lambda x, w, b: lib.batch_norm(x, None, None, w, b, training=True),
     ((2, 3, 2, 2), (3,), (3,))),
    ("normalize", lambda lib: lambda x: lib.normalize(x, p=3.0), ((2, 3, 2),)),
    ("cross_entropy", lambda lib: lambda z: lib.cross_entropy(z, torch.tensor([2, 0]), label_smoothing=0.1),
     ((2, 3),)),
    ("cross_entropy-probabilities", lambda lib: lambda z, p: lib.cross_entropy(z, p), ((2, 3), (2, 3))),
    ("nll_loss", lambda lib: lambda x: lib.nll_loss(x, torch.tensor([1, -100, 2]), reduction="sum"), ((3, 3),)),
    ("mse_loss", lambda lib: lambda x, y, w: lib.mse_loss(x, y, weight=w), ((2, 3), (2, 3), (2, 3))),
]


def _composite_layer_norm(x, w, b):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + 1e-5) * w + b


def _composite_batch_norm(x, w, b):
    mean = x.mean((0, 2, 3), keepdim=True)
    normalized = (x - mean) / torch.sqrt(((x - mean) ** 2).mean((0, 2, 3), keepdim=True) + 1e-5)
    return normalized * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)


# Native layer_norm's and batch_norm's hessians are wrong in ∂²/∂γ∂x (torch 2.14: functorch's batching rule of their
# backward, pytorch/functorch#534, and their second-order forward mode, pytorch/pytorch#196700 and #196699); their
# plain autograd double backward agrees with ours. Those hessians are compared with the formula written in
# elementary torch operations instead.
HESSIAN_REFERENCE = {"layer_norm": _composite_layer_norm, "batch_norm": _composite_batch_norm}


@pytest.mark.parametrize("name, make, shapes", REPRESENTATIVE, ids=[case[0] for case in REPRESENTATIVE])
def test_func_transforms_equal_native(backend, name, make, shapes):
    """torch.func.jvp, jacfwd, jacrev and hessian of ours equal native's."""
    g = torch.Generator().manual_seed(1)
    inputs = tuple(_randn(*shape, generator=g) for shape in shapes)
    if name == "mse_loss":
        inputs = (*inputs[:2], inputs[2].abs())
    tangents = tuple(torch.randn_like(tensor) for tensor in inputs)
    ours, native = make(mF), make(F)
    for actual, expected in zip(torch.func.jvp(ours, inputs, tangents), torch.func.jvp(native, inputs, tangents)):
        torch.testing.assert_close(actual, expected)
    argnums = tuple(range(len(inputs)))
    for transform in (torch.func.jacfwd, torch.func.jacrev, torch.func.hessian):
        reference = HESSIAN_REFERENCE.get(name, native) if transform is torch.func.hessian else native
        torch.testing.assert_close(transform(ours, argnums)(*inputs), transform(reference, argnums)(*inputs),
                                   msg=lambda message: f"{transform.__name__}: {message}")


def test_batch_norm_running_statistics_under_vmap(backend):
    """Batched running statistics get each instance's update, as a loop's (and as native's); unbatched ones under a
    batched input raise native's error (one statistic cannot take a batch of updates in place)."""
    x = torch.randn(4, 2, 3, 5, dtype=torch.float64)
    results = []
    for lib in (mF, F):
        mean, var = torch.zeros(4, 3, dtype=torch.float64), torch.ones(4, 3, dtype=torch.float64)
        output = torch.func.vmap(lambda x, m, v: lib.batch_norm(x, m, v, training=True))(x, mean, var)
        results.append((output, mean, var))
    looped_mean, looped_var = torch.zeros(4, 3, dtype=torch.float64), torch.ones(4, 3, dtype=torch.float64)
    for sample, m, v in zip(x, looped_mean, looped_var):
        mF.batch_norm(sample, m, v, training=True)
    torch.testing.assert_close(results[0], results[1])
    torch.testing.assert_close((results[0][1], results[0][2]), (looped_mean, looped_var))
    messages = []
    for lib in (mF, F):
        for call in (lambda x: lib.batch_norm(x, torch.zeros(3), torch.ones(3), training=True),
                     lambda x: lib.instance_norm(x, torch.zeros(3), torch.ones(3))):
            with pytest.raises(RuntimeError) as error:
                torch.func.vmap(call)(x.float())
            messages.append(str(error.value))
    assert messages[:2] == messages[2:] and "were not batched" in messages[0]


@pytest.mark.parametrize("function", ["batch_norm", "instance_norm"])
def test_running_statistics_update_under_derivative_transforms(backend, function):
    """jvp, grad, hessian and vmap(grad) of a training step update the running statistics as native's (torch.func
    refuses in-place writes into captured tensors: the update is made below those transforms)."""
    x, tangent = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, 2, 2, dtype=torch.float64)
    results = []
    for lib in (mF, F):
        def step(x, m, v):
            return getattr(lib, function)(x, m, v, **({"training": True} if function == "batch_norm" else {}))

        mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        outputs = [torch.func.jvp(lambda x: step(x, mean, var), (x,), (tangent,)),
                   torch.func.grad(lambda x, m, v: step(x, m, v).pow(2).sum())(x, mean, var),
                   torch.func.hessian(lambda x: step(x, mean, var).pow(3).sum())(x[:2, :, :2, :1])]
        batched_mean, batched_var = torch.zeros(4, 3, dtype=torch.float64), torch.ones(4, 3, dtype=torch.float64)
        outputs.append(torch.func.vmap(torch.func.grad(lambda x, m, v: step(x, m, v).pow(3).sum()))(
            x[:, None], batched_mean, batched_var))
        results.append((outputs, mean, var, batched_mean, batched_var))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("function", ["cross_entropy", "nll_loss"])
def test_batched_targets_out_of_range_raise_as_native(backend, function):
    """Under vmap the class-index range check cannot read values (.item()); the gather refuses the index instead,
    with native's RuntimeError under vmap. Ignored targets stay fine."""
    logits = torch.randn(2, 2, 3, dtype=torch.float64)
    for bad in (5, -3):
        target = torch.tensor([[0, bad], [1, 1]])
        messages = []
        for lib in (mF, F):
            with pytest.raises(RuntimeError) as error:
                torch.func.vmap(getattr(lib, function))(logits, target)
            messages.append(str(error.value))
        assert messages[0] == messages[1] == f"index {bad} is out of bounds for dimension 2 with size 3"
    ignored = torch.tensor([[0, -100], [1, 2]])
    torch.testing.assert_close(torch.func.vmap(getattr(mF, function))(logits, ignored),
                               torch.func.vmap(getattr(F, function))(logits, ignored))


def test_per_sample_gradients_equal_loop(backend):
    """functional_call + vmap(grad) through layer, group and batch norms (eval) and the losses equals the loop."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), _Norms(), torch.nn.Linear(12, 3)).double()
    inputs, targets = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.tensor([0, 2, 1, 2])

    def loss(output, target):
        return mF.cross_entropy(output, target, label_smoothing=0.1) + mF.mse_loss(output, output.detach() * 0.5)

    expected = looped_per_sample_gradients(model, loss, inputs, targets)
    actual = per_sample_gradients(model, loss, inputs, targets)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], msg=lambda message: f"{name}: {message}")


class _Norms(torch.nn.Module):
    """Layer, group and instance norms and eval batch norm of a (N, 12) input seen as (N, 3, 2, 2)."""

    def __init__(self):
        super().__init__()
        self.gamma, self.beta = torch.nn.Parameter(torch.rand(3) + 0.5), torch.nn.Parameter(torch.randn(3))
        self.ln_gamma = torch.nn.Parameter(torch.rand(12) + 0.5)
        self.register_buffer("mean", torch.randn(3))
        self.register_buffer("var", torch.rand(3) + 0.5)

    def forward(self, x):
        x = mF.layer_norm(x, (12,), self.ln_gamma)
        planes = x.view(x.shape[0], 3, 2, 2)
        planes = mF.group_norm(planes, 3, self.gamma, self.beta) + mF.batch_norm(planes, self.mean, self.var,
                                                                                  self.gamma, self.beta)
        return mF.normalize(planes.flatten(1), p=2.0)


def _counting(function, counts, key, condition=lambda *args: True):
    @functools.wraps(function)
    def counted(*args):
        if condition(*args):
            counts[key] += 1
        return function(*args)
    return counted


def test_transforms_run_through_our_rules(backend, monkeypatch):
    """jvp calls each Function's own jvp, vmap runs each Function's forward on vmapped slices (its generated rule),
    and vmap(grad) its backward on vmapped slices."""
    counts = collections.Counter()
    for cls in FUNCTIONS:
        rule = cls.__dict__["jvp"]
        monkeypatch.setattr(rule, "rule", _counting(rule.rule, counts, (cls.__name__, "jvp")))
        for name in ("forward", "backward"):
            monkeypatch.setattr(cls, name, staticmethod(_counting(
                getattr(cls, name), counts, (cls.__name__, name),
                lambda *args: any(isinstance(arg, torch.Tensor) and is_vmapped(arg) for arg in args))))
    for _, function, inputs in CASES:
        partial, differentiable = _differentiable_only(function, inputs)
        torch.func.jvp(partial, tuple(differentiable), tuple(torch.ones_like(tensor) for tensor in differentiable))
        batched = tuple(torch.stack([tensor, tensor]) for tensor in differentiable)
        torch.func.vmap(torch.func.grad(lambda *args: partial(*args).sum()))(*batched)
    for cls in FUNCTIONS:
        for rule in ("jvp", "forward", "backward"):
            assert counts[cls.__name__, rule], f"{cls.__name__}.{rule} never ran"


def test_a_wrong_jvp_fails(monkeypatch):
    """The checks can fail: a jvp off by 1% is caught by gradcheck's forward mode."""
    rule = _norm.LayerNormFunction.__dict__["jvp"]
    original = rule.rule
    monkeypatch.setattr(rule, "rule", lambda *args: 1.01 * original(*args))
    with pytest.raises(GradcheckError, match="forward"):
        check_derivatives(lambda x: mF.layer_norm(x, (4,)), torch.randn(2, 4, dtype=torch.float64), double=False)
