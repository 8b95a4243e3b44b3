"""manual_conv.nn and manual_conv.functional stand in for the whole of torch.nn and torch.nn.functional: every
public name resolves, to the hand-written twin or to torch's own object; a computing layer or function without a
twin warns once that it runs natively, in convert()'s words; containers and helpers come back silently."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import manual_conv
import manual_conv.functional as mF
import manual_conv.nn as mnn
from manual_conv import torch_names

NAMESPACES = [(mnn, nn, torch_names.nn_layer_computes), (mF, F, torch_names.functional_computes)]


def public_names(module):
    return [name for name in dir(module) if not name.startswith("_")]


def resolve_fresh(ours, name):
    """getattr(ours, name) as at a first access (a torch object cached by an earlier one is forgotten first), and
    the warnings it gives."""
    theirs = nn if ours is mnn else F
    if name in ours.__dict__ and ours.__dict__[name] is getattr(theirs, name, None):
        del ours.__dict__[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(ours, name)
    return value, caught


@pytest.mark.parametrize("ours, theirs, computes", NAMESPACES, ids=["nn", "functional"])
def test_every_public_name_resolves_to_the_twin_or_to_torch(ours, theirs, computes):
    twins = 0
    for name in public_names(theirs):
        value, caught = resolve_fresh(ours, name)
        original = getattr(theirs, name)
        if value is not original:
            twins += 1
            assert name in vars(ours) and not caught, name
            if isinstance(original, type):
                assert issubclass(value, original), name
            continue
        expected = [torch_names.runs_natively(
            "torch.nn layers" if ours is mnn else "torch.nn.functional functions", f"{theirs.__name__}.{name}")]
        assert [str(warning.message) for warning in caught] == (expected if computes(name, value) else []), name
        assert all(warning.category is UserWarning for warning in caught)
    assert twins >= (25 if ours is mnn else 19)


def test_containers_and_helpers_are_silent_layers_are_not():
    for name in ("Module", "Sequential", "ModuleList", "ModuleDict", "ParameterList", "Parameter", "Identity",
                 "init", "utils", "parallel"):
        assert not resolve_fresh(mnn, name)[1], name
    for name in ("SELU", "Dropout2d", "Softsign", "Embedding", "Transformer"):
        assert len(resolve_fresh(mnn, name)[1]) == 1, name
    for name in ("pad", "interpolate", "selu", "embedding"):
        assert len(resolve_fresh(mF, name)[1]) == 1, name
    for name in ("Tensor", "Optional", "handle_torch_function", "GRID_SAMPLE_PADDING_MODES"):
        assert not resolve_fresh(mF, name)[1], name


@pytest.fixture
def forget_torch_objects():
    """forget(ours): drop the public torch objects ``ours`` holds, as before any name was asked for; whatever the
    test does, they are back afterwards (``ours`` imports some itself, such as ``math``)."""
    held = [(ours, dict(vars(ours))) for ours, _, _ in NAMESPACES]

    def forget(ours):
        theirs = nn if ours is mnn else F
        for name in [name for name in public_names(theirs) if vars(ours).get(name) is getattr(theirs, name)]:
            del vars(ours)[name]

    yield forget
    for ours, names in held:
        for name, value in names.items():
            vars(ours).setdefault(name, value)


def star_import(ours):
    """The names ``from ours import *`` binds in model code (compiled as file "<model code>"), and its warnings."""
    namespace = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(f"from {ours.__name__} import *", "<model code>", "exec"), namespace)
    return {name: value for name, value in namespace.items() if not name.startswith("__")}, caught


@pytest.mark.parametrize("ours, theirs, computes", NAMESPACES, ids=["nn", "functional"])
def test_star_import_gives_torchs_names_with_one_warning(ours, theirs, computes, forget_torch_objects):
    """`from manual_conv.nn import *` in place of `from torch.nn import *`: the same names (twins where we have
    them, none of our helpers; functional adds stochastic_depth), and one warning, at the importing line, naming
    every layer that runs natively; a second star import is silent."""
    forget_torch_objects(ours)
    mine, caught = star_import(ours)
    wanted = {}
    exec(f"from {theirs.__name__} import *", wanted)
    wanted.pop("__builtins__")
    extras = {"stochastic_depth"} if ours is mF else set()
    assert set(mine) == set(wanted) | extras
    natively = [f"{theirs.__name__}.{name}" for name, value in sorted(wanted.items())
                if mine[name] is value and computes(name, value)]
    kind = "torch.nn layers" if ours is mnn else "torch.nn.functional functions"
    assert [(str(warning.message), warning.filename) for warning in caught] == [
        (torch_names.runs_natively(kind, ", ".join(natively)), "<model code>")]
    assert len(natively) > 50
    assert mine["Conv2d" if ours is mnn else "conv2d"] is (mnn.Conv2d if ours is mnn else mF.conv2d)
    assert star_import(ours) == (mine, [])


def test_star_import_under_warnings_as_errors_changes_nothing(forget_torch_objects):
    """With warnings as errors the star import raises, and raises again: it resolved nothing before warning."""
    forget_torch_objects(mnn)
    for _ in range(2):
        with warnings.catch_warnings(), pytest.raises(UserWarning, match="run natively"):
            warnings.simplefilter("error")
            exec("from manual_conv.nn import *", {})
        assert "SELU" not in vars(mnn)


def test_a_warning_points_at_the_line_that_asked():
    assert resolve_fresh(mnn, "SELU")[1][0].filename == __file__
    assert resolve_fresh(mF, "selu")[1][0].filename == __file__


def test_one_warning_per_name():
    resolve_fresh(mnn, "SELU")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mnn.SELU is nn.SELU and mnn.SELU is nn.SELU


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="manual_conv.nn' has no attribute 'Conv9d'"):
        mnn.Conv9d  # noqa: B018
    with pytest.raises(AttributeError, match="manual_conv.functional' has no attribute 'conv9d'"):
        mF.conv9d  # noqa: B018


def test_nn_functional_is_manual_conv_functional_and_dir_lists_torchs_names():
    assert mnn.functional is mF
    assert set(public_names(nn)) <= set(dir(mnn)) and set(public_names(F)) <= set(dir(mF))


def test_convert_warns_in_the_same_words():
    with pytest.warns(UserWarning, match="these torch.nn layers have no manual_conv twin and run natively: SELU"):
        manual_conv.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.SELU()))


def test_model_code_written_against_torch_nn_runs(backend):
    """The issue's example: `import manual_conv.nn as nn` then nn.Sequential(...), with containers, init and a
    functional call, trains to the same gradients as torch.nn."""

    def build(library):
        torch.manual_seed(0)
        model = library.Sequential(
            library.Conv2d(3, 4, 3), library.BatchNorm2d(4), library.ReLU(inplace=True),
            library.ModuleDict({"pool": library.AdaptiveAvgPool2d(1)})["pool"], library.Flatten(),
            library.ModuleList([library.Linear(4, 3)])[0],
        )
        library.init.zeros_(model[-1].bias)
        return model

    input = torch.randn(2, 3, 6, 6)
    target = torch.tensor([0, 2])
    grads = []
    for library in (mnn, nn):
        model = build(library)
        library.functional.cross_entropy(model(input), target).backward()
        grads.append([parameter.grad for parameter in model.parameters()])
    for mine, wanted in zip(*grads, strict=True):
        torch.testing.assert_close(mine, wanted)


@pytest.mark.parametrize("name, arguments, input_shape", [
    ("LazyConv2d", (4, 3), (2, 3, 6, 6)), ("LazyConvTranspose2d", (4, 3), (2, 3, 4, 4)),
    ("LazyLinear", (5,), (2, 7)), ("LazyBatchNorm1d", (), (4, 3)), ("LazyBatchNorm2d", (), (2, 3, 4, 4)),
])
def test_lazy_layers_compute_by_hand_and_become_our_twins(backend, name, arguments, input_shape):
    layer = getattr(mnn, name)(*arguments)
    output = layer(torch.randn(input_shape))
    assert type(layer) is getattr(mnn, name.removeprefix("Lazy"))
    assert type(output.grad_fn).__name__.endswith("FunctionBackward")
