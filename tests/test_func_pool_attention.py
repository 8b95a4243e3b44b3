"""torch.func on pooling and attention (issue 14): the hand-derived jvp of every Function (gradcheck forward mode,
batched, forward-over-reverse), vmap equal to a loop over any batched argument (the compiled max-pool ops too),
torch.func.jvp/jacfwd/jacrev/hessian equal to torch's, per-sample gradients equal to a loop, and proof that all of
it runs through our Functions' jvp and vmap rules.

Max pooling is differentiable where no window holds a tie: its inputs here are distinct values, spaced far beyond
gradcheck's step. Dropout in attention is checked with a fixed mask, given to the Function itself."""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.gradcheck import GradcheckError
from torch.nn.attention import SDPBackend, sdpa_kernel

import manual_conv
import manual_conv.functional as mF
from manual_conv.ops import attention, linear, pool
from manual_conv.ops._utils import jvp_rule
from transforms import check_derivatives, check_vmap, looped_per_sample_gradients, per_sample_gradients

pytestmark = pytest.mark.usefixtures("single_thread")


def distinct(*shape, seed=0):
    """float64 values without ties: a permutation of 0.1, 0.2, ... (gradcheck's step is 1e-6)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(torch.Size(shape).numel(), generator=generator).view(shape).double().add(1).div(10)


def normal(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


X = distinct(2, 1, 4, 4)

# public name -> its calls over the argument variants that change the formula
POOLS = {
    "max_pool2d": [functools.partial(mF.max_pool2d, kernel_size=2, stride=1, padding=1),
                   functools.partial(mF.max_pool2d, kernel_size=2, dilation=2),
                   functools.partial(mF.max_pool2d, kernel_size=3, stride=2, padding=1, ceil_mode=True),
                   lambda x: mF.max_pool2d(x, 2, return_indices=True)[0]],
    "avg_pool2d": [functools.partial(mF.avg_pool2d, kernel_size=2, stride=1, padding=1),
                   functools.partial(mF.avg_pool2d, kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                     count_include_pad=False),
                   functools.partial(mF.avg_pool2d, kernel_size=2, divisor_override=3)],
    "adaptive_avg_pool2d": [functools.partial(mF.adaptive_avg_pool2d, output_size=(3, 2)),
                            functools.partial(mF.adaptive_avg_pool2d, output_size=1)],
    "adaptive_max_pool2d": [functools.partial(mF.adaptive_max_pool2d, output_size=(3, 2)),
                            lambda x: mF.adaptive_max_pool2d(x, 1, return_indices=True)[0]],
    "adaptive_max_pool2d_with_indices": [lambda x: mF.adaptive_max_pool2d_with_indices(x, (2, 3))[0]],
}
POOL_CASES = [pytest.param(function, id=f"{name}-{index}") for name, variants in POOLS.items()
              for index, function in enumerate(variants)]

Q, K, V = normal(2, 1, 3, 2, seed=1), normal(2, 1, 3, 2, seed=2), normal(2, 1, 3, 2, seed=3)
FLOAT_MASK = normal(3, 3, seed=4)
BOOL_MASK = torch.tensor([[True, False, True], [False, True, True], [True, True, False]])
ATTENTION = [
    pytest.param(lambda q, k, v: mF.scaled_dot_product_attention(q, k, v), (Q, K, V), id="plain"),
    pytest.param(lambda q, k, v, m: mF.scaled_dot_product_attention(q, k, v, m), (Q, K, V, FLOAT_MASK),
                 id="float-mask"),
    pytest.param(lambda q, k, v, m: mF.scaled_dot_product_attention(q, k, v, m), (Q, K, V, BOOL_MASK),
                 id="bool-mask"),
    pytest.param(lambda q, k, v: mF.scaled_dot_product_attention(q, k, v, is_causal=True, scale=-0.7), (Q, K, V),
                 id="causal-scale"),
    pytest.param(lambda q, k, v: mF.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                 (normal(1, 2, 3, 2), K[:1], V[:1]), id="gqa"),
    pytest.param(lambda q, k, v: mF.scaled_dot_product_attention(q, k, v), (Q[0], K[0, :1], V[0]), id="3d"),
]

TRANSFORM_CASES = {**POOLS, "scaled_dot_product_attention": ATTENTION,
                   "multi_head_attention_forward": "test_multi_head_attention_derivatives_and_vmap"}

# multi_head_attention_forward projects with linear, whose jvp and vmap rule are the activation family's
linear_has_transforms = "jvp" in vars(linear.LinearFunction)


@pytest.mark.parametrize("function", POOL_CASES)
def test_pool_derivatives_and_vmap(backend, function):
    check_derivatives(function, X)
    check_vmap(function, X)
    check_vmap(function, X[0])  # unbatched samples: vmap's dim is their batch


@pytest.mark.parametrize("function, args", ATTENTION)
def test_attention_derivatives_and_vmap(backend, function, args):
    check_derivatives(function, *args)
    check_vmap(function, *args)


@pytest.mark.parametrize("output", [0, 1])
def test_attention_with_a_fixed_dropout_mask(backend, output):
    """Dropout's mask M given to the Function: O = (P ⊙ M) V and the weights P (before dropout), each output's
    derivatives and vmap (the mask batched too)."""
    mask = torch.bernoulli(torch.full((2, 1, 3, 3), 0.6), generator=torch.Generator().manual_seed(5)) / 0.6

    def function(q, k, v, bias, mask):
        return attention.ScaledDotProductAttentionFunction.apply(q, k, v, bias, mask, (0.5, 0.8), True, False)[output]

    check_derivatives(lambda q, k, v, bias: function(q, k, v, bias, mask), Q, K, V, FLOAT_MASK)
    check_vmap(function, Q, K, V, FLOAT_MASK, mask)


@pytest.mark.skipif(not linear_has_transforms, reason="needs linear's jvp and vmap rule (the activation family)")
@pytest.mark.parametrize("need_weights", [True, False])
def test_multi_head_attention_derivatives_and_vmap(backend, need_weights):
    """The composition (projections, heads, attention, output projection) under the transforms: the inputs and the
    packed in-projection as arguments (the output projection is linear's, proved with linear)."""
    embed, heads = 4, 2
    query, key, value = normal(2, 2, embed, seed=6), normal(3, 2, embed, seed=7), normal(3, 2, embed, seed=8)
    in_weight, in_bias = normal(3 * embed, embed, seed=9), normal(3 * embed, seed=10)
    out_weight, out_bias = normal(embed, embed, seed=11), normal(embed, seed=12)

    def function(query, key, value, in_weight):
        output, weights = mF.multi_head_attention_forward(
            query, key, value, embed, heads, in_weight, in_bias, None, None, False, 0.0, out_weight, out_bias,
            need_weights=need_weights)
        return (output, weights) if need_weights else output

    check_derivatives(function, query, key, value, in_weight, fast_mode=True)  # 112 inputs: projected
    check_vmap(function, query, key, value, in_weight)


# ------------------------------------------------------------------------- torch.func equals torch's own


def _assert_transforms_equal(ours, theirs, args, tangents):
    """torch.func.jvp, jacfwd, jacrev and hessian (jacfwd of jacrev: forward-over-reverse) of ``ours`` equal
    ``theirs``' (scalar functions for the hessian)."""
    argnums = tuple(range(len(args)))
    for transform in (torch.func.jacfwd, torch.func.jacrev, torch.func.hessian):
        torch.testing.assert_close(transform(ours, argnums)(*args), transform(theirs, argnums)(*args))
    torch.testing.assert_close(torch.func.jvp(ours, args, tangents), torch.func.jvp(theirs, args, tangents))


def _pools(f_max, f_avg, f_adaptive):
    """A scalar through max, average and adaptive average pooling, squared between them (a non-zero hessian)."""
    return lambda x: f_adaptive(f_avg(f_max(x, 2, 1) ** 2, 2, 1, 1) ** 2, (2, 1)).sum()


def test_pool_transforms_equal_torchs(backend):
    x = distinct(1, 2, 4, 4)
    _assert_transforms_equal(_pools(mF.max_pool2d, mF.avg_pool2d, mF.adaptive_avg_pool2d),
                             _pools(F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d), (x,), (normal(1, 2, 4, 4),))
    ours = lambda x: mF.adaptive_max_pool2d(x, (2, 3)) ** 2  # noqa: E731
    theirs = lambda x: F.adaptive_max_pool2d(x, (2, 3)) ** 2  # noqa: E731
    torch.testing.assert_close(torch.func.jacfwd(ours)(x), torch.func.jacfwd(theirs)(x))
    torch.testing.assert_close(torch.func.hessian(lambda x: ours(x).sum())(x),
                               torch.func.hessian(lambda x: theirs(x).sum())(x))


def test_attention_transforms_equal_torchs(backend):
    """torch's math path (its reference formula, differentiable twice) for torch's side."""
    q, k, v = Q[:1], K[:1], V[:1]

    def ours(q, k, v):
        return mF.scaled_dot_product_attention(q, k, v, FLOAT_MASK).pow(2).sum()

    def theirs(q, k, v):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, FLOAT_MASK).pow(2).sum()

    _assert_transforms_equal(ours, theirs, (q, k, v), (normal(*q.shape), normal(*k.shape), normal(*v.shape)))


