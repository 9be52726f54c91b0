"""Test-only stand-in for Slicer's ``slicer.parameterNodeWrapper`` (typed parameter nodes, no Qt).

Covers what the ScoreRecon module uses: ``@parameterNodeWrapper`` over ``int``, ``float``, ``str``,
``bool``, ``pathlib`` paths and MRML node classes, with ``Annotated[...]`` carrying ``Default``,
``Choice``, ``WithinRange``, ``Minimum``, ``Maximum``, ``NotNone``, ``Decimals`` and ``SingleStep``.
Values live in a ``vtkMRMLScriptedModuleNode`` (strings via ``SetParameter``, nodes via node
references) exactly like in Slicer, and validators raise ``ValueError`` like Slicer's. Binding to a
GUI (``connectGui``) needs Qt and raises.

Like its sibling ``ScriptedLoadableModule.py`` this file sits in a ``slicer/`` folder without
``__init__.py`` (see there) and keeps its imports private.
"""

import dataclasses as _dataclasses
import pathlib as _pathlib
import typing as _typing

__all__ = [
    "Choice",
    "Decimals",
    "Default",
    "Maximum",
    "Minimum",
    "NotNone",
    "SingleStep",
    "Validator",
    "WithinRange",
    "isParameterNodeWrapper",
    "parameterNodeWrapper",
]

_PATH_TYPES = (_pathlib.Path, _pathlib.PosixPath, _pathlib.WindowsPath, _pathlib.PurePath,
               _pathlib.PurePosixPath, _pathlib.PureWindowsPath)


# ------------------------------------------------------------------------------- annotations
class Default:
    """Default value of a parameter."""

    def __init__(self, value):
        self.value = value


class Validator:
    """Base class: ``validate(value)`` raises ``ValueError`` for an invalid value."""

    def validate(self, value):
        raise NotImplementedError


class NotNone(Validator):
    def validate(self, value):
        if value is None:
            raise ValueError("Value must not be None")


class IsInstance(Validator):
    def __init__(self, classtype):
        self.classtype = classtype

    def validate(self, value):
        if not isinstance(value, self.classtype):
            raise ValueError(f"Value must be of type '{self.classtype}', is type '{type(value)}'")


class Minimum(Validator):
    def __init__(self, minimum):
        self.minimum = minimum

    def validate(self, value):
        if value < self.minimum:
            raise ValueError(f"Value must be greater than or equal to {self.minimum}, is {value}")


class Maximum(Validator):
    def __init__(self, maximum):
        self.maximum = maximum

    def validate(self, value):
        if value > self.maximum:
            raise ValueError(f"Value must be less than or equal to {self.maximum}, is {value}")


class WithinRange(Validator):
    def __init__(self, minimum, maximum):
        self.minimum = minimum
        self.maximum = maximum

    def validate(self, value):
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class Choice(Validator):
    def __init__(self, choices):
        self.choices = list(choices)

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"Value must be within {self.choices}, is {value}")


@_dataclasses.dataclass
class Decimals:
    """GUI hint (spin boxes): number of decimals."""

    value: int


@_dataclasses.dataclass
class SingleStep:
    """GUI hint (spin boxes, sliders): step."""

    value: float


# ------------------------------------------------------------------------------- serializers
def _isNodeType(t):
    import slicer

    return isinstance(t, type) and issubclass(t, slicer.vtkMRMLNode)


class _Serializer:
    def __init__(self, kind, datatype):
        self.kind = kind
        self.datatype = datatype

    def default(self):
        if self.kind == "node":
            return None
        return self.datatype()

    def isIn(self, node, name):
        if self.kind == "node":
            return node.GetNodeReferenceID(name) is not None or node.HasParameter(name)
        return node.HasParameter(name)

    def write(self, node, name, value):
        if self.kind == "node":
            node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            node.SetParameter(name, "")  # marks the parameter as present even when empty
        elif self.kind == "float":
            node.SetParameter(name, repr(float(value)))
        else:
            node.SetParameter(name, str(value))

    def read(self, node, name):
        if self.kind == "node":
            return node.GetNodeReference(name)
        text = node.GetParameter(name)
        if self.kind == "bool":
            return text == "True"
        if self.kind == "int":
            return int(text)
        if self.kind == "float":
            return float(text)
        if self.kind == "path":
            return self.datatype(text)
        return text


