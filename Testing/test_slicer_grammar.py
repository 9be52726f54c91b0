"""The module loads on the Pythons it must load on (no Slicer needed).

- ScoreReconLib, which the reconstruction runs on, parses with the grammar of the minimum Slicer
  release's Python (Slicer 5.10: Python 3.12).
- The module file and ScoreReconModuleLib parse with Python 3.9's grammar (Slicer 5.8) and avoid
  the 3.10+ constructs a parser does not see (``X | Y`` in evaluated annotations, ``zip(strict=)``),
  so that an older Slicer still imports the module and can show its one "Slicer is too old" dialog.
- The install list in the module's CMakeLists.txt names every ScoreReconModuleLib file.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO_ROOT / "ScoreRecon"
MODULE_SIDE = sorted([MODULE_DIR / "ScoreRecon.py", *(MODULE_DIR / "ScoreReconModuleLib").glob("*.py")])
LIBRARY = sorted(p for p in (REPO_ROOT / "ScoreReconLib").rglob("*.py") if "__pycache__" not in p.parts)


def _compat():
    spec = importlib.util.spec_from_file_location("scorerecon_compat", MODULE_DIR / "ScoreReconModuleLib" / "compat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rel(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


@pytest.mark.parametrize("path", LIBRARY, ids=_rel)
def test_library_parses_with_the_minimum_releases_python(path):
    version = _compat().MINIMUM_PYTHON_VERSION
    assert version == (3, 12)  # Slicer 5.10's CMakeLists.txt: Slicer_REQUIRED_PYTHON_VERSION "3.12.10"
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=version)


@pytest.mark.parametrize("path", MODULE_SIDE, ids=_rel)
def test_module_side_parses_and_imports_on_older_slicers_python(path):
    version = _compat().OLDEST_PYTHON_TO_WARN_ON
    assert version == (3, 9)  # Slicer 5.8: Slicer_REQUIRED_PYTHON_VERSION "3.9.10"
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path), feature_version=version)
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    first = body[0] if body else None
    assert isinstance(first, ast.ImportFrom) and first.module == "__future__" and \
        [a.name for a in first.names] == ["annotations"], f"{_rel(path)}: first statement must be the __future__ import"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "zip":
            assert not any(k.arg == "strict" for k in node.keywords), f"{_rel(path)}:{node.lineno}: zip(strict=)"
        typeCheck = isinstance(node, ast.Call) and ast.unparse(node.func) in ("isinstance", "issubclass")
        if typeCheck and len(node.args) == 2:
            assert not isinstance(node.args[1], ast.BinOp), f"{_rel(path)}:{node.lineno}: isinstance(x, A | B)"


def test_parameter_class_annotations_evaluate_on_python_3_9():
    """parameterNodeWrapper evaluates the parameter class's annotations (typing.get_type_hints):
    they must not use ``X | Y``, which Python 3.9 cannot evaluate even under the __future__ import."""
    tree = ast.parse((MODULE_DIR / "ScoreRecon.py").read_text(encoding="utf-8"))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ScoreReconParameterNode"]
    annotations = [s.annotation for s in cls.body if isinstance(s, ast.AnnAssign)]
    assert len(annotations) >= 30
    for ann in annotations:
        assert not any(isinstance(n, ast.BinOp) for n in ast.walk(ann)), ast.unparse(ann)


def test_version_problem_names_the_minimum_release():
    compat = _compat()
    assert compat.MINIMUM_SLICER_VERSION == (5, 10)
    old = compat.versionProblem((5, 8), (3, 9))
    assert "5.10" in old and "5.8" in old and "download.slicer.org" in old
    assert compat.versionProblem((4, 11), (3, 6))
    assert compat.versionProblem((5, 10), (3, 12)) == ""
    assert compat.versionProblem((5, 12), (3, 12)) == ""
    assert compat.versionProblem((6, 0), (3, 13)) == ""
    assert "Python 3.10" in compat.versionProblem((5, 10), (3, 9))


def test_cmake_installs_every_module_side_file():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = set(re.findall(r"\$\{MODULE_NAME\}ModuleLib/(\w+\.py)", cmake))
    present = {p.name for p in (MODULE_DIR / "ScoreReconModuleLib").glob("*.py")}
    assert listed == present, f"not installed: {sorted(present - listed)}; missing: {sorted(listed - present)}"
    assert "requirements.txt" in cmake
