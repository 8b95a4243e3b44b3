"""What every autograd Function of manual_conv.ops shares: the base class that stores forward's signature once,
and the setup_context style, which lets torch.func's transforms run through the Functions (on both backends)."""
import importlib
import pkgutil

import pytest
import torch
import torch.nn.functional as F

import manual_conv.functional as mF
import manual_conv.ops
from manual_conv.ops import _utils

OPS_MODULES = [importlib.import_module(f"manual_conv.ops.{info.name}")
               for info in pkgutil.iter_modules(manual_conv.ops.__path__)]
FUNCTIONS = [value for module in OPS_MODULES for value in vars(module).values()
             if isinstance(value, type) and issubclass(value, torch.autograd.Function)
             and value.__module__ == module.__name__ and "forward" in vars(value)]  # not a shared base


def test_every_function_stores_its_forward_signature():
    assert len(FUNCTIONS) == 39
    for function in FUNCTIONS:
        assert issubclass(function, _utils.Function)
        code = function.forward.__code__
        stored = vars(function.forward)["__signature__"]
        assert list(stored.parameters) == list(code.co_varnames[:code.co_argcount])


def test_torch_func_grad_runs_through_conv_and_linear(backend):
    """torch.func.grad of a conv → flatten → linear → cross-entropy loss equals torch's, on 'cpp' too: conv's
    backward calls its Functions there as well (ops/conv.py differentiable_maps), never the compiled ops' autograd,
    which torch.library builds as a Function without setup_context, which torch.func refuses."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=generator)
    labels = torch.tensor([1, 4])
    weights = (torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=generator),
               torch.randn(5, 64, dtype=torch.float64, generator=generator))

    def loss_of(library):
        return lambda conv_weight, fc_weight: library.cross_entropy(
            library.linear(library.conv2d(images, conv_weight).flatten(1), fc_weight), labels)

    ours = torch.func.grad(loss_of(mF), argnums=(0, 1))(*weights)
    expected = torch.func.grad(loss_of(F), argnums=(0, 1))(*weights)
    for actual, wanted in zip(ours, expected, strict=True):
        torch.testing.assert_close(actual, wanted)


@pytest.mark.parametrize("function", [
    mF.sigmoid, lambda x: mF.linear(x, x), lambda x: mF.layer_norm(x, (2,)),
    lambda x: mF.conv2d(x.view(1, 1, 1, 2), x.view(1, 1, 1, 2)),
])
def test_forward_over_forward_raises_instead_of_returning_zero(backend, function):
    """torch runs a custom Function's jvp with forward gradients off, so jacfwd of jacfwd would be 0 silently
    (native sigmoid'' is not); ours refuse it and point to hessian, which works."""
    x = torch.tensor([0.3, -1.2], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="forward mode over forward mode"):
        torch.func.jacfwd(torch.func.jacfwd(function))(x)
    with pytest.raises(RuntimeError, match="forward mode over forward mode"):
        torch.func.jvp(lambda x: torch.func.jvp(function, (x,), (x,))[1], (x,), (x,))
    ours = torch.func.hessian(lambda x: function(x).sum())(x)
    expected = torch.autograd.functional.hessian(lambda x: function(x).sum(), x)  # reverse over reverse
    torch.testing.assert_close(ours, expected)
