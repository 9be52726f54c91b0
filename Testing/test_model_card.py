"""What a checkpoint says about its prior, read without torch (ScoreReconLib.model_card), and the Slicer module
asking it instead of reading config.json itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.model_card import model_facts
from ScoreReconLib.networks import load_prior


@pytest.mark.parametrize("name", ["default-ct", "default-mri"])
def test_facts_match_the_loaded_prior(name):
    facts, prior = model_facts(name), load_prior(name)
    assert facts.modality == prior.modality and facts.kind == prior.kind
    assert facts.image_size == (0 if prior.any_size else prior.image_size)
    assert facts.recommended == prior.recommended
    from ScoreReconLib.settings import recommended_samples

    for task in ("sparse-ct", "metal-ct", "mri"):
        assert facts.recommended_samples(task) == recommended_samples(prior, "proximal", task)


def test_tuned_sidecar_is_merged_as_a_run_merges_it(tiny_ct, tmp_path):
    folder = tmp_path / "tuned"
    shutil.copytree(tiny_ct, folder)
    (folder / "tuned.json").write_text(json.dumps({"tasks": {"sparse-ct": {"proximal": {"samples": 3, "lam": 0.5}}}}))
    facts, prior = model_facts(str(folder)), load_prior(str(folder))
    assert facts.recommended == prior.recommended
    assert facts.recommended_samples("sparse-ct") == 3 and facts.recommended_samples("limited-angle-ct") == 1
    (folder / "tuned.json").write_text("{not json")
    with pytest.raises(ScoreReconError, match="tuned.json is not valid JSON"):
        model_facts(str(folder))
    with pytest.raises(ScoreReconError, match="has no config.json"):
        model_facts(str(tmp_path / "missing"))


def test_model_card_imports_no_torch():
    code = ("import sys; import ScoreReconLib.model_card as m, ScoreReconLib.settings, ScoreReconLib.vocabulary; "
            "m.model_facts('default-ct').recommended_samples('sparse-ct'); "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_slicer_settings_ask_the_library(sr, tiny_ct, tmp_path):
    folder = tmp_path / "tuned"
    shutil.copytree(tiny_ct, folder)
    (folder / "tuned.json").write_text(json.dumps({"tasks": {"metal-ct": {"proximal": {"samples": 5}}}}))
    settings = sr.ScoreReconSettings(model=str(folder), task="metal-ct", samples=2)
    assert settings.effectiveSamples() == 5  # the task's recommendation, as `reconstruct` resolves it
    assert sr.ScoreReconSettings(model=str(folder), task="sparse-ct", samples=2).effectiveSamples() == 1
    assert sr.ScoreReconSettings(model=str(folder), task="metal-ct", samples=2,
                                 useRecommended=False).effectiveSamples() == 2
    assert sr.modelImageSize(str(folder)) == model_facts(str(folder)).image_size
    assert sr.modelImageSize(str(tmp_path / "missing")) is None