# -------------------------------------------------------------------------------- vmap of gradients


class _PoolAttend(torch.nn.Module):
    """Pooling and attention between plain parameters: max pool, attention over the pooled positions with its
    projections, average pools, a linear read-out (matmul: this file proves pooling's and attention's rules)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(13)
        self.projections = torch.nn.Parameter(torch.randn(3, 2, 2, dtype=torch.float64, generator=generator))
        self.read_out = torch.nn.Parameter(torch.randn(2, 3, dtype=torch.float64, generator=generator))

    def forward(self, x):
        pooled = mF.max_pool2d(x, 2, 1)  # (N, 2, 3, 3)
        tokens = pooled.flatten(2).transpose(1, 2)  # (N, 9, 2)
        q, k, v = (tokens @ projection for projection in self.projections)
        attended = mF.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).unflatten(2, (3, 3))
        features = mF.adaptive_avg_pool2d(mF.avg_pool2d(attended, 2, 1), 1).flatten(1)
        return features @ self.read_out


def test_per_sample_gradients_equal_the_loop(backend):
    """vmap(grad) runs the backwards on batched tensors: max pooling's through MaxPool2dBackwardFunction's vmap
    rule, the others' made of ops that batch (their gradients allocated like δ)."""
    model = _PoolAttend()
    inputs, targets = distinct(3, 2, 4, 4, seed=14), torch.tensor([0, 2, 1])
    expected = looped_per_sample_gradients(model, F.cross_entropy, inputs, targets)
    for name, gradient in per_sample_gradients(model, F.cross_entropy, inputs, targets).items():
        torch.testing.assert_close(gradient, expected[name])


