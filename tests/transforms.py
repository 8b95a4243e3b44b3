"""Checks of the torch.func contract (forward-mode AD, vmap, double derivatives) that every family's tests share.

Each check takes a function of tensors (a lambda closing over the non-tensor arguments) and float64 tensors, and
asserts against PyTorch's own machinery: ``gradcheck``/``gradgradcheck`` compare our hand-derived jvp and vjp with
finite differences (and with each other), and the vmap checks compare ``torch.func.vmap`` with a Python loop over
the same slices. A wrong jvp, a wrong batching rule or a missing one fails them.
"""
import itertools

import torch
from torch.autograd import gradcheck, gradgradcheck


def check_derivatives(function, *inputs, batched=True, double=True, **tolerances):
    """gradcheck with reverse and forward mode and their batched (vmapped) forms, then gradgradcheck reverse-over-
    reverse and forward-over-reverse: the issue's full set. ``inputs``: float64 tensors (requires_grad set here for
    the floating ones); ``batched=False`` only where a function documents why it has no batched rule."""
    inputs = tuple(_differentiable(tensor) for tensor in inputs)
    assert gradcheck(function, inputs, check_forward_ad=True, check_backward_ad=True, check_batched_grad=batched,
                     check_batched_forward_grad=batched, **tolerances)
    if double:
        assert gradgradcheck(function, inputs, check_fwd_over_rev=True, check_rev_over_rev=True,
                             check_batched_grad=batched, **tolerances)


def _differentiable(tensor):
    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
        return tensor.detach().requires_grad_(True)
    return tensor


def batched_versions(tensor, dim, size, generator):
    """``size`` different tensors like ``tensor`` stacked at ``dim`` (any dim of the result, negative too): what
    vmap with ``in_dims=dim`` unbinds into ``size`` calls. Integer tensors (targets) are permutations of the original
    values, so they stay valid class indices."""
    if tensor.is_floating_point() or tensor.is_complex():
        copies = [tensor + 0.25 * index * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
                  for index in range(size)]
    else:
        copies = [tensor.flatten()[torch.randperm(tensor.numel(), generator=generator)].view(tensor.shape)
                  for _ in range(size)]
    return torch.stack(copies, dim)


def check_vmap(function, *args, size=3, seed=0, atol=1e-7, rtol=1e-7):
    """``torch.func.vmap(function, in_dims)`` equals the loop over the slices, for every non-empty subset of the
    tensor arguments batched, each at a random dim (negative dims included), and the output's batch dim first or last."""
    generator = torch.Generator().manual_seed(seed)
    positions = [index for index, arg in enumerate(args) if isinstance(arg, torch.Tensor)]
    for count in range(1, len(positions) + 1):
        for batched in itertools.combinations(positions, count):
            in_dims = [None] * len(args)
            vmapped_args = list(args)
            for index in batched:
                ndim = args[index].dim() + 1
                dim = int(torch.randint(-ndim, ndim, (), generator=generator))
                in_dims[index] = dim
                vmapped_args[index] = batched_versions(args[index], dim, size, generator)
            out_dim = (0, -1)[int(torch.randint(0, 2, (), generator=generator))]
            _assert_vmap_matches_loop(function, vmapped_args, tuple(in_dims), out_dim, size, atol, rtol)


def _assert_vmap_matches_loop(function, args, in_dims, out_dim, size, atol, rtol):
    vmapped = torch.func.vmap(function, in_dims=in_dims, out_dims=out_dim)(*args)
    slices = [function(*[arg if dim is None else arg.select(dim, index) for arg, dim in zip(args, in_dims)])
              for index in range(size)]
    looped = (torch.stack(slices, out_dim) if isinstance(slices[0], torch.Tensor)
              else tuple(torch.stack(parts, out_dim) for parts in zip(*slices)))
    torch.testing.assert_close(vmapped, looped, atol=atol, rtol=rtol, equal_nan=True,
                               msg=lambda message: f"in_dims={in_dims}, out_dims={out_dim}: {message}")


def per_sample_gradients(model, loss, inputs, targets):
    """The torch.func recipe: vmap over samples of grad of the loss of one sample, with the parameters passed in
    by functional_call. Returns {name: tensor of shape (batch, *parameter.shape)}."""
    parameters = {name: parameter.detach() for name, parameter in model.named_parameters()}
    buffers = {name: buffer.detach() for name, buffer in model.named_buffers()}

    def sample_loss(parameters, input, target):
        output = torch.func.functional_call(model, (parameters, buffers), (input.unsqueeze(0),))
        return loss(output, target.unsqueeze(0))

    return torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))(parameters, inputs, targets)


def looped_per_sample_gradients(model, loss, inputs, targets):
    """The same gradients by a loop of ordinary backward passes over single samples."""
    gradients = {name: [] for name, _ in model.named_parameters()}
    for input, target in zip(inputs, targets):
        model.zero_grad()
        loss(model(input.unsqueeze(0)), target.unsqueeze(0)).backward()
        for name, parameter in model.named_parameters():
            gradients[name].append(parameter.grad.clone())
    return {name: torch.stack(values) for name, values in gradients.items()}