def _splitAnnotations(t):
    if _typing.get_origin(t) is _typing.Annotated:
        args = _typing.get_args(t)
        return args[0], list(args[1:])
    return t, []


def _makeSerializer(datatype):
    """Serializer and implicit validators for a base type."""
    if datatype is bool:
        return _Serializer("bool", bool), [NotNone(), IsInstance(bool)]
    if datatype is int:
        return _Serializer("int", int), [NotNone(), IsInstance(int)]
    if datatype is float:
        return _Serializer("float", float), [NotNone(), IsInstance((float, int))]
    if datatype is str:
        return _Serializer("str", str), [NotNone(), IsInstance(str)]
    if datatype in _PATH_TYPES:
        return _Serializer("path", datatype), [NotNone(), IsInstance(_pathlib.PurePath)]
    if _isNodeType(datatype):
        return _Serializer("node", datatype), []
    raise TypeError(f"the parameterNodeWrapper stand-in does not support type {datatype!r}")


@_dataclasses.dataclass
class _ParameterInfo:
    basename: str
    serializer: _Serializer
    validators: list
    default: Default
    unalteredType: object

    def validate(self, value):
        if self.serializer.kind == "node" and value is not None and not isinstance(value, self.serializer.datatype):
            raise ValueError(f"Value must be of type '{self.serializer.datatype}', is type '{type(value)}'")
        for v in self.validators:
            v.validate(value)


# ---------------------------------------------------------------------------------- wrapper
def _processClass(classtype):
    members = _typing.get_type_hints(classtype, include_extras=True)
    allParameters = {}
    for name, nametype in members.items():
        datatype, annotations = _splitAnnotations(nametype)
        serializer, validators = _makeSerializer(datatype)
        default = None
        for a in annotations:
            if isinstance(a, Default):
                default = a
            elif isinstance(a, Validator):
                validators.append(a)
            elif not isinstance(a, (Decimals, SingleStep)):
                raise TypeError(f"unsupported annotation {a!r} on {classtype.__name__}.{name}")
        if hasattr(classtype, name):
            default = Default(getattr(classtype, name))
        if default is None:
            default = Default(serializer.default())
        info = _ParameterInfo(name, serializer, validators, default, nametype)
        info.validate(default.value)
        allParameters[name] = info
        setattr(classtype, name, _makeProperty(name))

    def init(self, parameterNode, prefix=None):
        self.parameterNode = parameterNode
        for info in self.allParameters.values():
            if not info.serializer.isIn(parameterNode, info.basename):
                info.serializer.write(parameterNode, info.basename, info.default.value)

    def dataType(name):
        return classtype.allParameters[name].unalteredType

    def getValue(self, name):
        return getattr(self, name)

    def setValue(self, name, value):
        setattr(self, name, value)

    def default(self, name):
        return classtype.allParameters[name].default

    def connectGui(self, gui):
        raise RuntimeError("connectGui needs the 3D Slicer application (Qt)")

    classtype.allParameters = allParameters
    classtype._is_parameter_node_wrapper = True
    classtype.__init__ = init
    classtype.dataType = staticmethod(dataType)
    classtype.getValue = getValue
    classtype.setValue = setValue
    classtype.default = default
    classtype.connectGui = connectGui
    classtype.disconnectGui = lambda self, tag: None
    classtype.StartModify = lambda self: self.parameterNode.StartModify()
    classtype.EndModify = lambda self, wasModified: self.parameterNode.EndModify(wasModified)
    classtype.AddObserver = lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(
        event, callback, priority)
    classtype.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
    classtype.Modified = lambda self: self.parameterNode.Modified()
    return classtype


def _makeProperty(name):
    def getter(self):
        info = self.allParameters[name]
        return info.serializer.read(self.parameterNode, name)

    def setter(self, value):
        info = self.allParameters[name]
        info.validate(value)
        info.serializer.write(self.parameterNode, name, value)

    return property(getter, setter)


def isParameterNodeWrapper(classOrObj):
    return getattr(classOrObj, "_is_parameter_node_wrapper", False)


def parameterNodeWrapper(classtype=None):
    """Class decorator: typed properties backed by a ``vtkMRMLScriptedModuleNode``."""
    if classtype is None:
        return _processClass
    return _processClass(classtype)
