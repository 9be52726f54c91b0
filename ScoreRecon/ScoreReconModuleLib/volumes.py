"""Volume nodes ↔ arrays and files, and placing results in the scene (geometry, transform, subject hierarchy)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import slicer
import vtk

from .settings import ScoreReconDimensionError, ScoreReconModuleError, ScoreReconProcessError


def ijkToRASArray(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def vtkMatrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def volumeArray(node, what: str) -> np.ndarray:
    """Voxels of a scalar volume node as (K, J, I) float32 (a copy); clear errors otherwise."""
    if node is None:
        raise ScoreReconModuleError(f"no {what} is selected; choose a volume")
    image = node.GetImageData() if hasattr(node, "GetImageData") else None
    if image is None:
        raise ScoreReconModuleError(f"{what} '{node.GetName()}' has no voxels; load or compute it first")
    if image.GetNumberOfScalarComponents() != 1:
        raise ScoreReconDimensionError(
            f"{what} '{node.GetName()}' has {image.GetNumberOfScalarComponents()} components per voxel (a color "
            "or vector volume); convert it to a scalar volume (Vector to Scalar Volume module)")
    dims = image.GetDimensions()
    if min(dims) < 1 or dims[0] * dims[1] * dims[2] == 0:
        raise ScoreReconModuleError(f"{what} '{node.GetName()}' is empty; load or compute it first")
    array = np.array(slicer.util.arrayFromVolume(node), dtype=np.float32, copy=True)
    if array.ndim != 3:
        raise ScoreReconDimensionError(f"{what} '{node.GetName()}' has voxel array shape {array.shape}; "
                                       "expected a scalar volume")
    return array


def asVolumeArray(array: Any, what: str) -> np.ndarray:
    """A numpy (H, W) or (Z, H, W) real array as (Z, H, W) float32."""
    a = np.asarray(array)
    if a.ndim not in (2, 3):
        raise ScoreReconDimensionError(
            f"{what} array has shape {a.shape} ({a.ndim}-D); expected a 2-D (H, W) slice or a 3-D (Z, H, W) volume")
    if np.iscomplexobj(a) or not np.issubdtype(a.dtype, np.number):
        raise ScoreReconModuleError(f"{what} array has dtype {a.dtype}; expected real numbers")
    a = a.astype(np.float32)
    return a[None] if a.ndim == 2 else a


def checkFinite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise ScoreReconModuleError(f"{what} contains NaN or infinite values; clean or mask them first")


def writeVolumeFile(array: np.ndarray, ijkToRAS: np.ndarray, path: str) -> None:
    """Write (K, J, I) voxels with an IJK-to-RAS matrix as NRRD through an MRML storage node."""
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetIJKToRASMatrix(vtkMatrix(ijkToRAS))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    writeNodeFile(node, path)


def writeNodeFile(node, path: str) -> None:
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    storage.SetUseCompression(False)
    if not storage.WriteData(node) or not os.path.isfile(path):
        raise ScoreReconProcessError(f"could not write {path}; check free disk space in the temporary folder")


def readVolumeFile(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a volume file: ((K, J, I) float32 voxels, IJK-to-RAS 4×4)."""
    if not os.path.isfile(path):
        raise ScoreReconProcessError(f"the reconstruction process finished but wrote no {os.path.basename(path)}")
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise ScoreReconProcessError(f"could not read the result file {path}")
    array = np.array(slicer.util.arrayFromVolume(node), dtype=np.float32, copy=True)
    return array, ijkToRASArray(node)



# ------------------------------------------------------------------------------- results in the scene
def subjectHierarchyParent(scene, node) -> int | None:
    """Subject-hierarchy item that holds ``node`` (its study, folder or patient); None if none or no node."""
    if node is None or not hasattr(slicer, "vtkMRMLSubjectHierarchyNode"):
        return None
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is None:
        return None
    item = shNode.GetItemByDataNode(node)
    if not item:
        return None
    parent = shNode.GetItemParent(item)
    if not parent or parent == shNode.GetSceneItemID():
        return None
    return parent