def test_compiled_max_pool_ops_vmap_as_a_loop():
    """torch.library.register_vmap's rules of the compiled ops, called directly (the layers reach them through
    Functions with their own rules)."""
    if not manual_conv.extension_available():
        pytest.skip("the compiled extension manual_conv._C is not built")
    ops = torch.ops.manual_conv
    for input in (X, X[0]):
        check_vmap(lambda x: ops.max_pool2d(x, [2, 2], [1, 1], [1, 1], [1, 1], False)[0], input)
        output, indices = ops.max_pool2d(input, [2, 2], [1, 1], [1, 1], [1, 1], False)
        check_vmap(lambda grad, indices: ops.max_pool2d_backward(grad, indices, input.shape, False),
                   normal(*output.shape), indices)


# ------------------------------------------------------------------------- the graph runs through our rules


def _counting(monkeypatch, cls, name, calls):
    """Replace ``cls.name`` (jvp or vmap) by the same rule counting its calls in ``calls[(cls, name)]``."""
    rule = vars(cls)[name]
    rule = rule.rule if isinstance(rule, jvp_rule) else rule.__func__

    def counted(*args, **kwargs):
        calls[cls.__name__, name] = calls.get((cls.__name__, name), 0) + 1
        return rule(*args, **kwargs)

    monkeypatch.setattr(cls, name, jvp_rule(counted) if name == "jvp" else staticmethod(counted))


FUNCTIONS = {
    "max_pool2d": (pool.MaxPool2dFunction, lambda x: mF.max_pool2d(x, 2, 1)),
    "avg_pool2d": (pool.AvgPool2dFunction, lambda x: mF.avg_pool2d(x, 2, 1)),
    "adaptive_avg_pool2d": (pool.AdaptiveAvgPool2dFunction, lambda x: mF.adaptive_avg_pool2d(x, 3)),
    "global_avg_pool2d": (pool.GlobalAvgPool2dFunction, lambda x: mF.adaptive_avg_pool2d(x, 1)),
    "adaptive_max_pool2d": (pool.AdaptiveMaxPool2dFunction, lambda x: mF.adaptive_max_pool2d(x, 3)),
    "scaled_dot_product_attention": (attention.ScaledDotProductAttentionFunction,
                                     lambda x: mF.scaled_dot_product_attention(x, x, x)),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_jvp_and_vmap_run_through_our_rules(backend, monkeypatch, name):
    cls, function = FUNCTIONS[name]
    calls = {}
    _counting(monkeypatch, cls, "jvp", calls)
    _counting(monkeypatch, cls, "vmap", calls)
    torch.func.jvp(function, (X,), (normal(*X.shape),))
    torch.func.vmap(function)(X)
    assert calls == {(cls.__name__, "jvp"): 1, (cls.__name__, "vmap"): 1}


def test_max_pool_backward_runs_through_its_function(backend, monkeypatch):
    """Forward-over-reverse (hessian-vector products) and vmap of a gradient go through MaxPool2dBackwardFunction's
    jvp and vmap rule, on 'cpp' too, where its forward is the compiled op (which has no jvp of its own)."""
    cls = pool.MaxPool2dBackwardFunction
    calls = {}
    _counting(monkeypatch, cls, "jvp", calls)
    _counting(monkeypatch, cls, "vmap", calls)
    gradient = torch.func.grad(lambda x: (mF.max_pool2d(x, 2, 1) ** 2).sum())
    torch.func.jvp(gradient, (X,), (normal(*X.shape),))
    torch.func.vmap(gradient)(X)
    assert calls == {(cls.__name__, "jvp"): 1, (cls.__name__, "vmap"): 1}


def test_a_wrong_jvp_fails(monkeypatch):
    """The checks can fail: max pooling's jvp reading the tangent at the wrong positions."""
    def wrong_jvp(ctx, tangent, *_):
        (indices,) = ctx.saved_tensors
        return pool.gather_at_indices(tangent, indices.flip(-1)), None

    monkeypatch.setattr(pool.MaxPool2dFunction, "jvp", jvp_rule(wrong_jvp))
    with pytest.raises(GradcheckError):
        check_derivatives(lambda x: mF.max_pool2d(x, 2, 1), X, double=False)
