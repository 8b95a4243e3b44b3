"""torch.func on the activations, linear, dropout and stochastic depth (issue 14): the hand-derived jvp of every
Function (gradcheck forward mode, batched, forward-over-reverse), vmap equal to a loop over any batched argument,
torch.func.jvp/jacfwd/jacrev/hessian equal to torch's, in-place calls under forward AD and vmap as torch's, dropout's
randomness under vmap as torch's, per-sample gradients equal to a loop, and proof that all of it runs through our
Functions' jvp and vmap rules."""
import functools

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
import torchvision

import manual_conv
import manual_conv.functional as mF
from manual_conv.ops import activation, linear, stochastic_depth
from transforms import check_derivatives, check_vmap, looped_per_sample_gradients, per_sample_gradients

pytestmark = pytest.mark.usefixtures("single_thread")

# values away from every kink (0, ±1, ±2, ±3, 6) by more than gradcheck's step, both sides of each
X = torch.tensor([[-3.7, -2.2, -0.6, -0.3, 0.4], [0.9, 1.6, 2.5, 3.4, 6.5]], dtype=torch.float64)


def _clone_then(function):
    """An in-place function applied to a copy (gradcheck's inputs are leaves that require grad)."""
    return lambda x: function(x.clone())


# public name -> [(ours, torch's)] over the argument variants that change the formula
ELEMENTWISE = {
    "relu": [(mF.relu, torch.relu)],
    "relu_": [(_clone_then(mF.relu_), _clone_then(torch.relu_))],
    "sigmoid": [(mF.sigmoid, torch.sigmoid)],
    "tanh": [(mF.tanh, torch.tanh)],
    "gelu": [(mF.gelu, F.gelu), (functools.partial(mF.gelu, approximate="tanh"),
                                 functools.partial(F.gelu, approximate="tanh"))],
    "softmax": [(functools.partial(mF.softmax, dim=1), functools.partial(F.softmax, dim=1)),
                (functools.partial(mF.softmax, dim=0), functools.partial(F.softmax, dim=0))],
    "log_softmax": [(functools.partial(mF.log_softmax, dim=1), functools.partial(F.log_softmax, dim=1)),
                    (functools.partial(mF.log_softmax, dim=0), functools.partial(F.log_softmax, dim=0))],
    "hardtanh": [(mF.hardtanh, F.hardtanh), (functools.partial(mF.hardtanh, min_val=-2.0, max_val=3.0),
                                             functools.partial(F.hardtanh, min_val=-2.0, max_val=3.0))],
    "hardtanh_": [(_clone_then(mF.hardtanh_), _clone_then(F.hardtanh_))],
    "relu6": [(mF.relu6, F.relu6), (_clone_then(functools.partial(mF.relu6, inplace=True)),
                                     _clone_then(functools.partial(F.relu6, inplace=True)))],
    "leaky_relu": [(functools.partial(mF.leaky_relu, negative_slope=0.2),
                    functools.partial(F.leaky_relu, negative_slope=0.2)),
                   (functools.partial(mF.leaky_relu, negative_slope=-0.5),
                    functools.partial(F.leaky_relu, negative_slope=-0.5))],
    "leaky_relu_": [(_clone_then(functools.partial(mF.leaky_relu_, negative_slope=0.2)),
                     _clone_then(functools.partial(F.leaky_relu_, negative_slope=0.2)))],
    "elu": [(mF.elu, F.elu), (functools.partial(mF.elu, alpha=0.5), functools.partial(F.elu, alpha=0.5))],
    "elu_": [(_clone_then(functools.partial(mF.elu_, alpha=1.5)), _clone_then(functools.partial(F.elu_, alpha=1.5)))],
    "silu": [(mF.silu, F.silu), (_clone_then(functools.partial(mF.silu, inplace=True)),
                                 _clone_then(functools.partial(F.silu, inplace=True)))],
    "mish": [(mF.mish, F.mish), (_clone_then(functools.partial(mF.mish, inplace=True)),
                                 _clone_then(functools.partial(F.mish, inplace=True)))],
    "hardswish": [(mF.hardswish, F.hardswish), (_clone_then(functools.partial(mF.hardswish, inplace=True)),
                                                _clone_then(functools.partial(F.hardswish, inplace=True)))],
    "hardsigmoid": [(mF.hardsigmoid, F.hardsigmoid),
                    (_clone_then(functools.partial(mF.hardsigmoid, inplace=True)),
                     _clone_then(functools.partial(F.hardsigmoid, inplace=True)))],
    "softplus": [(mF.softplus, F.softplus), (functools.partial(mF.softplus, beta=2, threshold=3),
                                             functools.partial(F.softplus, beta=2, threshold=3))],
}
ELEMENTWISE_CASES = [pytest.param(ours, theirs, id=f"{name}-{index}")
                     for name, variants in ELEMENTWISE.items() for index, (ours, theirs) in enumerate(variants)]

W = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
B = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
MASK = torch.tensor([[0.0, 2.0, 2.0, 0.0, 2.0], [2.0, 0.0, 2.0, 2.0, 2.0]], dtype=torch.float64)  # p = 0.5
ROW_NOISE = torch.tensor([[0.0], [2.0]], dtype=torch.float64)  # stochastic depth's, mode 'row'


def _seeded(function, *args, **kwargs):
    """``function`` with the generator seeded on every call: one fixed mask for gradcheck's many calls."""
    def call(input):
        torch.manual_seed(0)
        return function(input, *args, **kwargs)
    return call


TRANSFORM_CASES = {**ELEMENTWISE, "linear": ..., "dropout": ..., "stochastic_depth": ...}


@pytest.mark.parametrize("ours, theirs", ELEMENTWISE_CASES)
def test_elementwise_derivatives_and_vmap(backend, ours, theirs):
    check_derivatives(ours, X)
    check_vmap(ours, X)  # (in place on a copy of the batched input: the stacked copy itself)


@pytest.mark.parametrize("ours, theirs", ELEMENTWISE_CASES)
def test_elementwise_transforms_equal_torchs(backend, ours, theirs):
    tangent = torch.randn_like(X)
    for transform in (lambda f: torch.func.jvp(f, (X,), (tangent,)), lambda f: torch.func.jacfwd(f)(X),
                      lambda f: torch.func.jacrev(f)(X)):
        torch.testing.assert_close(transform(ours), transform(theirs))
    # hessian = jacfwd(jacrev): forward-over-reverse through our backward's Functions. torch's reference by
    # reverse-over-reverse; torch has no derivative of hardsigmoid_backward at all, and there (f'' = 0 off the
    # kinks) the Hessian of Σ f(x)² is 2 JᵀJ
    squares = [lambda x, f=f: f(x).pow(2).sum() for f in (ours, theirs)]
    try:
        expected = torch.func.jacrev(torch.func.jacrev(squares[1]))(X)
    except RuntimeError as error:
        assert "hardsigmoid_backward is not implemented" in str(error)
        jacobian = torch.func.jacrev(theirs)(X).flatten(0, 1).flatten(1)
        expected = (2 * jacobian.t() @ jacobian).view(*X.shape, *X.shape)
    torch.testing.assert_close(torch.func.hessian(squares[0])(X), expected)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_derivatives_and_vmap(backend, bias):
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    args = (x, W, B) if bias else (x, W)
    check_derivatives(mF.linear, *args)
    check_vmap(mF.linear, *args)
    check_derivatives(mF.linear, x, W[0])  # a 1-D weight: one output per row
    tangents = tuple(torch.randn_like(arg) for arg in args)
    for transform in (lambda f: torch.func.jvp(f, args, tangents), lambda f: torch.func.jacfwd(f, (0, 1))(*args),
                      lambda f: torch.func.hessian(lambda *a: f(*a).tanh().sum(), (0, 1))(*args)):
        torch.testing.assert_close(transform(mF.linear), transform(F.linear))


@pytest.mark.parametrize("inplace", [False, True])
def test_dropout_with_a_fixed_mask(backend, inplace):
    check_derivatives(lambda x: linear.DropoutFunction.apply(x.clone(), MASK, inplace), X)
    if inplace:  # a batched mask cannot be written into an unbatched x, as with torch's in-place ops
        check_vmap(lambda x: linear.DropoutFunction.apply(x * 1, MASK, True), X)
        masks = torch.stack([MASK, MASK.flip(0), MASK.flip(1)], 1)
        inputs = torch.stack([X, -X, 2 * X])
        torch.testing.assert_close(
            torch.func.vmap(lambda x, mask: linear.DropoutFunction.apply(x * 1, mask, True), in_dims=(0, 1))(
                inputs, masks), inputs * masks.movedim(1, 0))
        with pytest.raises(RuntimeError, match="vmap: inplace arithmetic"):
            torch.func.vmap(lambda x, mask: linear.DropoutFunction.apply(x, mask, True), in_dims=(None, 1))(
                X.clone(), masks)
    else:
        check_vmap(lambda x, mask: linear.DropoutFunction.apply(x, mask, False), X, MASK)
    # the public function, its mask seeded; not batched: gradcheck's batched forward check runs the forward under
    # the legacy vmap, which refuses any random op (the Function is checked batched above)
    check_derivatives(_clone_then(_seeded(mF.dropout, 0.4, inplace=inplace)), X, batched=False)
    torch.testing.assert_close(torch.func.jvp(_seeded(mF.dropout, 0.4), (X,), (X.cos(),)),
                               torch.func.jvp(_seeded(F.dropout, 0.4), (X,), (X.cos(),)))


