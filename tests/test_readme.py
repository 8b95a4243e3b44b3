"""The README's Python example runs as pasted: every ```python block of README.md that begins with an import."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES = [block for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
            if block.startswith("import ")]


def test_the_readme_has_a_runnable_example():
    assert EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES)
def test_readme_example_runs_as_pasted(example):
    exec(compile(example, str(README), "exec"), {})
