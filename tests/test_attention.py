"""Attention by hand (manual_conv.ops.attention): scaled_dot_product_attention, multi_head_attention_forward and
nn.MultiheadAttention.

gradcheck/gradgradcheck prove the hand-written backward (and its backward) against finite differences of our own
forward for every form of the call: masks bool and float (the float one's gradient too), is_causal, scale, dropout
with a fixed mask, grouped-query attention, unbatched inputs, need_weights. Parity tests prove outputs and gradients
equal to PyTorch's, including the dropout mask a seed draws, rows with every key masked (0 for
scaled_dot_product_attention as torch's _safe_softmax, NaN in MultiheadAttention's need_weights branch as torch's
softmax), float16/bfloat16 no less precise than torch's against float64, the output's layout, torch's errors, and
the module's parameters, state_dict and repr. Most run on both backends (the `backend` fixture): attention has no
compiled kernel, but the dropout mask is drawn by the compiled kernel on 'cpp'.
"""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import manual_conv
import manual_conv.functional as mF
import manual_conv.nn as mnn
from test_differential import assert_no_less_precise


def qkv(*shapes, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=dtype).requires_grad_() for shape in shapes]


def seeded(function, seed=0):
    """``function`` drawing the same dropout mask on every call (gradcheck evaluates it many times)."""
    def call(*args):
        torch.manual_seed(seed)
        return function(*args)
    return call


# ------------------------------------------------------------------------------------- gradcheck, gradgradcheck

MASK = torch.tensor([[True, False, True, True], [False, False, True, False], [True, True, True, True]])
GRADCHECK_CALLS = {
    "plain": (lambda q, k, v: mF.scaled_dot_product_attention(q, k, v), ((2, 2, 3, 4), (2, 2, 4, 4), (2, 2, 4, 3))),
    "bool mask": (lambda q, k, v: mF.scaled_dot_product_attention(q, k, v, attn_mask=MASK),
                  ((2, 3, 4), (2, 4, 4), (2, 4, 3))),
    "float mask": (lambda q, k, v, m: mF.scaled_dot_product_attention(q, k, v, attn_mask=m),
                   ((1, 2, 3, 4), (1, 2, 4, 4), (1, 2, 4, 3), (2, 1, 4))),
    "causal, scale": (lambda q, k, v: mF.scaled_dot_product_attention(q, k, v, is_causal=True, scale=-0.7),
                      ((2, 4, 3), (2, 4, 3), (2, 4, 2))),
    "dropout": (seeded(lambda q, k, v: mF.scaled_dot_product_attention(q, k, v, dropout_p=0.4)),
                ((2, 2, 3, 4), (2, 2, 4, 4), (2, 2, 4, 3))),
    "grouped query": (lambda q, k, v: mF.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                      ((1, 4, 3, 2), (1, 2, 4, 2), (1, 2, 4, 3))),
    "unbatched, one key head": (lambda q, k, v: mF.scaled_dot_product_attention(q, k, v),
                                ((3, 3, 2), (1, 4, 2), (1, 4, 2))),
    "masked row": (lambda q, k, v: mF.scaled_dot_product_attention(q, k, v, attn_mask=MASK & torch.tensor([1, 0, 1])
                                                                   .bool()[:, None]), ((3, 4), (4, 4), (4, 3))),
    "need_weights": (lambda q, k, v, w: mF.multi_head_attention_forward(
        q, k, v, 4, 2, w, None, None, None, False, 0.0, torch.eye(4, dtype=torch.float64), None, need_weights=True,
        average_attn_weights=False), ((3, 2, 4), (5, 2, 4), (5, 2, 4), (12, 4))),
}


@pytest.mark.parametrize("name", GRADCHECK_CALLS)
def test_gradcheck_and_gradgradcheck(backend, name):
    function, shapes = GRADCHECK_CALLS[name]
    inputs = qkv(*shapes)
    assert gradcheck(function, inputs)
    assert gradgradcheck(function, inputs)


