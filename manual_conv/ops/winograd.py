"""Winograd's minimal filtering F(m×m, 3×3) by hand: the 'python' reference of the forward, the input gradient and
the weight gradient of a 3×3 convolution with stride 1, dilation 1 and one group (docs/derivations.md, "Winograd").

The output is cut into m×m tiles; tile (t, u) reads the α×α patch d of the zero-padded input at (t·m, u·m),
α = m + 2, so neighbouring patches overlap by two rows or columns. With the α² "Winograd points" (ξ, ν):

    forward        Y_tile  = Aᵀ [ Σ_c (G g_{o,c} Gᵀ) ⊙ (Bᵀ d_c B) ] A
    input grad     ∂L/∂d_c = B [ Σ_o (G g_{o,c} Gᵀ) ⊙ (A δ_o Aᵀ) ] Bᵀ,   added over the patches that read a pixel
    weight grad    ∂L/∂g   = Gᵀ [ Σ_tiles (A δ_o Aᵀ) ⊙ (Bᵀ d_c B) ] G

where g is the 3×3 kernel, δ = ∂L/∂Y's m×m tile (zero past the output's edge), and Aᵀ (m×α), G (α×3), Bᵀ (α×α)
come from α − 1 interpolation points and ∞ (``transform_matrices``). The gradients are the exact adjoints of the
forward's bilinear map, so the three functions are each other's derivatives as conv_reference's are. Every Σ over
channels or tiles is, at each point (ξ, ν), a matrix product: the α² batched GEMMs of the compiled kernels
(csrc/winograd_core.cpp: ``torch.ops.manual_conv.winograd_conv2d`` ..., the same arguments but ``tile``, which
there is 2).

Plain tensor code: patches by ``as_strided``, transforms by ``matmul``, the per-point products by ``einsum``. These
kernels expect batched 4-D tensors and checked arguments; ``manual_conv.algorithm`` decides when they run.
"""
import functools
from fractions import Fraction

import torch
import torch.nn.functional as F

# The finite interpolation points of F(m, 3) for each output tile size m (∞ is always the last point). F(2, 3)'s
# 0, ±1 make every entry 0, ±1 or ±1/2, exact in binary floating point; it is what runs (manual_conv.algorithm,
# csrc/winograd_tile.h). F(3, 3) and F(4, 3), with points Barabasz et al. found among the most accurate, are here to
# measure why not: their float32 error is 3-14x native's on the output and the input gradient (docs/derivations.md,
# "Winograd"; conv_bench.py).
POINTS = {2: (0, 1, -1), 3: (0, 1, -1, Fraction(1, 2)), 4: (0, 1, -1, Fraction(1, 2), -2)}
TILES = tuple(POINTS)


def _polynomial_product(roots):
    """Coefficients (constant first) of Π_{r ∈ roots} (x − r)."""
    coefficients = [Fraction(1)]
    for root in roots:
        shifted = [Fraction(0)] + coefficients  # x · polynomial
        coefficients = [high - root * low for high, low in zip(shifted, coefficients + [Fraction(0)])]
    return coefficients


@functools.cache
def transform_matrices(tile):
    """(Aᵀ, G, Bᵀ) of F(tile, 3) as tuples of rows of exact Fractions, from POINTS[tile] = p_0 … p_{α−2} and ∞.

    With N_j = Π_{l≠j} (p_j − p_l), row j of each matrix belongs to point p_j and the last row to ∞:
        A[j]  = (1, p_j, …, p_j^{m−1}),          A[∞]  = (0, …, 0, 1)    evaluates an m-tap polynomial,
        G[j]  = (1, p_j, p_j²) / N_j,            G[∞]  = (0, 0, 1)       evaluates the kernel's polynomial,
        Bᵀ[j] = coefficients of Π_{l≠j} (x − p_l),   Bᵀ[∞] = coefficients of Π_l (x − p_l)   (Lagrange),
    so that Aᵀ [(G g) ⊙ (Bᵀ d)] = (Σ_k g_k d_{i+k})_{i<m}, the 1-D correlation, exactly.
    """
    points = [Fraction(p) for p in POINTS[tile]]
    alpha = tile + 2

    def at_infinity(length):
        return tuple(Fraction(int(k == length - 1)) for k in range(length))

    a = [tuple(p**k for k in range(tile)) for p in points] + [at_infinity(tile)]
    g = []
    b_transposed = []
    for j, p in enumerate(points):
        others = points[:j] + points[j + 1:]
        normaliser = Fraction(1)
        for other in others:
            normaliser *= p - other
        g.append(tuple(p**k / normaliser for k in range(3)))
        b_transposed.append(tuple(_polynomial_product(others) + [Fraction(0)]))
    g.append(at_infinity(3))
    b_transposed.append(tuple(_polynomial_product(points)))
    assert len(b_transposed) == alpha and all(len(row) == alpha for row in b_transposed)
    return tuple(zip(*a)), tuple(g), tuple(b_transposed)


