"""manual_conv: CNN backpropagation written by hand, as a drop-in PyTorch extension.

    import manual_conv.nn as nn              # instead of torch.nn
    import manual_conv.functional as F       # instead of torch.nn.functional
    manual_conv.set_backend("python")        # the Python reference kernels; "cpp" the compiled ones
"""
from . import functional, nn
from .backend import extension_available, get_backend, set_backend, use_backend
from .convert import convert

__all__ = ["functional", "nn", "convert", "extension_available", "get_backend", "set_backend", "use_backend"]
