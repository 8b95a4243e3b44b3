"""The Python reference conv core: the four kernels of the 'python' backend.

Plain tensor code, written from the derivation in docs/derivations.md: patches come from our own im2col (zero
padding, then an ``as_strided`` view), products from ``matmul``/``einsum``, the input gradient from our own col2im
(strided slice-adds). The compiled kernels in ``csrc/`` (``torch.ops.manual_conv``) implement the same four
functions with the same arguments, and the autograd Functions in ``manual_conv/ops/conv.py`` call whichever set the
backend selects.

Notation (docs/derivations.md): x is the input (N, C, H, W), w the weight (O, C/G, kH, kW), b the bias, δ = dL/dy
the gradient arriving at the output (N, O, H_out, W_out); s, p, d are stride, padding and dilation; G is groups.
These kernels expect batched 4-D tensors and checked arguments: ``manual_conv.functional`` validates.

Memory stays bounded as in the compiled core: the columns are materialised one tile at a time (a few samples, or
a band of output rows of one sample), never for the whole batch.
"""
import torch
import torch.nn.functional as F

# The bytes of columns (im2col's patches, or col2im's δ-columns) a tile materialises at once: half the call's
# output (so that the extra memory stays a fraction of what the call holds anyway), within bounds that keep the
# loop over tiles short for small layers and the tiles cache-sized for large ones.
TILE_BYTES_FLOOR, TILE_BYTES_CEILING = 2**18, 4 * 2**20


def output_size(size, kernel, stride, padding, dilation):
    """H_out = ⌊(H + 2p − d(k − 1) − 1) / s⌋ + 1: the number of kernel placements that fit in the padded input."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def first_rows_and_columns(tensor, shape):
    """The first shape[2] rows and shape[3] columns of an (N, C, H, W) conv output: cut to a δ that holds only the
    first rows/columns of it (conv2d_input_grad's and conv2d_weight_grad's δ may), for the derivatives that map
    back onto such a δ."""
    if tensor.shape[2:] == shape[2:]:
        return tensor
    return tensor[:, :, :shape[2], :shape[3]]


def im2col(x, kernel_size, stride, padding, dilation):
    """Patches of x as a view: cols[n, c, i, j, y, x'] = x_pad[n, c, y·s_H + i·d_H, x'·s_W + j·d_W].

    Shape (N, C, kH, kW, H_out, W_out). No data is copied beyond the zero padding: moving one kernel tap
    (i → i+1) moves d rows in x_pad and moving one output position (y → y+1) moves s rows, so both are strides.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    x_pad = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    n, c, h, w = x_pad.shape
    h_out = output_size(h, kh, sh, 0, dh)
    w_out = output_size(w, kw, sw, 0, dw)
    st_n, st_c, st_h, st_w = x_pad.stride()
    return x_pad.as_strided(
        (n, c, kh, kw, h_out, w_out),
        (st_n, st_c, st_h * dh, st_w * dw, st_h * sh, st_w * sw),
    )  # at x_pad's own storage offset: as_strided's default


