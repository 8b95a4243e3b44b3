"""Scaled dot-product attention as an autograd Function, forward and backward by hand, and the checks and choices
that make ``scaled_dot_product_attention`` behave as torch's.

Notation (docs/derivations.md, "Attention"): Q (..., L, E) the queries, K (..., S, E) the keys, V (..., S, Eᵥ) the
values, B an additive bias broadcast to (..., L, S) (the attention mask: 0 where a query may attend, −∞ where it may
not, or any float), s the scale, M the dropout mask already divided by 1 − p, O (..., L, Eᵥ) the output and
δ = ∂L/∂O. Per row i (one query) of one batch entry:

    S = s · Q Kᵀ + B,   P = softmax(S) along each row,   O = (P ⊙ M) V.

Backward, the Jacobian-vector products of the three steps in reverse (never an L·S × L·S Jacobian):

    ∂L/∂V = (P ⊙ M)ᵀ δ,   ∂L/∂P = (δ Vᵀ) ⊙ M,   ∂L/∂S = P ⊙ (∂L/∂P − rowsum(∂L/∂P ⊙ P)),
    ∂L/∂Q = s · (∂L/∂S) K,   ∂L/∂K = s · (∂L/∂S)ᵀ Q,   ∂L/∂B = ∂L/∂S summed over B's broadcast dims.

Only GEMMs (matmul) and elementwise ops and reductions: never torch's fused attention. As torch's math path
(``_scaled_dot_product_attention_math``, the reference torch's docs give), s is applied as √|s| to Q (with s's sign)
and to K before the product, float16/bfloat16 are computed in float32 and rounded once, a row whose scores are all
−∞ (every key masked) gets P = 0 and so O = 0 (torch's ``_safe_softmax``), and dropout's mask is drawn as torch's
math path draws it, so a seed gives torch's very mask.

Sources: A. Vaswani et al., "Attention Is All You Need", NeurIPS 2017, §3.2 (the forward); T. Dao et al.,
"FlashAttention", NeurIPS 2022, appendix B.2 (the same backward); PyTorch's aten/src/ATen/native/transformers/
attention.cpp (the math path's arrangement). The derivation: docs/derivations.md, "Attention".
"""
import math
import numbers

import torch

from ._utils import Function, laid_out_like, not_implemented_for, opmath_dtype, scalar_type_name
from .linear import scaled_bernoulli_mask

