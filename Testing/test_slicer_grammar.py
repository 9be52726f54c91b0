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
    assert compat.versionProblem((5, 10), (3, 12), "Linux", "x86_64") == ""
    assert compat.versionProblem((5, 12), (3, 12), "Windows", "AMD64") == ""
    assert compat.versionProblem((6, 0), (3, 13), "Darwin", "arm64") == ""
    assert "Python 3.10" in compat.versionProblem((5, 10), (3, 9))


def test_macos_intel_python_gets_a_clear_message_not_a_failed_pip_run():
    """PyTorch has no macOS x86_64 wheels after 2.2.2, and Slicer 5.10 / 5.12 for macOS are x86_64 (issue 21)."""
    compat = _compat()
    mac = compat.versionProblem((5, 12), (3, 12), "Darwin", "x86_64")
    assert "no wheels for macOS on x86_64" in mac and "2.2.2" in mac and "Linux or Windows" in mac
    assert compat.platformProblem("Darwin", "arm64") == ""
    assert compat.platformProblem("Linux", "x86_64") == ""


def test_cmake_installs_every_module_side_file():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = set(re.findall(r"\$\{MODULE_NAME\}ModuleLib/(\w+\.py)", cmake))
    present = {p.name for p in (MODULE_DIR / "ScoreReconModuleLib").glob("*.py")}
    assert listed == present, f"not installed: {sorted(present - listed)}; missing: {sorted(listed - present)}"
    assert "requirements.txt" in cmake


_PY39_CHILD = r'''
import importlib.util, sys, types

repo, stub = sys.argv[1], sys.argv[2]

class _Node:  # stand-ins for what the module needs at import time (no MRML, numpy or VTK on this Python)
    pass

slicer = types.ModuleType("slicer")
slicer.__path__ = []
slicer.vtkMRMLNode = _Node
slicer.vtkMRMLScalarVolumeNode = type("vtkMRMLScalarVolumeNode", (_Node,), {})
slicer.vtkMRMLTableNode = type("vtkMRMLTableNode", (_Node,), {})
util = types.ModuleType("slicer.util")
util.VTKObservationMixin = type("VTKObservationMixin", (), {})
slicer.util = util
sys.modules.update({"slicer": slicer, "slicer.util": util, "vtk": types.ModuleType("vtk"),
                    "numpy": types.ModuleType("numpy")})
for name in ("ScriptedLoadableModule", "parameterNodeWrapper"):
    spec = importlib.util.spec_from_file_location("slicer." + name, stub + "/slicer/" + name + ".py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["slicer." + name] = module
    spec.loader.exec_module(module)
    setattr(slicer, name, module)
spec = importlib.util.spec_from_file_location("ScoreRecon", repo + "/ScoreRecon/ScoreRecon.py")
sr = importlib.util.module_from_spec(spec)
sys.modules["ScoreRecon"] = sr
spec.loader.exec_module(sr)
assert len(sr.ScoreReconParameterNode.allParameters) >= 30  # annotations evaluated by the wrapper
message = sr.compat.versionProblem((5, 8))
assert "5.10" in message, message
print("OK", sys.version_info[:2], message[:40])
'''


def _python39():
    """A working Python 3.9: $SCORERECON_PYTHON39, python3.9 on PATH, or a pyenv install."""
    import os
    import shutil
    import subprocess

    candidates = [os.environ.get("SCORERECON_PYTHON39"), shutil.which("python3.9"),
                  *sorted(str(p) for p in (Path.home() / ".pyenv" / "versions").glob("3.9*/bin/python3.9"))]
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                 text=True, timeout=30).stdout.strip()
        except OSError:
            continue
        if out == "(3, 9)":
            return candidate
    return None


def test_module_imports_on_python_3_9_as_in_slicer_5_8():
    """With a real Python 3.9 (skipped where there is none): the module file and every
    ScoreReconModuleLib file it imports load, the parameter class's annotations evaluate, and the
    version message is there to show. Slicer, numpy and VTK are replaced by empty stand-ins."""
    import subprocess

    python = _python39()
    if python is None:
        pytest.skip("no Python 3.9 interpreter on this machine")
    proc = subprocess.run([python, "-c", _PY39_CHILD, str(REPO_ROOT), str(REPO_ROOT / "Testing" / "slicer_stub")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK (3, 9)")