def test_the_graph_runs_through_our_functions():
    q, k, v = qkv((2, 2, 3, 4), (2, 2, 4, 4), (2, 2, 4, 4), dtype=torch.float32)
    output = mF.scaled_dot_product_attention(q, k, v)
    assert type(output.grad_fn).__name__ == "ScaledDotProductAttentionFunctionBackward"
    module = mnn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(2, 5, 8, requires_grad=True)
    for need_weights in (True, False):
        output, _ = module(x, x, x, need_weights=need_weights)
        names = graph_nodes(output)
        assert {"ScaledDotProductAttentionFunctionBackward", "LinearFunctionBackward"} <= names
        assert not any(name.startswith(("Softmax", "Bmm", "Baddbmm", "Addmm", "ScaledDotProduct" + "Flash"))
                       for name in names)


def graph_nodes(output):
    """The class names of every node of ``output``'s autograd graph."""
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


# --------------------------------------------------------------------------------------------- parity with torch


def assert_same_attention(ours, theirs, inputs, tolerance=None, seed=0):
    """Same output and gradients for a random gradient from above (torch's own graph run on copies)."""
    tolerance = tolerance or {"atol": 1e-5, "rtol": 1e-5}
    mine = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    reference = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    torch.manual_seed(seed)
    output = ours(*mine)
    torch.manual_seed(seed)
    expected = theirs(*reference)
    torch.testing.assert_close(output, expected, equal_nan=True, **tolerance)
    upstream = torch.randn_like(expected)
    wanting = [i for i, t in enumerate(inputs) if t.requires_grad]
    grads = torch.autograd.grad(output, [mine[i] for i in wanting], upstream)
    expected_grads = torch.autograd.grad(expected, [reference[i] for i in wanting], upstream)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, equal_nan=True, **tolerance)


SDPA_CASES = {
    "plain 4-D": ((2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 8), {}),
    "value features differ": ((2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 4), {}),
    "bool mask (L, S)": ((2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 8), {"attn_mask": torch.rand(5, 6) < 0.7}),
    "float mask per head": ((2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 8), {"attn_mask": torch.randn(1, 3, 5, 6)}),
    "causal": ((2, 3, 6, 8), (2, 3, 6, 8), (2, 3, 6, 8), {"is_causal": True}),
    "causal, more queries than keys": ((1, 2, 6, 4), (1, 2, 3, 4), (1, 2, 3, 5), {"is_causal": True}),
    "scale": ((2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 8), {"scale": 0.3}),
    "negative scale": ((2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 8), {"scale": -0.3}),
    "dropout": ((2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 8), {"dropout_p": 0.4}),
    "dropout 1": ((2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 8), {"dropout_p": 1.0}),
    "grouped query": ((2, 6, 5, 8), (2, 2, 6, 8), (2, 2, 6, 8), {"enable_gqa": True}),
    "one key head": ((2, 6, 5, 8), (2, 1, 6, 8), (2, 1, 6, 8), {}),
    "unbatched 3-D": ((3, 5, 8), (3, 6, 8), (3, 6, 8), {"attn_mask": torch.rand(5, 6) < 0.7}),
    "unbatched 2-D": ((5, 8), (6, 8), (6, 8), {"is_causal": True}),
    "5-D, broadcast batch": ((2, 2, 3, 5, 8), (3, 6, 8), (3, 6, 8), {}),
    "head dim 0": ((2, 3, 5, 0), (2, 3, 6, 0), (2, 3, 6, 4), {}),
}


@pytest.mark.parametrize("name", SDPA_CASES)
def test_scaled_dot_product_attention_matches_torch(backend, name):
    *shapes, kwargs = SDPA_CASES[name]
    inputs = qkv(*shapes, dtype=torch.float32)
    assert_same_attention(lambda q, k, v: mF.scaled_dot_product_attention(q, k, v, **kwargs),
                          lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kwargs), inputs)


