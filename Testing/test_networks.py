"""Score network conditioning, checkpoint save/load, validation and compatibility checks."""

from __future__ import annotations

import json

import pytest
import torch

from ScoreReconLib import FORMAT_VERSION
from ScoreReconLib.data import ct_normalization
from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.networks import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ScoreModel,
    load_checkpoint,
    load_prior,
    make_config,
    network_config,
    save_checkpoint,
)
from ScoreReconLib.sde import VESDE, VPSDE

TINY = {"channels": [8, 16, 16], "attention_levels": [False, False, True]}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """MONAI zero-initialises the output conv; give every weight random values so outputs differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.fixture
def ve_model() -> ScoreModel:
    torch.manual_seed(0)
    m = ScoreModel(VESDE(sigma_max=20.0), TINY).eval()
    _randomise(m)
    return m


def test_ve_output_and_input_scaling(ve_model):
    x = torch.rand(2, 1, 16, 16)
    t = torch.tensor([0.2, 0.9])
    sigma = ve_model.sde.sigma(t).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        raw = ve_model.unet(x / torch.sqrt(sigma**2 + 0.25), 999.0 * t)
        score = ve_model(x, t)
    assert score.shape == x.shape
    torch.testing.assert_close(score, raw / sigma)
    # the noise label changes the output (the network is conditioned on the noise level)
    with torch.no_grad():
        other = ve_model(x, torch.tensor([0.5, 0.5]))
    assert not torch.allclose(other * ve_model.sde.sigma(torch.tensor(0.5)), score * sigma, atol=1e-3)


def test_vp_output_is_minus_noise_over_std():
    torch.manual_seed(0)
    m = ScoreModel(VPSDE(), TINY).eval()
    _randomise(m, 1)
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([0.05, 0.6])
    std = m.sde.beta(t).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(m(x, t), -m.unet(x, 999.0 * t) / std)


def test_flash_attention_gives_same_outputs(ve_model):
    plain = ScoreModel(ve_model.sde, dict(TINY, use_flash_attention=False)).eval()
    plain.load_state_dict(ve_model.state_dict())  # same parameter names with or without SDPA
    x = torch.rand(3, 1, 16, 16)
    t = torch.tensor([0.1, 0.5, 1.0])
    with torch.no_grad():
        torch.testing.assert_close(plain(x, t), ve_model(x, t), rtol=1e-4, atol=1e-4)


def test_network_config_defaults_and_errors():
    cfg = network_config()
    assert cfg["channels"] == [32, 64, 64] and cfg["attention_levels"] == [False, False, True]
    assert cfg["num_res_blocks"] == 1 and cfg["norm_num_groups"] == 32
    assert network_config(TINY)["norm_num_groups"] == 8
    with pytest.raises(ScoreReconError, match="one entry per channel level"):
        network_config({"channels": [8, 16], "attention_levels": [False, False, True]})
    with pytest.raises(ScoreReconError, match="unknown network option"):
        network_config({"depth": 3})
    with pytest.raises(ScoreReconError, match="multiple of norm_num_groups"):
        network_config({"channels": [8, 12, 16], "norm_num_groups": 8})


def _save(model: ScoreModel, folder, size: int = 16, modality: str = "CT"):
    cfg = make_config(model, size, modality, ct_normalization(), data={"what": "test"}, steps=3, final_loss=0.5)
    return save_checkpoint(folder, model, cfg)


def test_save_load_identical_outputs(ve_model, tmp_path):
    folder = _save(ve_model, tmp_path / "ckpt")
    assert (folder / WEIGHTS_FILE).is_file() and (folder / CONFIG_FILE).is_file()
    assert not list(folder.glob(".*tmp"))  # no temporary files left behind
    prior = load_prior(folder)
    prior.precision = "fp32"  # the training network's arithmetic ("auto" may be bf16 on this CPU)
    assert prior.image_size == 16 and prior.modality == "CT" and prior.sde.sigma_max == 20.0
    assert prior.normalization == ct_normalization() and prior.recommended["sampler"] == "proximal"
    assert not any(p.requires_grad for p in prior.model.parameters()) and not prior.model.training
    x = torch.rand(2, 1, 16, 16)
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        torch.testing.assert_close(prior.score(x, t), ve_model(x, t), rtol=0, atol=0)
        torch.testing.assert_close(prior.score(x, 0.3), ve_model(x, torch.tensor([0.3, 0.3])), rtol=0, atol=0)
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    for key in ("format_version", "library_version", "sde", "network", "image_size", "modality", "normalization",
                "data", "steps", "final_loss", "recommended", "weights_sha256"):
        assert key in cfg
    assert cfg["format_version"] == FORMAT_VERSION
    # the weights file is plain safetensors (no pickle)
    from safetensors.torch import load_file

    assert set(load_file(str(folder / WEIGHTS_FILE))) == set(ve_model.state_dict())


def test_check_compatible_messages(ve_model, tmp_path):
    prior = load_prior(_save(ve_model, tmp_path / "ckpt"))
    prior.check_compatible(16, "ct")
    with pytest.raises(ScoreReconError, match=r"trained on 16x16 images but got 32x32.*resample"):
        prior.check_compatible(32, "CT")
    with pytest.raises(ScoreReconError, match=r"is a CT prior but the input is MR.*default-mri"):
        prior.check_compatible(16, "MR")


def test_load_errors(ve_model, tmp_path):
    with pytest.raises(ScoreReconError, match="does not exist"):
        load_prior(tmp_path / "nowhere")
    folder = _save(ve_model, tmp_path / "ckpt")
    cfg_path = folder / CONFIG_FILE
    good = cfg_path.read_text()

    cfg_path.write_text("{not json")
    with pytest.raises(ScoreReconError, match="not valid JSON"):
        load_checkpoint(folder)

    cfg = json.loads(good)
    del cfg["sde"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ScoreReconError, match=r"lacks the key\(s\) \['sde'\]"):
        load_checkpoint(folder)

    cfg = json.loads(good)
    cfg["format_version"] = FORMAT_VERSION + 1
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ScoreReconError, match="format version"):
        load_checkpoint(folder)

    cfg = json.loads(good)
    cfg["network"]["channels"] = [8, 24, 24]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ScoreReconError, match="was edited after it was written"):
        load_checkpoint(folder)  # the checksum covers the network shape
    cfg.pop("weights_sha256")
    cfg.pop("config_sha256")
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ScoreReconError, match="integrity cannot be checked.*--trust-unverified"):
        load_checkpoint(folder)  # no checksum: refused unless trusted
    with pytest.raises(ScoreReconError, match="has shape .* expects"):
        load_checkpoint(folder, trust_unverified=True)

    cfg = json.loads(good)
    cfg["network"]["attention_levels"] = [False, False, False]
    cfg.pop("weights_sha256")
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ScoreReconError, match="missing tensor"):
        load_checkpoint(folder, trust_unverified=True)

    cfg_path.write_text(good)
    weights = folder / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ScoreReconError, match="checksum"):
        load_checkpoint(folder)
    weights.write_bytes(b"garbage")
    cfg = json.loads(good)
    cfg.pop("weights_sha256")
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ScoreReconError, match="corrupt"):
        load_checkpoint(folder, trust_unverified=True)
    weights.unlink()
    with pytest.raises(ScoreReconError, match="missing"):
        load_checkpoint(folder)


def test_default_prior_names_resolve_to_resources(ve_model, tmp_path, monkeypatch):
    _save(ve_model, tmp_path / "res" / "models" / "default-ct")
    monkeypatch.setenv("SCORERECON_RESOURCES", str(tmp_path / "res"))
    prior = load_prior("default-ct")
    assert prior.config["name"] == "default-ct" and prior.modality == "CT"
    with pytest.raises(ScoreReconError, match="default-mri is missing|models/default-mri"):
        load_prior("default-mri")


@pytest.mark.parametrize("patch", [20, 36])
def test_a_patch_size_the_network_cannot_halve_is_refused_by_name(patch):
    """Issue 24: a config's patch size of 20 or 36 for a 4-level network was 'Sizes of tensors must match' (exit 1)."""
    from ScoreReconLib.errors import ScoreReconError
    from ScoreReconLib.networks import prior_spec

    config = {"prior": {"kind": "patch", "patch_size": patch},
              "network": {"channels": [32, 64, 128, 128], "coord_channels": 2}}
    with pytest.raises(ScoreReconError, match=f"patch_size {patch} must be a multiple of 8"):
        prior_spec(config)
    config["prior"]["patch_size"] = 32
    assert prior_spec(config)["patch_size"] == 32
