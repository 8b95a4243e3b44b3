"""Every public function of manual_conv.functional has torch.func checks (issue 14): the families' files
tests/test_func_*.py each name the functions they cover in TRANSFORM_CASES, and together they name all of them."""
import importlib
import pathlib

import manual_conv.functional as mF


def test_every_public_function_has_transform_checks():
    files = sorted(pathlib.Path(__file__).parent.glob("test_func_*.py"))
    named = set()
    for path in files:
        named |= set(importlib.import_module(path.stem).TRANSFORM_CASES)
    public = {name for name, value in vars(mF).items() if callable(value) and not name.startswith("_")
              and getattr(value, "__module__", None) == mF.__name__}
    assert public - named == set(), "public functions without torch.func checks"
    assert named - public == set(), "TRANSFORM_CASES naming no public function"