# The dtypes torch's fused CPU attention kernel takes (sdp_utils_cpp.cpp, use_flash_attention_cpp).
_FUSED_KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class ScaledDotProductAttentionFunction(Function):
    """(O, P) = ((P ⊙ M) V, softmax(S)) with S = (α_q Q)(α_k K)ᵀ + B, one row of P per query.

    Forward, in the dtype torch computes in (float32 for float16/bfloat16 inputs), the L×S matrix made once and
    turned into P in place: S − rowmax(S), exp, divided by its row sum (the max subtracted keeps every exponent ≤ 0,
    so no overflow and a row sum ≥ 1). With ``zero_masked_rows`` a row whose scores are all −∞ gets P = 0 (torch's
    ``_safe_softmax``; the max is taken as 0 and the zero row sum as 1), else it is NaN as softmax's 0/0.
    ``scales`` = (α_q, α_k), the scale s = α_q·α_k. The output is laid out as torch's fused kernel lays it out
    (``torch.empty_like(query)``) when ``like_query``, else contiguous as torch's math path.

    P is the second output (the attention weights, before dropout): the backward uses it, and as an output of this
    very Function it is differentiable, so the backward's own graph (for double backward) runs through it.

    Backward, with Δ = ∂L/∂O and Π = ∂L/∂P arriving from above (either may be absent):
        ∂L/∂V = (P ⊙ M)ᵀ Δ                                   (summed over V's broadcast dims)
        G = (Δ Vᵀ) ⊙ M + Π                                   (∂L/∂P in total)
        ∂L/∂S = P ⊙ (G − rowsum(G ⊙ P))                      (softmax's Jacobian-vector product, row by row)
        ∂L/∂Q = α_q · (∂L/∂S)(α_k K),   ∂L/∂K = α_k · (∂L/∂S)ᵀ(α_q Q),   ∂L/∂B = ∂L/∂S summed to B's shape.
    A masked row has P = 0, so its ∂L/∂S is 0 (NaN where G is not finite, as torch's). Every step is a
    differentiable op on saved inputs and the output P: double backward works.

    Forward mode (jvp), the same three steps forward, with tangents Q̇, K̇, V̇, Ḃ (any may be absent; M has none):
        Ṡ = α_q α_k (Q̇ Kᵀ + Q K̇ᵀ) + Ḃ
        Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ))                           (softmax's jvp, row by row)
        Ȯ = (Ṗ ⊙ M) V + (P ⊙ M) V̇
    GEMMs and elementwise ops on the saved inputs and P, so the jvp is differentiable and batches under vmap.
    vmap: the vmapped dims moved first, as one more leading dim that Q, K, V, B and M broadcast along (a size-1 dim
    inserted where a sample has fewer leading dims than the others); an unbatched argument is left as it is, so
    with V alone batched P is computed once.
    """

    @staticmethod
    def forward(query, key, value, bias, dropout_mask, scales, zero_masked_rows, like_query):
        compute = opmath_dtype(query.dtype)
        query_scale, key_scale = scales
        scores = torch.matmul(_scaled(query, compute, query_scale),
                              _scaled(key, compute, key_scale).transpose(-2, -1))
        if bias is not None:  # in place, but out of place where B has dims Q Kᵀ has not (vmap over B alone)
            scores = scores + bias if bias.dim() > scores.dim() else scores.add_(bias)
        weights = _softmax_rows_(scores, zero_masked_rows)
        kept = weights if dropout_mask is None else weights * dropout_mask
        output = torch.matmul(kept, value.to(compute))
        if like_query:
            return laid_out_like(output, query, torch.preserve_format, query.dtype), weights
        return output.to(query.dtype), weights

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        query, key, value, bias, dropout_mask, ctx.scales, _, _ = inputs
        ctx.set_materialize_grads(False)
        ctx.bias_shape, ctx.bias_dtype = (None, None) if bias is None else (bias.shape, bias.dtype)
        ctx.save_for_backward(query, key, value, dropout_mask, outputs[1])
        ctx.save_for_forward(query, key, value, dropout_mask, outputs[1])

    @staticmethod
    def backward(ctx, grad_output, grad_weights):
        query, key, value, dropout_mask, weights = ctx.saved_tensors
        needs_query, needs_key, needs_value, needs_bias = ctx.needs_input_grad[:4]
        compute = weights.dtype
        query_scale, key_scale = ctx.scales
        grad_query = grad_key = grad_value = grad_bias = None
        grad_probabilities = grad_weights
        if grad_output is not None:
            grad_output = grad_output.to(compute)
            if needs_value:
                kept = weights if dropout_mask is None else weights * dropout_mask
                grad_value = _summed_to(kept.transpose(-2, -1).matmul(grad_output), value)
            grad_probabilities = grad_output.matmul(value.to(compute).transpose(-2, -1))
            if dropout_mask is not None:
                grad_probabilities.mul_(dropout_mask)
            if grad_weights is not None:
                grad_probabilities.add_(grad_weights)
        if grad_probabilities is None or not (needs_query or needs_key or needs_bias):
            return grad_query, grad_key, grad_value, None, None, None, None, None
        row_sums = (grad_probabilities * weights).sum(-1, keepdim=True)
        grad_scores = (grad_probabilities - row_sums).mul_(weights)
        del grad_probabilities
        if needs_query:
            grad_query = _summed_to(grad_scores.matmul(_scaled(key, compute, key_scale)), query, query_scale)
        if needs_key:
            grad_key = _summed_to(grad_scores.transpose(-2, -1).matmul(_scaled(query, compute, query_scale)), key,
                                  key_scale)
        if needs_bias:
            grad_bias = grad_scores.sum_to_size(ctx.bias_shape).to(ctx.bias_dtype)
        return grad_query, grad_key, grad_value, grad_bias, None, None, None, None

    @staticmethod
    def jvp(ctx, query_tangent, key_tangent, value_tangent, bias_tangent, *_):
        query, key, value, dropout_mask, weights = ctx.saved_tensors
        compute = weights.dtype
        query_scale, key_scale = ctx.scales
        score_terms = []
        if query_tangent is not None:
            score_terms.append(torch.matmul(_scaled(query_tangent, compute, query_scale),
                                            _scaled(key, compute, key_scale).transpose(-2, -1)))
        if key_tangent is not None:
            score_terms.append(torch.matmul(_scaled(query, compute, query_scale),
                                            _scaled(key_tangent, compute, key_scale).transpose(-2, -1)))
        if bias_tangent is not None:
            score_terms.append(bias_tangent.to(compute))
        # Ṗ = 0 without Ṡ: zeros, not None, which torch 2.14's forward AD takes for a differentiable output only with
        # an internal assert ("Expected both tensor and its forward grad to be floating point or complex")
        weights_tangent = torch.zeros((), dtype=compute, device=weights.device).expand(weights.shape)
        output_terms = []
        if score_terms:
            score_tangent = sum(score_terms[1:], score_terms[0])
            weights_tangent = weights * (score_tangent - (weights * score_tangent).sum(-1, keepdim=True))
            kept_tangent = weights_tangent if dropout_mask is None else weights_tangent * dropout_mask
            output_terms.append(torch.matmul(kept_tangent, value.to(compute)))
        if value_tangent is not None:
            kept = weights if dropout_mask is None else weights * dropout_mask
            output_terms.append(torch.matmul(kept, value_tangent.to(compute)))
        output_tangent = sum(output_terms[1:], output_terms[0]).to(query.dtype)
        return output_tangent, weights_tangent

    @staticmethod
    def vmap(info, in_dims, query, key, value, bias, dropout_mask, scales, zero_masked_rows, like_query):
        tensors = (query, key, value, bias, dropout_mask)
        leading = max(tensor.dim() - (dim is not None) for tensor, dim in zip(tensors, in_dims) if tensor is not None)
        folded = [tensor if dim is None else _batch_first(tensor.movedim(dim, 0), leading)
                  for tensor, dim in zip(tensors, in_dims)]
        # like_query: False, a vmapped output's layout is vmap's (the query may be unbatched, of another shape)
        output, weights = ScaledDotProductAttentionFunction.apply(*folded, scales, zero_masked_rows, False)
        # P (before dropout) depends on Q, K and B only: batched when one of them is, with as many dims as they have
        scores_args = [(tensor, dim) for tensor, dim in zip((query, key, bias), (in_dims[0], in_dims[1], in_dims[3]))
                       if tensor is not None]
        if all(dim is None for _, dim in scores_args):
            return (output, weights), (0, None)
        weights_dims = max(tensor.dim() - (dim is not None) for tensor, dim in scores_args)
        return (output, weights.flatten(0, leading - weights_dims)), (0, 0)


