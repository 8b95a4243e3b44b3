"""The Python reference conv core: the four kernels of the 'python' backend.

Plain tensor code, written from the derivation in docs/derivations.md: patches come from our own im2col (zero
padding, then an ``as_strided`` view), products from ``matmul``/``einsum``. The compiled kernels in ``csrc/``
(``torch.ops.manual_conv``) implement the same four functions with the same arguments, and the autograd Functions
in ``manual_conv/ops/conv.py`` call whichever set the backend selects.

Notation (docs/derivations.md): x is the input (N, C, H, W), w the weight (O, C/G, kH, kW), b the bias, δ = dL/dy
the gradient arriving at the output (N, O, H_out, W_out); s, p, d are stride, padding and dilation; G is groups.
These kernels expect batched 4-D tensors and checked arguments: ``manual_conv.functional`` validates.
"""
import torch
import torch.nn.functional as F


def output_size(size, kernel, stride, padding, dilation):
    """H_out = ⌊(H + 2p − d(k − 1) − 1) / s⌋ + 1: the number of kernel placements that fit in the padded input."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


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
        x_pad.storage_offset(),
    )


def _grouped_cols(x, kernel_size, stride, padding, dilation, groups):
    """im2col as one matrix per sample and group: (N, G, C/G·kH·kW, H_out·W_out), plus (H_out, W_out)."""
    cols = im2col(x, kernel_size, stride, padding, dilation)
    n, c, kh, kw, h_out, w_out = cols.shape
    return cols.reshape(n, groups, c // groups * kh * kw, h_out * w_out), (h_out, w_out)


def conv2d(input, weight, bias, stride, padding, dilation, groups):
    """y[n, o] = b[o] + Σ_{c ∈ group(o), i, j} w[o, c, i, j] · x_pad[n, c, y·s + i·d, x·s + j·d].

    As a matrix product per group: Y_g = W_g · cols_g, with W_g the (O/G, C/G·kH·kW) weight rows of group g.
    """
    n = input.shape[0]
    out_channels, _, kh, kw = weight.shape
    cols, (h_out, w_out) = _grouped_cols(input, (kh, kw), stride, padding, dilation, groups)
    weight_rows = weight.reshape(groups, out_channels // groups, -1)
    output = torch.matmul(weight_rows, cols).reshape(n, out_channels, h_out, w_out)
    if bias is not None:
        output += bias.view(1, -1, 1, 1)
    return output


def conv2d_weight_grad(input, grad_output, weight_size, stride, padding, dilation, groups):
    """dL/dw[o, c, i, j] = Σ_{n, y, x} δ[n, o, y, x] · x_pad[n, c, y·s + i·d, x·s + j·d].

    The correlation of the input with δ: δ acts as the kernel, its taps spread s apart (the stride of the forward
    becomes the dilation here) and the result sampled every d (the dilation becomes the stride). With the patches
    of im2col that is one product per group, summed over the batch: dW_g = Σ_n δ_g[n] · cols_g[n]ᵀ.
    """
    n, out_channels, h_out, w_out = grad_output.shape
    cols, _ = _grouped_cols(input, weight_size[2:], stride, padding, dilation, groups)
    delta = grad_output.reshape(n, groups, out_channels // groups, h_out * w_out)  # no -1: a batch of 0 has no elements
    return torch.einsum("ngol,ngkl->gok", delta, cols).reshape(weight_size)


def conv2d_input_grad(grad_output, weight, input_size, stride, padding, dilation, groups):
    """dL/dx = full correlation of the stride-spread, padded δ with the 180°-rotated kernel.

    dL/dx[n, c, h, w'] = Σ_{o, i, j} w[o, c, i, j] · δ[n, o, y, x] over the (y, x) with y·s + i·d = h + p.
    Three steps make that a stride-1 correlation:
      1. spread δ by the stride: insert s − 1 zeros between its rows and columns, so output y sits at row y·s;
      2. pad by d(k − 1) − p on the top/left ("full" correlation: every tap that touched x contributes), and on the
         bottom/right by whatever makes the result H rows tall — rows the forward's last window never reached get
         zero gradient (a negative pad crops);
      3. correlate with the kernel rotated by 180° (taps visited in reverse order) with dilation d, input and output
         channels swapped within each group.
    """
    n, out_channels, h_out, w_out = grad_output.shape
    _, in_channels, h, w = input_size
    _, channels_per_group, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation

    spread = grad_output.new_zeros(n, out_channels, (h_out - 1) * sh + 1, (w_out - 1) * sw + 1)
    spread[:, :, ::sh, ::sw] = grad_output

    top, left = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    bottom = h + dh * (kh - 1) - top - spread.shape[2]
    right = w + dw * (kw - 1) - left - spread.shape[3]
    padded = F.pad(spread, (left, right, top, bottom))

    rotated = (
        weight.flip(2, 3)
        .reshape(groups, out_channels // groups, channels_per_group, kh, kw)
        .transpose(1, 2)
        .reshape(in_channels, out_channels // groups, kh, kw)
    )
    return conv2d(padded, rotated, None, (1, 1), (0, 0), dilation, groups)


def conv2d_bias_grad(grad_output):
    """dL/db[o] = Σ_{n, y, x} δ[n, o, y, x]: the bias is added at every output position."""
    return grad_output.sum((0, 2, 3))
