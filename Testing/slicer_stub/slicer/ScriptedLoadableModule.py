"""Test-only stand-in for Slicer's ``slicer.ScriptedLoadableModule`` (no Qt, no ``slicer.app``).

slicer-core (the pip package that gives real MRML headless) has no scripted-module base classes;
3D Slicer's application adds them. This stand-in offers the same four classes with the behaviour
the ScoreRecon module relies on outside the application:

- ``ScriptedLoadableModule``: fills the ``parent`` object's metadata fields, ``resourcePath``,
  registers ``runTest`` in ``slicer.selfTests``.
- ``ScriptedLoadableModuleLogic``: ``getParameterNode`` / ``createParameterNode`` on
  ``slicer.mrmlScene`` (singleton ``vtkMRMLScriptedModuleNode`` tagged with the module name).
- ``ScriptedLoadableModuleWidget``: exists so the module file imports; building one needs Qt and
  raises.
- ``ScriptedLoadableModuleTest``: a ``unittest.TestCase`` whose ``delayDisplay`` logs.

This folder must never hold an ``__init__.py``: slicer-core's ``slicer`` package extends its
``__path__`` over every ``slicer/`` folder on ``sys.path``, so an ``__init__.py`` here would shadow
the real package. The tests load this file by path and place it in ``sys.modules``.
Imports are private (underscore) because slicer-core copies public names of modules found in
``slicer/`` folders onto the ``slicer`` namespace.
"""

import logging as _logging
import os as _os
import unittest as _unittest

__all__ = [
    "ScriptedLoadableModule",
    "ScriptedLoadableModuleLogic",
    "ScriptedLoadableModuleTest",
    "ScriptedLoadableModuleWidget",
]


def _slicer():
    import slicer

    return slicer


class ScriptedLoadableModule:
    """Module metadata holder; ``parent`` is any object with a ``path`` attribute (the module file)."""

    def __init__(self, parent):
        super().__init__()
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""
        slicer = _slicer()
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename):
        return _os.path.join(_os.path.dirname(self.parent.path), "Resources", filename)

    def getDefaultModuleDocumentationLink(self, docPage=None):
        return ""

    def runTest(self, msec=100, **kwargs):
        import importlib

        module = importlib.import_module(self.__module__)
        testCase = getattr(module, self.moduleName + "Test")()
        testCase.messageDelay = msec
        testCase.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    """Only importable here: a module widget needs Slicer's Qt application."""

    def __init__(self, parent=None):
        raise RuntimeError("a ScriptedLoadableModuleWidget needs the 3D Slicer application (Qt); "
                           "test the module logic instead")


class ScriptedLoadableModuleLogic:
    """Parameter-node plumbing of Slicer's logic base class, on ``slicer.mrmlScene``."""

    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[:-5]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        scene = _slicer().mrmlScene
        if self.isSingletonParameterNode:
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node:
                if node.GetAttribute("ModuleName") != self.moduleName:
                    node.SetAttribute("ModuleName", self.moduleName)
                return node
        else:
            for node in self.getAllParameterNodes():
                return node
        return scene.AddNode(self.createParameterNode())

    def getAllParameterNodes(self):
        scene = _slicer().mrmlScene
        found = []
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLScriptedModuleNode")
            if node.GetAttribute("ModuleName") == self.moduleName:
                found.append(node)
        return found

    def createParameterNode(self):
        scene = _slicer().mrmlScene
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        if self.isSingletonParameterNode:
            node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(scene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(_unittest.TestCase):
    """Self-test base class; ``delayDisplay`` logs instead of showing a message box."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.enableScreenshots = False
        self.screenshotScaleFactor = 1.0

    def delayDisplay(self, message, requestedDelay=None, msec=None):
        _logging.info(message)

    def takeScreenshot(self, name, description, type=-1):
        self.delayDisplay(description)

    def runTest(self):
        _logging.warning("No test is defined in " + self.__class__.__name__)