def _batch_first(tensor, sample_dims):
    """A tensor with vmap's batch dim first, given size-1 dims after it up to ``sample_dims`` + 1 dims: its leading
    dims then broadcast against the other arguments' as the samples' do."""
    return tensor.view(tensor.shape[0], *(1,) * (sample_dims + 1 - tensor.dim()), *tensor.shape[1:])


def _scaled(tensor, dtype, scale):
    """α·t in ``dtype`` (t itself, cast, when α = 1): torch's ``query_acc * scaling_factor``."""
    tensor = tensor.to(dtype)
    return tensor if scale == 1 else tensor * scale


def _summed_to(gradient, like, scale=1):
    """A gradient summed over the dims ``like`` was broadcast along, times α, in ``like``'s dtype (the order of
    torch's autograd: the product's backward reduces, then the scaling's backward multiplies)."""
    gradient = gradient.sum_to_size(like.shape)
    return (gradient if scale == 1 else gradient * scale).to(like.dtype)


def _softmax_rows_(scores, zero_masked_rows):
    """softmax(S) along the last dim, computed in S's own storage: e^{S − m} / Σ e^{S − m}, m the row max."""
    if scores.numel() == 0:
        return scores
    row_max = scores.amax(-1, keepdim=True)
    if zero_masked_rows:
        row_max.masked_fill_(row_max == -math.inf, 0)
    scores.sub_(row_max).exp_()
    row_sums = scores.sum(-1, keepdim=True)
    if zero_masked_rows:
        row_sums.masked_fill_(row_sums == 0, 1)
    return scores.div_(row_sums)