@functools.cache
def _matrices_as_floats(tile):
    return [[[float(entry) for entry in row] for row in matrix] for matrix in transform_matrices(tile)]


def _matrices(tile, like):
    """Aᵀ, G, Bᵀ as tensors of ``like``'s dtype and device (made per call: a cached tensor could be a fake one)."""
    return [torch.tensor(matrix, dtype=like.dtype, device=like.device) for matrix in _matrices_as_floats(tile)]


def tile_counts(output_size, tile):
    """(T, U): the m×m tiles that cover an output of (H_out, W_out), the last row and column of tiles cut short."""
    return tuple(-(-size // tile) for size in output_size)


def layer_obstacle(weight_size, stride, dilation, groups):
    """Why Winograd F(m, 3) cannot compute this convolution (a sentence), or None: it needs a 3×3 kernel, stride 1,
    dilation 1 and one group."""
    if tuple(weight_size[2:]) != (3, 3) or tuple(stride) != (1, 1) or tuple(dilation) != (1, 1) or groups != 1:
        return (f"it computes 3x3 convolutions with stride 1, dilation 1 and groups 1, but this one has a "
                f"{tuple(weight_size[2:])} kernel, stride {tuple(stride)}, dilation {tuple(dilation)} and "
                f"groups {groups}")
    return None


def check_layer(weight_size, stride, dilation, groups, tile):
    """Raise NotImplementedError unless F(tile, 3) computes this convolution (``layer_obstacle``)."""
    obstacle = layer_obstacle(weight_size, stride, dilation, groups)
    if obstacle:
        raise NotImplementedError(f"manual_conv: Winograd cannot compute this convolution: {obstacle}")
    if tile not in POINTS:
        raise NotImplementedError(f"manual_conv: Winograd output tiles are {TILES}, but got tile={tile}")


def _input_patches(x, padding, tiles, tile):
    """d[n, c, t, u] = the α×α patch of x_pad at rows t·m, columns u·m: a view (N, C, T, U, α, α).

    x_pad has p zeros in front and behind as many as the last tiles read: (T·m + 2) rows, (U·m + 2) columns."""
    (ph, pw), (t, u) = padding, tiles
    alpha = tile + 2
    x_pad = F.pad(x, (pw, u * tile + 2 - x.shape[3] - pw, ph, t * tile + 2 - x.shape[2] - ph))
    st_n, st_c, st_h, st_w = x_pad.stride()
    return x_pad.as_strided((*x_pad.shape[:2], t, u, alpha, alpha), (st_n, st_c, st_h * tile, st_w * tile, st_h, st_w))


def _patches_adjoint(grad_patches, padding, input_size, tile):
    """The adjoint of _input_patches: each patch's α×α gradient added onto the pixels it was read from, then the
    padding cut off. Zero-extended to 2m×2m, a patch is four m×m quadrants; quadrant (a, b) of patch (t, u) lands on
    block (t + a, u + b) of an m×m grid, so each quadrant position is one non-overlapping reshape."""
    n, c, t, u, alpha, _ = grad_patches.shape
    m = tile
    quadrants = F.pad(grad_patches, (0, 2 * m - alpha, 0, 2 * m - alpha)).reshape(n, c, t, u, 2, m, 2, m)
    total = grad_patches.new_zeros(n, c, (t + 1) * m, (u + 1) * m)
    for a in (0, 1):
        for b in (0, 1):
            block = quadrants[:, :, :, :, a, :, b, :].permute(0, 1, 2, 4, 3, 5).reshape(n, c, t * m, u * m)
            total[:, :, a * m:a * m + t * m, b * m:b * m + u * m] += block
    (ph, pw), (h, w) = padding, input_size
    return total[:, :, ph:ph + h, pw:pw + w]


def _output_tiles(grad_output, tiles, tile):
    """δ zero-extended to T·m × U·m rows and columns, as m×m tiles (N, K, T, U, m, m)."""
    n, k, h, w = grad_output.shape
    (t, u), m = tiles, tile
    padded = F.pad(grad_output, (0, u * m - w, 0, t * m - h))
    return padded.reshape(n, k, t, m, u, m).permute(0, 1, 2, 4, 3, 5)


def _output_tiles_adjoint(tiles_value, output_size):
    """The tiles (N, K, T, U, m, m) laid side by side and cut to the output's (H_out, W_out)."""
    n, k, t, u, m, _ = tiles_value.shape
    return tiles_value.permute(0, 1, 2, 4, 3, 5).reshape(n, k, t * m, u * m)[:, :, :output_size[0], :output_size[1]]


def _output_size(input_size, padding):
    return tuple(size + 2 * p - 2 for size, p in zip(input_size, padding))


def conv2d(input, weight, bias, stride, padding, dilation, groups, tile=2):
    """y = conv(x, w) + b for a 3×3 kernel, stride 1: per tile Aᵀ [Σ_c (G g Gᵀ) ⊙ (Bᵀ d B)] A (module docstring)."""
    check_layer(weight.shape, stride, dilation, groups, tile)
    a_t, g, b_t = _matrices(tile, input)
    output_size = _output_size(input.shape[2:], padding)
    tiles = tile_counts(output_size, tile)
    kernels = g @ weight @ g.T  # (K, C, α, α)
    patches = b_t @ _input_patches(input, padding, tiles, tile) @ b_t.T  # (N, C, T, U, α, α)
    products = torch.einsum("kcab,nctuab->nktuab", kernels, patches)  # one (K×C)·(C×tiles) GEMM per point (a, b)
    output = _output_tiles_adjoint(a_t @ products @ a_t.T, output_size)
    if bias is not None:
        output = output + bias.view(1, -1, 1, 1)
    return output.contiguous()


def conv2d_input_grad(grad_output, weight, input_size, stride, padding, dilation, groups, tile=2):
    """∂L/∂x: per tile B [Σ_o (G g Gᵀ) ⊙ (A δ Aᵀ)] Bᵀ, added onto the patch the forward read (module docstring)."""
    check_layer(weight.shape, stride, dilation, groups, tile)
    a_t, g, b_t = _matrices(tile, grad_output)
    tiles = tile_counts(grad_output.shape[2:], tile)
    kernels = g @ weight @ g.T
    deltas = a_t.T @ _output_tiles(grad_output, tiles, tile) @ a_t  # (N, K, T, U, α, α)
    products = torch.einsum("kcab,nktuab->nctuab", kernels, deltas)
    return _patches_adjoint(b_t.T @ products @ b_t, padding, input_size[2:], tile).contiguous()


def conv2d_weight_grad(input, grad_output, weight_size, stride, padding, dilation, groups, tile=2):
    """∂L/∂w: Gᵀ [Σ_tiles (A δ Aᵀ) ⊙ (Bᵀ d B)] G (module docstring)."""
    check_layer(weight_size, stride, dilation, groups, tile)
    a_t, g, b_t = _matrices(tile, input)
    tiles = tile_counts(grad_output.shape[2:], tile)
    patches = b_t @ _input_patches(input, padding, tiles, tile) @ b_t.T
    deltas = a_t.T @ _output_tiles(grad_output, tiles, tile) @ a_t
    products = torch.einsum("nktuab,nctuab->kcab", deltas, patches)  # one (K×tiles)·(tiles×C) GEMM per point
    return (g.T @ products @ g).reshape(weight_size)
