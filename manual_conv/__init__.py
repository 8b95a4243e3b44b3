"""manual_conv: CNN backpropagation written by hand, as a drop-in PyTorch extension.

    import manual_conv.nn as nn              # instead of torch.nn
    import manual_conv.functional as F       # instead of torch.nn.functional
    manual_conv.set_backend("python")        # the Python reference kernels; "cpp" the compiled ones
    model = manual_conv.convert(model)       # an existing model's layers swapped for their twins
    with manual_conv.enable(): ...           # torch's functional calls (F.relu, x.softmax(-1)) run by the twins
"""
from . import functional, nn
from .backend import extension_available, get_backend, set_backend, use_backend
from .convert import convert
from .enable import enable

__all__ = ["functional", "nn", "convert", "enable", "extension_available", "get_backend", "set_backend", "use_backend"]