def attention(query, key, value, bias, dropout_p, scales, zero_masked_rows, like_query=False, need_weights=False):
    """(O, weights): ``ScaledDotProductAttentionFunction`` with dropout's mask drawn first, as torch draws it for the
    attention matrix (``empty_like(P).bernoulli_(1 − p).div_(1 − p)`` in P's dtype and shape; a scalar 0 for p = 1).
    weights: the attention weights after dropout (P ⊙ M) when ``need_weights``, else None."""
    dropout_mask = None
    if dropout_p > 0:
        compute = opmath_dtype(query.dtype)
        with torch.no_grad():
            if dropout_p == 1:
                dropout_mask = torch.zeros((), dtype=compute, device=query.device)
            else:
                shape = (*torch.broadcast_shapes(query.shape[:-2], key.shape[:-2]), query.size(-2), key.size(-2))
                dropout_mask = scaled_bernoulli_mask(torch.empty(shape, dtype=compute, device=query.device),
                                                     1 - dropout_p)
    output, weights = ScaledDotProductAttentionFunction.apply(query, key, value, bias, dropout_mask, scales,
                                                              zero_masked_rows, like_query)
    if not need_weights:
        return output, None
    return output, weights if dropout_mask is None else weights * dropout_mask


# ------------------------------------------------------------------------------- scaled_dot_product_attention


def check_sdpa_args(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    """torch's errors for the arguments of scaled_dot_product_attention, in its order: the argument types
    (TypeError, as its argument parser), then ``validate_sdpa_input`` (dtypes, devices, dims, the mask's dtype) and
    an explicit mask with is_causal (RuntimeError)."""
    for position, (name, tensor) in enumerate((("query", query), ("key", key), ("value", value)), 1):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"scaled_dot_product_attention(): argument '{name}' (position {position}) must be "
                            f"Tensor, not {type(tensor).__name__}")
    if attn_mask is not None and not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"scaled_dot_product_attention(): argument 'attn_mask' must be Tensor, not "
                        f"{type(attn_mask).__name__}")
    for name, number in (("dropout_p", dropout_p), ("scale", 0.0 if scale is None else scale)):
        if not (isinstance(number, numbers.Real) or isinstance(number, torch.Tensor) and number.dim() == 0):
            raise TypeError(f"scaled_dot_product_attention(): argument '{name}' must be float, not "
                            f"{type(number).__name__}")
    for name, flag in (("is_causal", is_causal), ("enable_gqa", enable_gqa)):
        if not isinstance(flag, bool):
            raise TypeError(f"scaled_dot_product_attention(): argument '{name}' must be bool, not "
                            f"{type(flag).__name__}")
    if not query.dtype == key.dtype == value.dtype:
        raise RuntimeError(f"Expected query, key, and value to have the same dtype, but got query.dtype: "
                           f"{query.dtype} key.dtype: {key.dtype} and value.dtype: {value.dtype} instead.")
    if not query.device == key.device == value.device:
        raise RuntimeError(f"Expected query, key, and value to have the same device type, but got query.device: "
                           f"{query.device} key.device: {key.device} and value.device: {value.device} instead.")
    if min(query.dim(), key.dim(), value.dim()) < 2:
        raise RuntimeError(f"Expected query, key, and value to all be  at least 2 dimensional, but got query.dim: "
                           f"{query.dim()} key.dim: {key.dim()} and value.dim: {value.dim()} instead.")
    if attn_mask is not None and attn_mask.dtype not in (torch.bool, torch.float32, query.dtype):
        raise RuntimeError(f"Expected attn_mask dtype to be bool or float or to match query dtype, but got "
                           f"attn_mask.dtype: {attn_mask.dtype} and  query.dtype: {query.dtype} instead.")
    if is_causal and attn_mask is not None:
        raise RuntimeError("_scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True")


