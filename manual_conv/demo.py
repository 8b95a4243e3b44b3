"""A manual conv forward/backward beside torch's, printing the largest difference of each result.

Run with ``python -m manual_conv.demo`` (or ``make demo``).
"""
import torch
import torch.nn.functional as F

import manual_conv
import manual_conv.functional as mF


def main():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 28, 28, dtype=torch.float64, requires_grad=True)
    w = torch.randn(16, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(16, dtype=torch.float64, requires_grad=True)
    args = dict(stride=2, padding=1, dilation=1)
    print(f"manual_conv backend: {manual_conv.get_backend()}  (extension built: {manual_conv.extension_available()})")
    ours = mF.conv2d(x, w, b, **args)
    reference = F.conv2d(x, w, b, **args)
    grad = torch.randn_like(reference)
    ours_grads = torch.autograd.grad(ours, (x, w, b), grad)
    reference_grads = torch.autograd.grad(reference, (x, w, b), grad)
    print(f"output grad_fn: {type(ours.grad_fn).__name__}")
    for name, a, r in zip(("output", "dL/dx", "dL/dw", "dL/db"), (ours, *ours_grads), (reference, *reference_grads)):
        print(f"{name:7s} max |manual - torch| = {(a - r).abs().max().item():.3e}")


if __name__ == "__main__":
    main()
