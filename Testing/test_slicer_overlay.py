"""The Slicer module's one overlay switch: a run's std, residual or disagreement map over its reconstruction."""

from __future__ import annotations

import numpy as np
import pytest


def _volume(slicer, name: str):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.zeros((2, 8, 8), dtype=np.float32))
    return node


def test_one_switch_overlays_one_map(sr, slicer):
    views = [slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(2)]
    recon, std, resid = (_volume(slicer, n) for n in ("recon", "std", "residual"))
    result = sr.ScoreReconResult(np.zeros((2, 8, 8)), np.eye(4), reconstructionNode=recon, uncertaintyNode=std,
                                 residualNode=resid)
    logic = sr.ScoreReconLogic
    assert logic.showOverlay(result, "std", opacity=0.4) is std
    for view in views:
        assert (view.GetBackgroundVolumeID(), view.GetForegroundVolumeID()) == (recon.GetID(), std.GetID())
        assert view.GetForegroundOpacity() == pytest.approx(0.4)
    assert logic.showOverlay(result, "residual") is resid
    assert all(v.GetForegroundVolumeID() == resid.GetID() for v in views)  # one map at a time
    assert logic.showOverlay(result, "disagreement") is None  # not made by this run (one sample): nothing shown
    assert all(v.GetForegroundVolumeID() is None and v.GetForegroundOpacity() == 0.0 for v in views)
    logic.showOverlay(result, "residual")
    assert logic.showOverlay(result, "none") is None
    assert all(v.GetForegroundVolumeID() is None for v in views)
    with pytest.raises(sr.ScoreReconModuleError, match="overlay must be one of"):
        logic.showOverlay(result, "error")
    assert set(sr.OVERLAYS) == {"none", *logic.OVERLAY_TITLES}