def as_batch_of_one(attn_mask):
    """The mask of 3-D inputs that torch computes as a batch of one: given leading dims of size 1 up to 4-D (a mask
    broadcasts the same way; only the choice of torch's fused kernel reads its dims)."""
    if attn_mask is None or attn_mask.dim() >= 4:
        return attn_mask
    return attn_mask.view((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))


def has_nothing_to_attend(query, value):
    """Whether torch 2.14 returns without computing: no queries (L = 0) or no values (V without elements)."""
    return query.size(-2) == 0 or value.numel() == 0


def empty_attention(query, key, value):
    """torch 2.14's result when there is nothing to attend (``has_nothing_to_attend``): zeros of shape (..., L, Eᵥ)
    plus 0·(ΣQ + (ΣK + ΣV)), which keeps every input in the graph (with gradient 0) and is NaN everywhere when an
    input holds inf or NaN, as torch's. Integer and bool inputs give torch's integer result (the sums are int64)."""
    zeros = query.new_zeros((*query.shape[:-1], value.size(-1)))
    return zeros + (query.sum() + (key.sum() + value.sum())) * 0


def fused_kernel_runs(query, key, value, attn_mask, dropout_p, enable_gqa):
    """Whether torch's CPU dispatcher picks its fused (flash) attention kernel for this call, raising what its
    checks raise: the gates of ``use_flash_attention_cpp`` (aten/src/ATen/native/transformers/sdp_utils_cpp.cpp),
    in its order. The kernel computes the same attention; its choice decides the output's layout (like the query
    instead of contiguous) and a few errors (a mask of fewer than 2 dims: IndexError; dropout_p < 0: RuntimeError).
    """
    if not _flash_attention_enabled() or dropout_p > 0:
        return False
    if not query.dim() == key.dim() == value.dim() == 4 or not query.size(0) == key.size(0) == value.size(0):
        return False
    query_heads, key_heads, value_heads = query.size(1), key.size(1), value.size(1)
    if enable_gqa:
        if key_heads != value_heads:
            return False
        if key_heads == 0:  # torch divides by it (SIGFPE, a crash); here torch's error for heads that do not divide
            raise RuntimeError("Number of heads in key and value must divide the number of heads in query")
        if query_heads % key_heads:
            return False
    elif not query_heads == key_heads == value_heads and not (query_heads > 0 and key_heads == value_heads == 1):
        return False
    if attn_mask is not None and not _mask_fits_fused_kernel(attn_mask, query, key):
        return False
    if not query.size(-1) == key.size(-1) == value.size(-1) or query.size(-2) == 0 or key.size(-2) == 0:
        return False
    if not query.stride(-1) == key.stride(-1) == value.stride(-1) == 1:
        return False
    return query.dtype in _FUSED_KERNEL_DTYPES


@torch.compiler.assume_constant_result
def _flash_attention_enabled():
    """torch.backends.cuda.flash_sdp_enabled() (which gates the CPU kernel too), a constant to torch.compile: a bool
    from torch's C API would break its graph (a compiled model keeps the setting it was compiled with)."""
    return torch.backends.cuda.flash_sdp_enabled()


def _mask_fits_fused_kernel(attn_mask, query, key):
    """torch's ``check_attn_mask_shape``: a mask that does not require grad, of shape (L|1, S|1) or
    (N|1, H|1, L|1, S|1). Its ``size(-2)`` raises torch's IndexError for a mask of fewer than 2 dims."""
    if attn_mask.requires_grad:
        return False
    fits = lambda size, target: size in (target, 1)  # noqa: E731
    if not (fits(attn_mask.size(-2), query.size(2)) and fits(attn_mask.size(-1), key.size(2))):
        return False
    if attn_mask.dim() == 4:
        return fits(attn_mask.size(0), query.size(0)) and fits(attn_mask.size(1), query.size(1))
    return attn_mask.dim() == 2