def test_float_mask_gradient_matches_torch(backend):
    *inputs, mask = qkv((2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 8), (3, 1, 6), dtype=torch.float32)
    inputs.append(mask)
    assert_same_attention(lambda q, k, v, m: mF.scaled_dot_product_attention(q, k, v, attn_mask=m),
                          lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m), inputs)


def test_a_seed_draws_torchs_dropout_mask(backend):
    """torch draws its mask on the float32 attention matrix (its math path; float16 inputs are computed in
    float32): the same seed gives the very same zeros."""
    for dtype in (torch.float32, torch.float16):
        q, k, v = (t.detach() for t in qkv((2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 8), dtype=dtype))
        torch.manual_seed(7)
        ours = mF.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
        torch.manual_seed(7)
        theirs = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
        torch.testing.assert_close(ours, theirs, atol=2e-3 if dtype == torch.float16 else 1e-5, rtol=1e-3)


def test_a_query_with_every_key_masked_gets_zero_like_torch(backend):
    """torch's _safe_softmax: the row of −∞ scores gives P = 0, hence output 0 and gradients 0, not NaN."""
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[2] = False
    float_mask = torch.zeros(5, 6).masked_fill(~mask, -math.inf)
    for attn_mask in (mask, float_mask):
        inputs = qkv((2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 4), dtype=torch.float32)
        assert_same_attention(lambda q, k, v: mF.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask),
                              lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask), inputs)
        output = mF.scaled_dot_product_attention(*inputs, attn_mask=attn_mask)
        assert torch.equal(output[:, :, 2], torch.zeros(2, 3, 4))


def test_inf_and_nan_land_where_torchs_math_path_puts_them(backend):
    """torch's fused CPU kernel and its math path disagree here (see tests/test_differential.py); manual_conv follows
    the math path, the reference torch's documentation gives."""
    q, k, v = qkv((1, 2, 3, 4), (1, 2, 4, 4), (1, 2, 4, 4), dtype=torch.float64)
    with torch.no_grad():
        q[0, 0, 1, 2] = math.nan
        k[0, 1, 3, 0] = math.inf
        v[0, 0, 2, 1] = -math.inf
    math_path = lambda q, k, v: torch.ops.aten._scaled_dot_product_attention_math(q, k, v)[0]  # noqa: E731
    assert_same_attention(lambda q, k, v: mF.scaled_dot_product_attention(q, k, v), math_path, [q, k, v])


def test_no_queries_or_no_values_give_torchs_zeros(backend):
    """torch 2.14 returns zeros + 0·(ΣQ + ΣK + ΣV) without computing: NaN everywhere when an input holds NaN."""
    for shapes in (((2, 3, 0, 8), (2, 3, 6, 8), (2, 3, 6, 8)), ((2, 3, 5, 8), (2, 3, 0, 8), (2, 3, 0, 4))):
        inputs = qkv(*shapes, dtype=torch.float32)
        with torch.no_grad():
            inputs[0].view(-1)[:1] = math.nan
        assert_same_attention(mF.scaled_dot_product_attention, F.scaled_dot_product_attention, inputs)


