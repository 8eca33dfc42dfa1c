"""Schema names and the files beside a trace are spelled in one module, ``stagemfu.schemas``.

A writer and its reader that spell a document's name apart would drift silently; this test makes
any other spelling in the package fail.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

from stagemfu import schemas

PACKAGE = ROOT / "src" / "stagemfu"
NAMES = re.compile(r"stagemfu\.[\w.]+/\d+")
FILES = (schemas.RUN_FILE, schemas.SHAPES_FILE, schemas.FLOPS_FILE)


def literals(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings, with their lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and ast.get_docstring(node, clean=False) is not None
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_schema_names_and_trace_side_files_are_spelled_only_in_the_schemas_module():
    found = [
        f"{path.relative_to(ROOT)}:{line}: {value}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "schemas.py"
        for line, value in literals(path)
        if NAMES.fullmatch(value) or value in FILES
    ]
    assert found == []


def test_every_schema_name_is_versioned_and_distinct():
    names = [v for k, v in vars(schemas).items() if k.isupper() and isinstance(v, str) and v.startswith("stagemfu.")]
    assert names and all(NAMES.fullmatch(n) for n in names)
    assert len(set(names)) == len(names)
