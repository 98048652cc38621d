"""The examples in docs/ run (as scripts in a subprocess), and docs/api.md matches the docstrings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS_WITH_EXAMPLES = ["tutorial.md", "operations.md", "queries.md"]


def python_blocks(md: Path) -> str:
    return "\n\n".join(re.findall(r"^```python\n(.*?)^```", md.read_text(), flags=re.S | re.M))


@pytest.mark.parametrize("name", DOCS_WITH_EXAMPLES)
def test_doc_examples_run(name: str, tmp_path: Path) -> None:
    code = python_blocks(ROOT / "docs" / name)
    assert code.strip(), f"no python examples in {name}"
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT / "src"), MYNOSQL_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr


def test_api_reference_is_current() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "apidoc.py"), "--check"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stdout + out.stderr