def test_stochastic_depth_with_fixed_noise(backend):
    check_derivatives(lambda x: stochastic_depth.StochasticDepthFunction.apply(x, ROW_NOISE), X)
    check_vmap(stochastic_depth.StochasticDepthFunction.apply, X, ROW_NOISE)
    for mode in ("row", "batch"):
        check_derivatives(_seeded(mF.stochastic_depth, 0.5, mode), X, batched=False)  # as dropout's
        torch.testing.assert_close(
            torch.func.jvp(_seeded(mF.stochastic_depth, 0.5, mode), (X,), (X.cos(),)),
            torch.func.jvp(_seeded(torchvision.ops.stochastic_depth, 0.5, mode), (X,), (X.cos(),)))


@pytest.mark.parametrize("name", ["relu_", "hardtanh_", "leaky_relu_", "elu_", "silu", "mish", "hardswish",
                                  "hardsigmoid"])
def test_in_place_under_forward_ad_as_torchs(backend, name):
    """The dual tensor itself comes back, its tangent written in place, as torch's in-place ops do."""
    results = []
    for function in (getattr(mF, name), getattr(F, name)):
        kwargs = {} if name.endswith("_") else {"inplace": True}
        with fwAD.dual_level():
            dual = fwAD.make_dual(X.clone(), X.cos())
            output = function(dual, **kwargs)
            assert output is dual
            results.append(fwAD.unpack_dual(output))
    torch.testing.assert_close(results[0].primal, results[1].primal)
    torch.testing.assert_close(results[0].tangent, results[1].tangent)


def test_in_place_raises_for_a_negative_slope_under_forward_ad_as_torchs(backend):
    for function, kwargs in ((mF.leaky_relu_, {"negative_slope": -0.5}), (mF.elu_, {"alpha": -1.0})):
        with fwAD.dual_level(), pytest.raises(RuntimeError, match="negative slope"):
            function(fwAD.make_dual(X.clone(), X.cos()), **kwargs)


@pytest.mark.parametrize("in_dim", [0, 1, -1])
def test_vmap_of_an_in_place_call_writes_the_batch_as_torchs(backend, in_dim):
    ours, theirs = X.clone(), X.clone()
    torch.func.vmap(mF.relu_, in_dims=in_dim)(ours)
    torch.func.vmap(torch.relu_, in_dims=in_dim)(theirs)
    assert torch.equal(ours, theirs)


def test_vmap_of_grad_through_relus_compiled_backward(backend):
    """On 'cpp' ReLU's backward is the compiled relu_backward, batched here by its register_vmap rule."""
    def loss(x):
        return mF.relu(x).pow(2).sum()
    ours = torch.func.vmap(torch.func.grad(loss), in_dims=1)(X)
    torch.testing.assert_close(ours, torch.func.vmap(torch.func.grad(lambda x: F.relu(x).pow(2).sum()), in_dims=1)(X))
    torch.testing.assert_close(torch.func.hessian(loss)(X[0]),
                               torch.func.hessian(lambda x: F.relu(x).pow(2).sum())(X[0]))


def test_dropout_randomness_under_vmap_as_torchs(backend):
    x = torch.randn(3, 4, 5)
    for function in (mF.dropout, F.dropout):
        with pytest.raises(RuntimeError, match="randomness error mode"):
            torch.func.vmap(lambda a: function(a, 0.5))(x)
    results = {}
    for randomness, in_dim in (("same", 0), ("same", 1), ("different", 0)):
        for function in (mF.dropout, F.dropout):
            torch.manual_seed(0)
            results[function] = torch.func.vmap(lambda a: function(a, 0.5), in_dims=in_dim, randomness=randomness)(x)
        assert torch.equal(results[mF.dropout], results[F.dropout]), (randomness, in_dim)
        kept = results[mF.dropout] != 0
        assert torch.equal(kept, kept[:1].expand_as(kept)) == (randomness == "same")


def test_dropout_mask_under_vmap_is_the_same_on_both_backends():
    """'different' with the batch not first: the Python path draws the stacked tensor in its memory order
    (bernoulli_ on it), and the compiled mask's rule does the same (torch's dropout draws it batch-first, so
    different numbers from the same distribution there)."""
    if not manual_conv.extension_available():
        pytest.skip("the compiled extension manual_conv._C is not built")
    x = torch.randn(3, 4, 5)
    results = []
    for backend in ("python", "cpp"):
        with manual_conv.use_backend(backend):
            torch.manual_seed(0)
            results.append(torch.func.vmap(lambda a: mF.dropout(a, 0.5), in_dims=1, randomness="different")(x))
    assert torch.equal(*results)


