"""ScoreReconLib must never import ``slicer`` or Qt: it runs outside 3D Slicer and in a child process.

A fresh interpreter blocks ``slicer``, ``qt``, ``ctk``, ``PythonQt`` and Slicer's MRML/VTK wrappers
with a ``sys.meta_path`` finder, imports ScoreReconLib and every submodule (``pkgutil.walk_packages``)
and reports what got imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

_CHILD = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    BLOCKED = {"slicer", "qt", "ctk", "PythonQt", "MRMLCorePython", "MRMLLogicPython", "slicer_core"}

    def blocked(name):
        top = name.split(".")[0]
        return top in BLOCKED or top.startswith("vtkSlicer") or top.startswith("qSlicer")

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if blocked(name):
                raise ModuleNotFoundError(f"{name} is blocked in this test", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    try:
        import slicer  # noqa: F401
        blocker_works = False
    except ModuleNotFoundError:
        blocker_works = True

    import ScoreReconLib

    imported, failed = ["ScoreReconLib"], []

    def onerror(name):
        failed.append([name, repr(sys.exc_info()[1])])

    for info in pkgutil.walk_packages(ScoreReconLib.__path__, "ScoreReconLib.", onerror=onerror):
        if info.name.endswith(".__main__"):  # importing it would run the CLI
            continue
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except Exception as exc:
            failed.append([info.name, repr(exc)])
    leaked = sorted(n for n in sys.modules if blocked(n))
    print(json.dumps({"blocker_works": blocker_works, "imported": imported, "failed": failed, "leaked": leaked}))
    """
)


def test_library_imports_without_slicer_or_qt():
    proc = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["blocker_works"]
    assert report["failed"] == []
    assert report["leaked"] == []
    names = set(report["imported"])
    expected = {p.relative_to(REPO_ROOT).with_suffix("").as_posix().replace("/", ".")
                for p in (REPO_ROOT / "ScoreReconLib").rglob("*.py")
                if "__pycache__" not in p.parts and p.name != "__main__.py"}
    expected = {n[: -len(".__init__")] if n.endswith(".__init__") else n for n in expected}
    assert expected <= names, f"not imported: {sorted(expected - names)}"


def test_physics_does_not_depend_on_the_classical_methods():
    """The operators and coil maps (physics) never import baselines (classical reconstructions): the dependency
    runs one way, classical methods on physics (issue 18's import circle coils → baselines → coils)."""
    import ast

    lib = REPO_ROOT / "ScoreReconLib"
    physics = [lib / "coils.py", *sorted((lib / "operators").glob("*.py"))]
    for path in physics:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert not module.lstrip(".").startswith("baselines"), f"{path.name} imports {module}"
            elif isinstance(node, ast.Import):
                assert all("baselines" not in a.name for a in node.names), path.name