def test_is_causal_without_a_mask_raises_in_eval_mode_too():
    """torch's fast path (eval mode, no autograd) ignores the is_causal hint when no attn_mask comes with it and
    computes non-causal attention; every other path raises "Need attn_mask". Ours raises on every path (README,
    the table of where manual_conv does not copy torch)."""
    ours, theirs = mha_pair({"batch_first": True})
    ours.eval(), theirs.eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        output, _ = theirs(x, x, x, is_causal=True, need_weights=False)
        torch.testing.assert_close(output, theirs(x, x, x, need_weights=False)[0])  # not causal
        with pytest.raises(RuntimeError, match="Need attn_mask"):
            ours(x, x, x, is_causal=True, need_weights=False)
    for module in (ours, theirs):
        with pytest.raises(RuntimeError, match="Need attn_mask"):
            module(x, x, x, is_causal=True, need_weights=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_as_exact_as_torchs(backend, dtype):
    """Computed in float32 and rounded once, as torch's math path; torch's fused kernel rounds P to the dtype before
    the product with V. A ViT-like shape: 197 tokens, head dim 64."""
    q64, k64, v64 = qkv((1, 2, 197, 64), (1, 2, 197, 64), (1, 2, 197, 64), seed=3)
    upstream = torch.randn(1, 2, 197, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    results = {}
    for name, library, cast in (("ours", mF, dtype), ("torch", F, dtype), ("reference", F, torch.float64)):
        inputs = [t.detach().to(dtype).to(cast).requires_grad_() for t in (q64, k64, v64)]
        output = library.scaled_dot_product_attention(*inputs)
        grads = torch.autograd.grad(output, inputs, upstream.to(dtype).to(cast))
        results[name] = (output, *grads)
    for what, ours, theirs, reference in zip(("output", "dq", "dk", "dv"), *results.values()):
        assert_no_less_precise(ours.detach(), theirs.detach(), reference.detach(), what)


# ---------------------------------------------------------------------------------------- layout and errors


def test_output_is_laid_out_as_the_kernel_torch_picks(backend):
    """Like the query where torch runs its fused kernel (here a (N, L, H, E) projection viewed as (N, H, L, E)),
    contiguous where it runs its math path (dropout)."""
    q, k, v = (torch.randn(2, 5, 3, 8).transpose(1, 2) for _ in range(3))
    for kwargs in ({}, {"dropout_p": 0.3}):
        ours, theirs = mF.scaled_dot_product_attention(q, k, v, **kwargs), F.scaled_dot_product_attention(q, k, v,
                                                                                                            **kwargs)
        assert ours.stride() == theirs.stride()
        ours.mul_(2)  # an output of its own: in-place ops work


BAD_CALLS = {
    "dtypes differ": lambda q, k, v: (q, k.double(), v),
    "1-D query": lambda q, k, v: (q[0, 0, 0], k, v),
    "integer mask": lambda q, k, v: (q, k, v, torch.ones(5, 6, dtype=torch.long)),
    "mask and is_causal": lambda q, k, v: (q, k, v, torch.ones(5, 6), 0.0, True),
    "1-D mask": lambda q, k, v: (q, k, v, torch.ones(6, dtype=torch.bool)),
    "features differ": lambda q, k, v: (q, k[..., :7], v),
    "mask too large": lambda q, k, v: (q, k, v, torch.ones(2, 2, 3, 5, 6)),
    "dropout above 1": lambda q, k, v: (q, k, v, None, 1.5),
    "negative dropout, fused": lambda q, k, v: (q, k, v, None, -0.5),
    "complex": lambda q, k, v: (q.cfloat(), k.cfloat(), v.cfloat()),
    "integer": lambda q, k, v: (q.long(), k.long(), v.long()),
    "is_causal not bool": lambda q, k, v: (q, k, v, None, 0.0, 1),
    "grouped query heads that do not divide": lambda q, k, v: (torch.randn(2, 4, 5, 8), k, v),
}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_input_raises_like_torch(name):
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    args = BAD_CALLS[name](q, k, v)
    kwargs = {"enable_gqa": True} if "grouped" in name else {}
    with pytest.raises(Exception) as expected:
        F.scaled_dot_product_attention(*args, **kwargs)
    with pytest.raises(expected.type):
        mF.scaled_dot_product_attention(*args, **kwargs)


# ------------------------------------------------------------------------------------------ MultiheadAttention

MHA_CONFIGS = {
    "default": {},
    "batch_first": {"batch_first": True},
    "no bias": {"bias": False},
    "kdim, vdim": {"kdim": 5, "vdim": 3},
    "add_bias_kv, add_zero_attn": {"add_bias_kv": True, "add_zero_attn": True},
    "dropout": {"dropout": 0.3},
}
MHA_CALLS = {
    "self-attention": {},
    "need_weights per head": {"average_attn_weights": False},
    "no weights": {"need_weights": False},
    "key_padding_mask": {"key_padding_mask": "padding"},
    "attn_mask and key_padding_mask, no weights": {"attn_mask": "causal", "key_padding_mask": "padding",
                                                   "need_weights": False},
    "causal hint": {"attn_mask": "causal", "is_causal": True, "need_weights": False},
    "float masks": {"attn_mask": "float", "key_padding_mask": "float padding"},
}


def masks(kind, batch, length, source):
    if kind == "padding":
        padding = torch.zeros(batch, source, dtype=torch.bool)
        padding[:, -1] = True
        return padding
    if kind == "float padding":
        return torch.randn(batch, source, dtype=torch.float64)
    if kind == "causal":
        return torch.ones(length, source, dtype=torch.bool).triu(1)
    return torch.randn(length, source, dtype=torch.float64)


def mha_pair(config, seed=0):
    torch.manual_seed(seed)
    ours = mnn.MultiheadAttention(8, 2, **config).double()
    theirs = torch.nn.MultiheadAttention(8, 2, **config).double()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("config", MHA_CONFIGS)
@pytest.mark.parametrize("call", MHA_CALLS)
def test_multihead_attention_matches_torch(backend, config, call):
    ours, theirs = mha_pair(MHA_CONFIGS[config])
    batch_first = ours.batch_first
    length = source = 4
    generator = torch.Generator().manual_seed(1)
    make = lambda features: torch.randn(*((2, length) if batch_first else (length, 2)), features,  # noqa: E731
                                        dtype=torch.float64, generator=generator, requires_grad=True)
    query = make(8)
    key, value = (query, query) if "kdim" not in config else (make(5), make(3))
    kwargs = {name: masks(value_, 2, length, source) if name.endswith("mask") else value_
              for name, value_ in MHA_CALLS[call].items()}
    outputs = {}
    for name, module in (("ours", ours), ("torch", theirs)):
        torch.manual_seed(5)
        output, weights = module(query, key, value, **kwargs)
        upstream = torch.randn_like(output, generator=torch.Generator().manual_seed(2))
        total = (output * upstream).sum() + (0 if weights is None else weights.sum())
        grads = torch.autograd.grad(total, [query, *module.parameters()])
        outputs[name] = (output, weights, grads)
    (output, weights, grads), (expected, expected_weights, expected_grads) = outputs.values()
    torch.testing.assert_close(output, expected, equal_nan=True)
    torch.testing.assert_close(weights, expected_weights, equal_nan=True)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, equal_nan=True)


def test_unbatched_multihead_attention_matches_torch(backend):
    ours, theirs = mha_pair({})
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    padding = torch.tensor([False, False, True, False])
    (output, weights), (expected, expected_weights) = (module(x, x, x, key_padding_mask=padding)
                                                       for module in (ours, theirs))
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(weights, expected_weights)


def test_a_query_with_every_key_masked_gets_nan_weights_like_torch():
    """MultiheadAttention's need_weights branch runs a plain softmax (0/0: NaN); without weights torch's
    scaled_dot_product_attention gives 0."""
    ours, theirs = mha_pair({})
    x = torch.randn(3, 2, 8, dtype=torch.float64)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[1] = True
    for need_weights in (True, False):
        (output, weights), (expected, expected_weights) = (
            module(x, x, x, attn_mask=mask, need_weights=need_weights) for module in (ours, theirs))
        torch.testing.assert_close(output, expected, equal_nan=True)
        assert output[1].isnan().all() == need_weights
        if need_weights:
            torch.testing.assert_close(weights, expected_weights, equal_nan=True)


def test_eval_mode_computes_by_hand_instead_of_torchs_fast_path():
    """In eval mode without autograd torch runs one fused native kernel; ours computes the general path by hand,
    and agrees with it."""
    ours, theirs = mha_pair({"batch_first": True})
    ours.eval(), theirs.eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        (output, weights), (expected, expected_weights) = (module(x, x, x) for module in (ours, theirs))
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(weights, expected_weights)
    output, _ = ours(x.requires_grad_(), x, x)
    assert "ScaledDotProductAttentionFunctionBackward" in graph_nodes(output)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_multihead_attention_in_half_precision_is_as_exact_as_torchs_on_average(dtype):
    """The projections round to the dtype in both (torch's linear); torch rounds every step of its attention, ours
    rounds once. Against float64 (of the same rounded weights and input), our mean error is no larger than torch's
    (elementwise, either may be the larger by chance: see tests/test_differential.py)."""
    ours, theirs = mha_pair({"batch_first": True})
    x = torch.randn(2, 17, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    reference, _ = theirs.to(dtype).double()(x.double(), x.double(), x.double(), need_weights=True)
    errors = {}
    for name, module in (("ours", ours), ("torch", theirs)):
        output, _ = module.to(dtype)(x, x, x, need_weights=True)
        errors[name] = (output.double() - reference).abs().mean().item()
    assert errors["ours"] <= errors["torch"] * 1.05


def test_module_is_torchs_module_with_our_computation():
    ours, theirs = mha_pair({"kdim": 5, "vdim": 3, "add_bias_kv": True, "batch_first": True})
    assert isinstance(ours, torch.nn.MultiheadAttention)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [name for name, _ in ours.named_parameters()] == [name for name, _ in theirs.named_parameters()]
    converted = manual_conv.convert(torch.nn.Sequential(torch.nn.MultiheadAttention(8, 2)))
    assert type(converted[0]) is mnn.MultiheadAttention


def test_functional_multi_head_attention_gradgradcheck(backend):
    query, in_proj, out_proj, mask = qkv((3, 2, 4), (12, 4), (4, 4), (3, 3))
    for need_weights in (True, False):
        function = lambda x, w, o, m: mF.multi_head_attention_forward(  # noqa: E731
            x, x, x, 4, 2, w, None, None, None, False, 0.0, o, None, attn_mask=m, need_weights=need_weights)[0]
        assert gradcheck(function, (query, in_proj, out_proj, mask))
        assert gradgradcheck(function, (query, in_proj, out_proj, mask))


def test_convert_swaps_the_attention_of_torchvisions_vision_transformer(backend):
    """ViT's encoder blocks hold torch.nn.MultiheadAttention (called batch_first, need_weights=False): convert makes
    them ours, without a warning (the out-projection, a Linear subclass, is read by our forward, not run), and the
    model's output and every gradient stay torch's, in train and eval mode."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    native = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                               num_classes=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converted = manual_conv.convert(native)
    assert all(type(layer.self_attention) is mnn.MultiheadAttention for layer in converted.encoder.layers)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    for train in (True, False):
        native.train(train), converted.train(train)
        output, expected = converted(x), native(x)
        assert "ScaledDotProductAttentionFunctionBackward" in graph_nodes(output)
        torch.testing.assert_close(output, expected)
        grads = torch.autograd.grad(output.sum(), [x, *converted.parameters()])
        expected_grads = torch.autograd.grad(expected.sum(), [x, *native.parameters()])
        for grad, expected_grad in zip(grads, expected_grads):
            torch.testing.assert_close(grad, expected_grad)


def test_torch_compile_traces_multihead_attention_whole(backend):
    """One graph (fullgraph=True: no graph break; the fused-kernel switch is read as a constant), and the training
    step's output and gradients equal to eager's."""
    torch.manual_seed(0)
    module = mnn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(2, 5, 8, requires_grad=True)

    def step(x):
        output, _ = module(x, x, x, need_weights=False)
        return output

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    output, expected = compiled(x), step(x)
    torch.testing.assert_close(output, expected)
    grads = torch.autograd.grad(output.sum(), [x, *module.parameters()])
    expected_grads = torch.autograd.grad(expected.sum(), [x, *module.parameters()])
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad)
    torch._dynamo.reset()
