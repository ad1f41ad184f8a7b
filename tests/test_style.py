"""The shape the code keeps (../shared/STYLE.md): functions short enough to read top to bottom. (The lint rules and
the line length are ruff's, in pyproject.toml, run by .ci/run.)"""

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "duilian"
MAX_FUNCTION_LINES = 100
"""A long class is fine when its methods are short; a function this long hides its steps (train's loop once ran 235
lines, its loop starting 130 lines in)."""


def test_no_function_in_src_is_over_100_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