def additive_mask(attn_mask, is_causal, query, key):
    """The bias B added to the scores: a float mask itself; a bool mask (True: may attend) as 0 where True and −∞
    where False (torch's ``convert_boolean_attn_mask``, in the query's dtype, which an integer query cannot hold:
    torch's RuntimeError); for is_causal the lower-triangular bool mask of L × S (query i attends to keys 0..i)."""
    if is_causal:
        attn_mask = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool, device=query.device).tril()
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return attn_mask
    if not (query.is_floating_point() or query.is_complex()) and not is_causal:
        raise RuntimeError(f"value cannot be converted to type {scalar_type_name(query.dtype)} without overflow")
    dtype = query.dtype if query.is_floating_point() or query.is_complex() else torch.get_default_dtype()
    zero = torch.zeros((), dtype=dtype, device=query.device)
    return torch.where(attn_mask, zero, -math.inf)


def expand_groups(query, key, value, enable_gqa):
    """Grouped-query attention: with enable_gqa, each of K's and V's heads (dim −3) repeated so that every group of
    H_q / H_k query heads shares one (``repeat_interleave``, as torch's math path), in the dtype the attention is
    computed in (so that a float16/bfloat16 head's gradient is summed over its group in float32 and rounded once);
    torch's errors for heads that do not divide, and its IndexError for inputs without a heads dim."""
    if not enable_gqa:
        return key, value
    query_heads, key_heads, value_heads = query.size(-3), key.size(-3), value.size(-3)
    if query_heads == key_heads == value_heads:
        return key, value
    if key_heads == 0 or value_heads == 0 or query_heads % key_heads or query_heads % value_heads:
        raise RuntimeError("Number of heads in key and value must divide the number of heads in query")
    compute = opmath_dtype(key.dtype)
    return (key.to(compute).repeat_interleave(query_heads // key_heads, -3),
            value.to(compute).repeat_interleave(query_heads // value_heads, -3))


def matmul_shape(left, right):
    """The shape of ``left @ right`` for shapes of at least 2 dims (batch dims broadcast), with torch's RuntimeError
    when the inner sizes differ or the batch dims do not broadcast."""
    if left[-1] != right[-2]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({left[-2]}x{left[-1]} and "
                           f"{right[-2]}x{right[-1]})")
    return (*torch.broadcast_shapes(left[:-2], right[:-2]), left[-2], right[-1])


def scores_shape(query, key, bias):
    """The shape of S = Q Kᵀ + B, with torch's errors for Q Kᵀ and for a bias that does not broadcast to it (torch
    adds it in place, so it may not enlarge S)."""
    shape = matmul_shape(query.shape, (*key.shape[:-2], key.size(-1), key.size(-2)))
    if bias is not None:
        broadcast = torch.broadcast_shapes(shape, bias.shape)
        if broadcast != shape:
            raise RuntimeError(f"output with shape {list(shape)} doesn't match the broadcast shape {list(broadcast)}")
    return shape


def sdpa_scales(query, scale):
    """(α_q, α_k) with α_q·α_k = s, s = 1/√E by default (∞ for E = 0, as torch's): both √|s|, α_q with s's sign."""
    if scale is None:
        scale = 1 / math.sqrt(query.size(-1)) if query.size(-1) else math.inf
    root = math.sqrt(abs(scale))
    return (-root if scale < 0 else root), root


def check_computable(query, scores, value, dropout_p):
    """torch's math path's errors after Q Kᵀ, in its order: the softmax of complex scores (NotImplementedError, or
    for scores without elements the RuntimeError of ``_safe_softmax``'s test for −∞), dropout_p > 1, then P V
    (sizes, and integer values, which the scaled integer inputs no longer match: none without scores)."""
    if query.is_complex():
        if math.prod(scores):
            raise not_implemented_for("softmax_lastdim_kernel_impl", query.dtype)
        raise RuntimeError("isneginf does not support complex inputs.")
    if dropout_p > 1:
        raise RuntimeError(f"dropout probability has to be between 0 and 1, but got {dropout_p}")
    output_shape = matmul_shape(scores, value.shape)
    if not query.is_floating_point() and math.prod(scores):
        raise RuntimeError(f"expected scalar type Float but found {scalar_type_name(value.dtype)}")
    return output_shape