def column_tiles(batch, height, width, bytes_per_position, output_bytes):
    """(samples, output rows) slices covering (N, H_out), each with at most a tile's bytes of columns (see
    TILE_BYTES_FLOOR), given the bytes of columns per output position and the bytes of the call's output: whole
    samples when one fits, else bands of one sample's rows."""
    tile_bytes = min(max(output_bytes // 2, TILE_BYTES_FLOOR), TILE_BYTES_CEILING)
    row_bytes = max(1, width * bytes_per_position)
    rows = max(1, tile_bytes // row_bytes)
    if rows >= height:
        samples = max(1, rows // max(1, height))
        return [(slice(start, start + samples), slice(0, height)) for start in range(0, batch, samples)]
    return [(slice(n, n + 1), slice(start, start + rows)) for n in range(batch) for start in range(0, height, rows)]


def _tiles(columns_shape, output_shape, element_size):
    """column_tiles for columns (N, C, kH, kW, H_out, W_out) and an output (N, O, H_out, W_out)."""
    n, channels, kh, kw, h_out, w_out = columns_shape
    output_bytes = output_shape[0] * output_shape[1] * output_shape[2] * output_shape[3] * element_size
    return column_tiles(n, h_out, w_out, channels * kh * kw * element_size, output_bytes)


def conv2d(input, weight, bias, stride, padding, dilation, groups):
    """y[n, o] = b[o] + Σ_{c ∈ group(o), i, j} w[o, c, i, j] · x_pad[n, c, y·s + i·d, x·s + j·d].

    As a matrix product per group: Y_g = W_g · cols_g, with W_g the (O/G, C/G·kH·kW) weight rows of group g and
    cols_g the patches of im2col, one tile of samples or rows at a time.
    """
    n = input.shape[0]
    out_channels, channels_per_group, kh, kw = weight.shape
    cols = im2col(input, (kh, kw), stride, padding, dilation)
    h_out, w_out = cols.shape[-2:]
    output = input.new_empty(n, out_channels, h_out, w_out)
    patch_size = channels_per_group * kh * kw  # no -1 in the reshapes: a tensor without elements has no size to infer
    weight_rows = weight.reshape(groups, out_channels // groups, patch_size)
    for samples, rows in _tiles(cols.shape, output.shape, input.element_size()):
        tile = cols[samples, ..., rows, :]
        tile_n, tile_rows = tile.shape[0], tile.shape[-2]
        patches = tile.reshape(tile_n, groups, patch_size, tile_rows * w_out)
        output[samples, :, rows] = torch.matmul(weight_rows, patches).view(tile_n, out_channels, tile_rows, w_out)
    if bias is not None:
        output += bias.view(1, -1, 1, 1)
    return output


def conv2d_weight_grad(input, grad_output, weight_size, stride, padding, dilation, groups):
    """dL/dw[o, c, i, j] = Σ_{n, y, x} δ[n, o, y, x] · x_pad[n, c, y·s + i·d, x·s + j·d].

    The correlation of the input with δ: δ acts as the kernel, its taps spread s apart (the stride of the forward
    becomes the dilation here) and the result sampled every d (the dilation becomes the stride). With the patches
    of im2col that is one product per group, summed over the batch: dW_g = Σ_n δ_g[n] · cols_g[n]ᵀ, a tile at a
    time. δ may hold only the first rows/columns of the conv's output (as conv2d_input_grad's δ may): the positions
    it lacks count as zeros and are left out.
    """
    n, out_channels, h_out, w_out = grad_output.shape
    cols = im2col(input, weight_size[2:], stride, padding, dilation)[..., :h_out, :w_out]
    patch_size = weight_size[1] * weight_size[2] * weight_size[3]
    grad_weight = input.new_zeros(groups, out_channels // groups, patch_size)
    for samples, rows in _tiles(cols.shape, grad_output.shape, input.element_size()):
        tile = cols[samples, ..., rows, :]
        tile_n, tile_rows = tile.shape[0], tile.shape[-2]
        patches = tile.reshape(tile_n, groups, patch_size, tile_rows * w_out)
        delta = grad_output[samples, :, rows].reshape(tile_n, groups, out_channels // groups, tile_rows * w_out)
        for sample_delta, sample_patches in zip(delta, patches):  # accumulated in place: no product as large as dW
            grad_weight.baddbmm_(sample_delta, sample_patches.transpose(1, 2))
    return grad_weight.reshape(weight_size)


def conv2d_input_grad(grad_output, weight, input_size, stride, padding, dilation, groups):
    """dL/dx[n, c, h, w'] = Σ_{o, i, j} w[o, c, i, j] · δ[n, o, y, x] over the (y, x) with y·s + i·d = h + p.

    im2col copies each input element into every column that reads it; its adjoint col2im adds every column entry
    back onto the element it came from. So dL/dx = col2im(Wᵀ δ): per group the δ-columns Wᵀ_g δ_g (the gradient
    of cols in Y_g = W_g · cols_g), then for each tap (i, j) one strided slice-add of its (H_out, W_out) plane onto
    the input rows h = y·s − p + i·d (and columns likewise) that lie inside the input; taps that read the padding
    are dropped. (docs/derivations.md derives the same map as the full correlation of the stride-spread, padded δ
    with the 180°-rotated kernel; built literally, that correlation is mostly multiplications by zeros.)

    δ may hold only the first rows/columns of the conv's output: a transposed convolution whose output_padding
    reaches past the stride has fewer input rows than the conv of its output gives back. The missing positions
    count as zeros and are left out, never multiplied in.
    """
    n, out_channels, h_out, w_out = grad_output.shape
    _, in_channels, h, w = input_size
    _, channels_per_group, kh, kw = weight.shape
    grad_input = grad_output.new_zeros(input_size)
    weight_columns = weight.reshape(groups, out_channels // groups, channels_per_group * kh * kw).transpose(1, 2)
    columns_shape = (n, in_channels, kh, kw, h_out, w_out)
    for samples, rows in _tiles(columns_shape, input_size, grad_output.element_size()):
        delta = grad_output[samples, :, rows]
        tile_n, tile_rows = delta.shape[0], delta.shape[2]
        delta = delta.reshape(tile_n, groups, out_channels // groups, tile_rows * w_out)
        delta_columns = torch.matmul(weight_columns, delta)
        delta_columns = delta_columns.view(tile_n, in_channels, kh, kw, tile_rows, w_out)
        _col2im_add(grad_input[samples], delta_columns, rows.start, stride, padding, dilation)
    return grad_input


def _col2im_add(grad_input, delta_columns, first_row, stride, padding, dilation):
    """grad_input[n, c, y·s − p + i·d, x·s − p + j·d] += delta_columns[n, c, i, j, y − first_row, x] for every tap
    (i, j) and every output position whose tap falls inside the input."""
    h, w = grad_input.shape[2:]
    kh, kw, tile_rows, w_out = delta_columns.shape[2:]
    for i in range(kh):
        rows, row_taps = _inside(first_row, tile_rows, h, stride[0], padding[0], i * dilation[0])
        for j in range(kw):
            columns, column_taps = _inside(0, w_out, w, stride[1], padding[1], j * dilation[1])
            if rows is not None and columns is not None:
                grad_input[:, :, rows, columns] += delta_columns[:, :, i, j, row_taps, column_taps]


def _inside(first, count, size, stride, padding, offset):
    """For outputs first..first+count−1 whose tap reads input row r = y·s − p + offset: (the slice of input rows
    inside [0, size), the slice of those outputs, counted from first), or (None, None) when none is inside."""
    lowest = max(first, -((offset - padding) // stride))  # first y with y·s − p + offset ≥ 0
    highest = min(first + count - 1, (size - 1 + padding - offset) // stride)  # last y with r ≤ size − 1
    if lowest > highest:
        return None, None
    start = lowest * stride - padding + offset
    return slice(start, start + (highest - lowest) * stride + 1, stride), slice(lowest - first, highest - first + 1)


def conv2d_bias_grad(grad_output):
    """dL/db[o] = Σ_{n, y, x} δ[n, o, y, x]: the bias is added at every output position."""
    return grad_output.sum((0, 2, 3))
