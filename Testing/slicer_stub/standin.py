"""Load the ScoreRecon Slicer module outside the Slicer application, on slicer-core.

slicer-core (``pip install slicer-core==5.13.31053.0``) provides real MRML headless as the
``slicer`` package, but not the application's ``slicer.ScriptedLoadableModule`` and
``slicer.parameterNodeWrapper``. :func:`stand_ins` loads the stand-ins from ``slicer/`` next to
this file by path, puts them into ``sys.modules`` (and onto the ``slicer`` package), gives
``slicer`` a fresh ``mrmlScene``, imports ``ScoreRecon/ScoreRecon.py`` (which puts its folder, holding
``ScoreReconModuleLib``, on ``sys.path``) and undoes all of it on exit.
No conftest and no change to ``sys.path`` are needed; the test files load this helper by path.
"""

import contextlib
import importlib.util
import sys
from pathlib import Path

STUB_DIR = Path(__file__).resolve().parent / "slicer"
REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_PATH = REPO_ROOT / "ScoreRecon" / "ScoreRecon.py"
STAND_INS = ("ScriptedLoadableModule", "parameterNodeWrapper")


def slicer_core():
    """The slicer-core ``slicer`` package, or None if it is not installed (or PyPI's unrelated ``slicer`` is)."""
    try:
        import slicer
    except ImportError:
        return None
    return slicer if hasattr(slicer, "vtkMRMLScene") else None


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def stand_ins(module_name="ScoreRecon"):
    """Context manager yielding the imported ScoreRecon module with the stand-ins installed."""
    slicer = slicer_core()
    if slicer is None:
        raise RuntimeError("slicer-core is not installed: pip install slicer-core==5.13.31053.0")
    missing = object()
    saved_modules = {n: sys.modules.get(n, missing) for n in [f"slicer.{s}" for s in STAND_INS] + [module_name]}
    saved_attrs = {n: getattr(slicer, n, missing) for n in (*STAND_INS, "mrmlScene", "selfTests")}
    saved_path = list(sys.path)
    lib_modules = [n for n in sys.modules if n == "ScoreReconModuleLib" or n.startswith("ScoreReconModuleLib.")]
    try:
        for name in STAND_INS:
            setattr(slicer, name, _load(f"slicer.{name}", STUB_DIR / f"{name}.py"))
        slicer.mrmlScene = slicer.vtkMRMLScene()
        yield _load(module_name, MODULE_PATH)
    finally:
        sys.path[:] = saved_path  # the module file puts its own folder (ScoreReconModuleLib) on sys.path
        for name in [n for n in sys.modules if n == "ScoreReconModuleLib" or n.startswith("ScoreReconModuleLib.")]:
            if name not in lib_modules:
                sys.modules.pop(name, None)
        for name, value in saved_modules.items():
            if value is missing:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
        for name, value in saved_attrs.items():
            if value is missing:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)
