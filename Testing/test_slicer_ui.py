"""The module's Qt Designer file against its parameter node, checked without Qt.

Slicer's ``parameterNodeWrapper.connectGui`` binds each widget whose ``SlicerParameterName``
dynamic property names a parameter. These tests parse ``ScoreRecon.ui`` (XML) and the parameter
class's annotations (AST of ``ScoreRecon.py``; with slicer-core also the imported class) and check
what would otherwise only fail inside Slicer: one widget per parameter, no stray names, widget
classes Slicer can connect to each type, defaults shown by the widgets, every ``self.ui.<name>``
used by the widget code exists, and every node selector receives the scene.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
UI_PATH = REPO_ROOT / "ScoreRecon" / "Resources" / "UI" / "ScoreRecon.ui"
MODULE_PATH = REPO_ROOT / "ScoreRecon" / "ScoreRecon.py"
PARAMETER_CLASS = "ScoreReconParameterNode"
#: str parameters the widget binds in code to a ctkPathLineEdit (Slicer's connector only binds pathlib
#: paths, and an unset pathlib.Path shows as "." in the field)
CODE_BOUND_PATHS = {"measurementFile": "measurementFilePathLineEdit", "kspaceFile": "kspaceFilePathLineEdit",
                    "checkpointPath": "checkpointPathLineEdit"}
NODE_TYPES = {"vtkMRMLScalarVolumeNode", "vtkMRMLTableNode"}

#: widget classes Slicer's GUI connectors bind to each parameter type
CONNECTABLE = {
    "str+Choice": {"QComboBox"},
    "str": {"QLineEdit", "QTextEdit"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"ctkSliderWidget", "QDoubleSpinBox"},
    "bool": {"QCheckBox", "QPushButton"},
    "pathlib.Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "node": {"qMRMLNodeComboBox"},
}


def _value(element):
    """Python value of a Qt Designer property element (<string>, <number>, <double>, <bool>, <stringlist>)."""
    child = list(element)[0]
    if child.tag == "string":
        return child.text or ""
    if child.tag == "number":
        return int(child.text)
    if child.tag == "double":
        return float(child.text)
    if child.tag == "bool":
        return child.text == "true"
    if child.tag == "stringlist":
        return [s.text for s in child]
    return child.text


def _widgets() -> list[dict]:
    root = ET.parse(UI_PATH).getroot()
    out = []
    for w in root.iter("widget"):
        props = {p.get("name"): _value(p) for p in w.findall("property")}
        out.append({"class": w.get("class"), "name": w.get("name"), "props": props})
    return out


def _parameters() -> dict[str, dict]:
    """Annotations of the parameter class: name → {"base", "annotations": {name: [args]}}."""
    tree = ast.parse(MODULE_PATH.read_text())
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == PARAMETER_CLASS]
    assert len(classes) == 1, f"{PARAMETER_CLASS} not found in {MODULE_PATH}"
    assert any(ast.unparse(d) == "parameterNodeWrapper" for d in classes[0].decorator_list)
    params = {}
    for stmt in classes[0].body:
        if not isinstance(stmt, ast.AnnAssign):
            continue
        ann = stmt.annotation
        extras: dict[str, list] = {}
        if isinstance(ann, ast.Subscript) and ast.unparse(ann.value) == "Annotated":
            base, *rest = ann.slice.elts
            for call in rest:
                assert isinstance(call, ast.Call)
                extras[ast.unparse(call.func)] = call.args
        else:
            base = ann
        params[stmt.target.id] = {"base": ast.unparse(base), "annotations": extras, "has_value": stmt.value}
    return params


def _settings_module():
    """ScoreReconModuleLib.settings, loaded by path (plain Python: no Qt, no Slicer)."""
    import sys

    name = "scorerecon_module_settings"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, REPO_ROOT / "ScoreRecon" / "ScoreReconModuleLib" / "settings.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


def _within(args: list) -> tuple[float, float]:
    """(low, high) of a ``WithinRange(...)`` annotation: literal numbers or ``*RANGES["name"]`` (the one source)."""
    if len(args) == 1 and isinstance(args[0], ast.Starred):
        sub = args[0].value
        assert isinstance(sub, ast.Subscript) and ast.unparse(sub.value) == "RANGES", ast.unparse(args[0])
        return tuple(_settings_module().RANGES[ast.literal_eval(sub.slice)])
    return tuple(ast.literal_eval(a) for a in args)


def _kind(param: dict) -> str:
    base = param["base"]
    if base in NODE_TYPES:
        return "node"
    if base == "str" and "Choice" in param["annotations"]:
        return "str+Choice"
    return base


def _bound() -> dict[str, list[dict]]:
    bound: dict[str, list[dict]] = {}
    for w in _widgets():
        name = w["props"].get("SlicerParameterName")
        if name is not None:
            bound.setdefault(name, []).append(w)
    return bound


def test_every_parameter_has_exactly_one_widget_and_no_stray_names():
    params = {n: p for n, p in _parameters().items() if n not in CODE_BOUND_PATHS}
    assert len(params) >= 30
    counts = Counter({name: len(ws) for name, ws in _bound().items()})
    assert set(counts) == set(params), (
        f"parameters without a widget: {sorted(set(params) - set(counts))}; "
        f"widgets naming no parameter: {sorted(set(counts) - set(params))}")
    assert all(c == 1 for c in counts.values()), {n: c for n, c in counts.items() if c != 1}


def test_path_parameters_are_strings_bound_by_the_widget_code():
    """No "." in empty path fields: the path parameters are str (default "") and the widget code keeps
    each ctkPathLineEdit and its parameter in step in both directions."""
    params = _parameters()
    widgets = {w["name"]: w for w in _widgets()}
    source = MODULE_PATH.read_text()
    for name, widget_name in CODE_BOUND_PATHS.items():
        assert params[name]["base"] == "str" and params[name]["has_value"] is None, name
        assert widgets[widget_name]["class"] == "ctkPathLineEdit"
        assert "SlicerParameterName" not in widgets[widget_name]["props"], widget_name
        assert re.search(rf"{widget_name}\.connect\(\"currentPathChanged\(QString\)\"", source), widget_name
        assert f'"{name}": "{widget_name}"' in source  # PATH_WIDGETS: parameter → widget, written back on change


def _default_value(node: ast.expr):
    """A parameter's ``Default(...)`` value: ``DEFAULTS.<name>`` (the settings' default) or a literal."""
    if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "DEFAULTS":
        return getattr(_settings_module().ScoreReconSettings(), node.attr)
    return ast.literal_eval(node)


def test_parameter_defaults_come_from_the_settings():
    """The parameter node and ScoreReconSettings share each setting's default: the node names
    ``DEFAULTS.<same name>`` (ScoreReconSettings()) for every setting the two have in common."""
    import dataclasses

    shared = {f.name for f in dataclasses.fields(_settings_module().ScoreReconSettings)}
    params = _parameters()
    common = shared & set(params)
    assert len(common) >= 25
    for name in common:
        annotations = params[name]["annotations"]
        if "Default" not in annotations:
            continue
        node = annotations["Default"][0]
        assert ast.unparse(node) == f"DEFAULTS.{name}", f"{name}: Default({ast.unparse(node)}) is a second default"


def test_widget_classes_can_represent_their_parameter_types():
    params = _parameters()
    for name, (widget,) in _bound().items():
        param = params[name]
        kind = _kind(param)
        assert kind in CONNECTABLE, f"{name}: unsupported parameter type {param['base']}"
        assert widget["class"] in CONNECTABLE[kind], f"{name}: {widget['class']} cannot show a {kind}"
        annotations = param["annotations"]
        if widget["class"] == "ctkSliderWidget":  # Slicer refuses unbounded sliders
            assert "WithinRange" in annotations or {"Minimum", "Maximum"} <= set(annotations), name
        if kind == "node":
            assert widget["props"]["nodeTypes"] == [param["base"]], name
        if "Default" in annotations and widget["class"] in ("QSpinBox", "ctkSliderWidget"):
            default = _default_value(annotations["Default"][0])
            assert widget["props"].get("value") == pytest.approx(default), f"{name}: .ui value differs from Default"
        if "WithinRange" in annotations and widget["class"] in ("QSpinBox", "ctkSliderWidget"):
            low, high = _within(annotations["WithinRange"])
            assert widget["props"]["minimum"] == pytest.approx(low), name
            assert widget["props"]["maximum"] == pytest.approx(high), name


def test_widget_code_uses_only_widgets_of_the_ui():
    names = {w["name"] for w in _widgets()}
    used = set(re.findall(r"\bui\.(\w+)", MODULE_PATH.read_text()))
    assert used, "the widget code refers to no self.ui widgets"
    assert used <= names, f"ScoreRecon.py refers to widgets missing from the .ui: {sorted(used - names)}"
    for required in ("applyButton", "cancelButton", "progressBar", "statusLabel"):
        assert required in names


def test_node_selectors_receive_the_scene():
    root = ET.parse(UI_PATH).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    signal, slot = "mrmlSceneChanged(vtkMRMLScene*)", "setMRMLScene(vtkMRMLScene*)"
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if (c.findtext("sender"), c.findtext("signal"), c.findtext("slot")) == (top.get("name"), signal, slot)}
    selectors = {w["name"] for w in _widgets() if w["class"] == "qMRMLNodeComboBox"}
    assert selectors and selectors <= receivers
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w["class"] for w in _widgets() if not w["class"].startswith("Q")}
    assert used <= custom, f"custom widgets not declared: {sorted(used - custom)}"


def test_imported_parameter_class_matches_the_ui():
    """With slicer-core: the class as Slicer builds it has exactly the parameters the .ui binds."""
    spec = importlib.util.spec_from_file_location("scorerecon_slicer_standin",
                                                  REPO_ROOT / "Testing" / "slicer_stub" / "standin.py")
    standin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standin)
    if standin.slicer_core() is None:
        pytest.skip("slicer-core is not installed (pip install slicer-core==5.13.31053.0)")
    with standin.stand_ins() as sr:
        cls = sr.ScoreReconParameterNode
        assert set(cls.allParameters) == set(_bound()) | set(CODE_BOUND_PATHS) == set(_parameters())
        pn = sr.ScoreReconLogic().getParameterNode()
        assert (pn.measurementFile, pn.checkpointPath) == ("", "")  # empty fields, not "."
        settings_fields = {f.name for f in sr.dataclasses.fields(sr.ScoreReconSettings)}
        # every scalar setting of a run is a parameter (the model is modelChoice + checkpointPath)
        assert settings_fields - {"model"} <= set(cls.allParameters)


def test_every_range_has_one_source():
    """The parameter node's WithinRange, the .ui widgets and the settings' validate() all use settings.RANGES, so
    the panel cannot offer a value that is refused later (issue 21)."""
    settings = _settings_module()
    params = _parameters()
    ranged = {n for n, p in params.items() if "WithinRange" in p["annotations"]}
    assert ranged == set(settings.RANGES)
    for name in ranged:
        args = params[name]["annotations"]["WithinRange"]
        assert len(args) == 1 and isinstance(args[0], ast.Starred), f"{name}: literal range, not RANGES"
    (widget,) = _bound()["threads"]
    assert widget["props"]["minimum"] == settings.RANGES["threads"][0]
    s = settings.ScoreReconSettings
    for name, (low, high) in settings.RANGES.items():
        if name in ("arc",):  # also bounded by the geometry (180° parallel beam), checked on its own
            continue
        ok = {name: high}
        s(**ok).validate()
        with pytest.raises(settings.ScoreReconModuleError, match=name):
            s(**{name: high * 2 + 1}).validate()
        if low > 0 or name in settings.GAPS:
            with pytest.raises(settings.ScoreReconModuleError, match=name):
                s(**{name: (low - 1) if low > 0 else settings.GAPS[name][1] / 2}).validate()


@pytest.mark.parametrize("name,value,previous,expected", [
    ("size", 1, 0, 16), ("size", 15, 16, 0), ("size", 5, 64, 0), ("size", 16, 0, 16), ("size", 0, 16, 0),
    ("kspaceAcceleration", 0.5, 0.0, 1.0), ("kspaceAcceleration", 0.9, 1.0, 0.0), ("kspaceAcceleration", 4.0, 0.0, 4.0),
    ("views", 3, 1, 3),
])
def test_gapped_settings_snap_out_of_their_gap(name, value, previous, expected):
    settings = _settings_module()
    got = settings.snapSetting(name, value, previous)
    assert got == expected
    settings.ScoreReconSettings(**{name: got, "task": "mri"}).validate()
