"""manual_conv: CNN backpropagation written by hand, as a drop-in PyTorch extension.

    import manual_conv.nn as nn              # instead of torch.nn
    import manual_conv.functional as F       # instead of torch.nn.functional
    manual_conv.set_backend("python")        # the Python reference kernels; "cpp" the compiled ones
    manual_conv.set_conv_algorithm("gemm")   # im2col for every conv; "winograd" F(2x2, 3x3); "auto" (default)
    model = manual_conv.convert(model)       # an existing model's layers swapped for their twins
    with manual_conv.enable(): ...           # torch's functional calls (F.relu, x.softmax(-1)) run by the twins
"""
from . import functional, nn
from .algorithm import get_conv_algorithm, set_conv_algorithm, use_conv_algorithm
from .backend import extension_available, get_backend, set_backend, use_backend
from .convert import convert
from .enable import enable

if extension_available():
    from .ops import library  # noqa: F401  (the compiled ops' fake kernels and autograd formulas)

__all__ = ["functional", "nn", "convert", "enable", "extension_available", "get_backend", "set_backend",
           "use_backend", "get_conv_algorithm", "set_conv_algorithm", "use_conv_algorithm"]