def test_stochastic_depth_randomness_under_vmap_as_torchvisions(backend):
    x = torch.randn(3, 4, 5)
    for randomness in ("error", "different"):
        for function in (mF.stochastic_depth, torchvision.ops.stochastic_depth):
            with pytest.raises(RuntimeError, match="vmap"):
                torch.func.vmap(lambda a: function(a, 0.5, "row"), randomness=randomness)(x)
    results = []
    for function in (mF.stochastic_depth, torchvision.ops.stochastic_depth):
        torch.manual_seed(0)
        results.append(torch.func.vmap(lambda a: function(a, 0.5, "row"), randomness="same")(x))
    assert torch.equal(*results)


def test_per_sample_gradients_of_an_mlp_equal_the_loop(backend):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3), torch.nn.GELU(),
                                torch.nn.Linear(3, 3)).double()
    model = manual_conv.convert(model)

    def loss(output, target):
        return -mF.log_softmax(output, 1).gather(1, target.unsqueeze(1)).mean()

    inputs, targets = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    vmapped = per_sample_gradients(model, loss, inputs, targets)
    looped = looped_per_sample_gradients(model, loss, inputs, targets)
    for name in looped:
        torch.testing.assert_close(vmapped[name], looped[name])


def _counting(monkeypatch, cls, name, calls):
    method = getattr(cls, name)

    @functools.wraps(method)
    def counted(*args, **kwargs):
        calls.append((cls.__name__, name, any(torch._C._functorch.is_batchedtensor(arg) for arg in args
                                               if isinstance(arg, torch.Tensor))))
        return method(*args, **kwargs)
    monkeypatch.setattr(cls, name, staticmethod(counted))


FUNCTIONS = {"relu": activation.ReLUFunction, "sigmoid": activation.SigmoidFunction, "tanh": activation.TanhFunction,
             "gelu": activation.GELUFunction, "softmax": activation.SoftmaxFunction,
             "log_softmax": activation.LogSoftmaxFunction, "hardtanh": activation.HardtanhFunction,
             "leaky_relu": activation.LeakyReLUFunction, "elu": activation.ELUFunction,
             "silu": activation.SiLUFunction, "mish": activation.MishFunction,
             "hardswish": activation.HardswishFunction, "hardsigmoid": activation.HardsigmoidFunction,
             "softplus": activation.SoftplusFunction}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_jvp_and_vmap_run_through_our_rules(backend, monkeypatch, name):
    """Our jvp computes the tangent, and vmap runs our vmap rule or (generated rule) our forward on batched tensors."""
    cls, calls = FUNCTIONS[name], []
    _counting(monkeypatch, cls, "jvp", calls)
    rule = "vmap" if cls.vmap is not torch.autograd.Function.vmap else "forward"
    _counting(monkeypatch, cls, rule, calls)
    function = functools.partial(getattr(mF, name), dim=-1) if "softmax" in name else getattr(mF, name)
    torch.func.jvp(function, (X,), (X.cos(),))
    assert (cls.__name__, "jvp", False) in calls
    calls.clear()
    torch.func.vmap(function)(X)
    assert any(call[:2] == (cls.__name__, rule) and (rule == "vmap" or call[2]) for call in calls)


def test_a_wrong_jvp_fails(monkeypatch):
    monkeypatch.setattr(activation.SoftmaxFunction, "jvp", staticmethod(lambda ctx, tangent, _: tangent))
    with pytest.raises(Exception):
        check_derivatives(functools.partial(mF.softmax, dim=1), X, double=False)


def test_linear_and_dropout_run_through_our_rules(backend, monkeypatch):
    calls = []
    for cls in (linear.LinearFunction, linear.DropoutFunction):
        _counting(monkeypatch, cls, "jvp", calls)
    _counting(monkeypatch, linear.LinearFunction, "forward", calls)
    _counting(monkeypatch, linear.DropoutFunction, "vmap", calls)
    torch.func.jvp(mF.linear, (X, W, B), (X, W, B))
    torch.func.jvp(lambda x: linear.DropoutFunction.apply(x, MASK, False), (X,), (X,))
    torch.func.vmap(mF.linear, in_dims=(None, 0, None))(X, torch.stack([W, W]), B)
    torch.func.vmap(lambda x: linear.DropoutFunction.apply(x, MASK, False))(X)
    assert {"LinearFunction jvp", "DropoutFunction jvp", "DropoutFunction vmap"} <= {f"{c} {n}" for c, n, _ in calls}
    assert ("LinearFunction", "forward", True) in calls