def moveToParentOf(node, inputNode) -> None:
    """Make ``node`` a subject-hierarchy sibling of ``inputNode`` (in its study or folder), if it has one.

    Inside the application every data node has an item already; on bare MRML one is created."""
    scene = node.GetScene() or slicer.mrmlScene
    parent = subjectHierarchyParent(scene, inputNode)
    if parent is None:
        return
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = shNode.GetItemByDataNode(node)
    if item:
        shNode.SetItemParent(item, parent)
    else:
        shNode.CreateItem(parent, node)


def placeLikeInput(node, inputNode, isNew: bool) -> None:
    """Put a result ``node`` in the input's frame: the input's parent transform, and (new nodes only) its
    subject-hierarchy study/folder, so results sit beside the input in the Data module."""
    if node is None or inputNode is None:
        return
    if hasattr(node, "SetAndObserveTransformNodeID") and hasattr(inputNode, "GetTransformNodeID"):
        node.SetAndObserveTransformNodeID(inputNode.GetTransformNodeID())
    if isNew:
        moveToParentOf(node, inputNode)


def storeVolume(node, array: np.ndarray, ijkToRAS: np.ndarray, name: str, windowLevel: tuple | None,
                inputNode=None):
    """Fill ``node`` (or a new scalar volume named ``name``) with (K, J, I) voxels and the given geometry.

    The result observes the input's parent transform; a new node joins the input's study."""
    scene = slicer.mrmlScene
    isNew = node is None
    if isNew:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array, dtype=np.float32))
    node.SetIJKToRASMatrix(vtkMatrix(ijkToRAS))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None and windowLevel is not None and windowLevel[0] > 0:
        display.AutoWindowLevelOff()
        display.SetWindowLevel(float(windowLevel[0]), float(windowLevel[1]))
    placeLikeInput(node, inputNode, isNew)
    node.Modified()
    return node


def showAsMap(node, colorNodeID: str, low: float, high: float) -> None:
    """Display a volume as a map: the colour table ``colorNodeID`` over the fixed range ``low``–``high``."""
    display = node.GetDisplayNode() if node is not None else None
    if display is None:
        return
    display.SetAndObserveColorNodeID(colorNodeID)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(float(low), float(high))


def _number(value) -> float:
    """A metrics value as a float; NaN for none or text (e.g. a weight left at "auto")."""
    try:
        return float(value) if value is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def storeMetrics(node, metrics: dict, name: str, labels: dict, inputNode=None):
    """Write one row per method (PSNR in dB, SSIM, seconds, the regularisation weight the run used: TV / CS's
    weight, the score method's classical-start weight; chi2, the data residual in units of the noise variance;
    coverage90, the fraction of body pixels whose error lies within ±1.645 calibrated std (about 0.9 when the std
    holds; score with 2+ samples and a reference); NaN where none) into a table node (new: in the input's study)."""
    scene = slicer.mrmlScene
    isNew = node is None
    if isNew:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = node.GetTable()
    table.Initialize()
    columns = [("Method", vtk.vtkStringArray()), ("PSNR (dB)", vtk.vtkDoubleArray()),
               ("SSIM", vtk.vtkDoubleArray()), ("Seconds", vtk.vtkDoubleArray()), ("Weight", vtk.vtkDoubleArray()),
               ("chi2", vtk.vtkDoubleArray()), ("Coverage 90 %", vtk.vtkDoubleArray())]
    for title, column in columns:
        column.SetName(title)
    for method, record in metrics.items():
        columns[0][1].InsertNextValue(labels.get(method, method))
        weight = record.get("weight", record.get("init_weight"))
        for index, key in enumerate(("psnr", "ssim", "seconds", "weight", "chi2", "coverage90")):
            column = columns[index + 1][1]
            value = weight if key == "weight" else record.get(key)
            column.InsertNextValue(_number(value))
    for _, column in columns:
        table.AddColumn(column)
    table.Modified()
    if isNew and inputNode is not None:
        moveToParentOf(node, inputNode)
    node.Modified()
    return node
