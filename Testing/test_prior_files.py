"""Prior (model) folders on load: checksums, config values and the tuned.json sidecar are checked."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from helpers import assert_no_crash, assert_refused, fuzz_json, run

CONFIG_CASES = {
    "channels-str": ("network", {"channels": "8,8"}), "channels-huge": ("network", {"channels": [8, 1 << 20]}),
    "levels-many": ("network", {"channels": [8] * 40, "attention_levels": [False] * 40}),
    "res-blocks-str": ("network", {"num_res_blocks": "one"}), "heads-zero": ("network", {"num_head_channels": 0}),
    "sde-n-huge": ("sde", {"N": 1e11}), "sde-sigma-str": ("sde", {"sigma_max": "big"}),
    "sde-list": ("sde", [1]), "image-size-str": ("image_size", "16"), "image-size-huge": ("image_size", 1 << 30),
    "modality-int": ("modality", 5), "normalization-nan": ("normalization", {"kind": "hu", "low": 0, "high": "x"}),
    "recommended-list": ("recommended", [1, 2]), "recommended-lam-nan": ("recommended", {"lam": float("nan")}),
    # issue 24: patch sizes the network cannot halve, a huge patch, a text default size
    "patch-size-7": ("prior", {"kind": "patch", "patch_size": 7}),
    "patch-size-huge": ("prior", {"kind": "patch", "patch_size": 4096}),
    "default-size-str": ("prior", {"kind": "patch", "patch_size": 8, "default_size": "abc"}),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_model_config_values(tiny_ct_16, tmp_path, capsys, case):
    folder = tmp_path / "m"
    shutil.copytree(tiny_ct_16, folder)
    cfg = json.loads((folder / "config.json").read_text())
    key, value = CONFIG_CASES[case]
    cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    (folder / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    out.mkdir()
    t0 = time.perf_counter()
    for trust in ([], ["--trust-unverified"]):  # edited: refused by its checksum, and by its values when trusted
        cfg.pop("config_sha256", None) if trust else None
        (folder / "config.json").write_text(json.dumps(cfg))
        assert_refused(["sample", "--model", folder, "--output", out / "s.png", "--size", "16", "--n", "1",
                        "--steps", "2", *trust], capsys, out)
    assert time.perf_counter() - t0 < 20  # refused before allocating


@pytest.mark.parametrize("content", ['{"tasks": 3}', '{"tasks": {"sparse-ct": {"proximal": {"lam": NaN}}}}',
                                     '{"tasks": {"sparse-ct": 5}}', "[]", "{bad"])
def test_bad_tuned_sidecar(tiny_ct_16, tmp_path, capsys, content):
    folder = tmp_path / "m"
    shutil.copytree(tiny_ct_16, folder)
    (folder / "tuned.json").write_text(content)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(["sample", "--model", folder, "--output", out / "s.png", "--size", "16", "--n", "1"], capsys, out,
                   "tuned.json")


def test_model_without_checksums_needs_trust(tiny_ct_16, tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(tiny_ct_16, folder)
    cfg = json.loads((folder / "config.json").read_text())
    for key in ("weights_sha256", "config_sha256"):
        cfg.pop(key)
    (folder / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    out.mkdir()
    argv = ["sample", "--model", folder, "--output", out / "s.png", "--size", "16", "--n", "1", "--steps", "2",
            "--quiet"]
    assert_refused(argv, capsys, out, "--trust-unverified")
    rc, _ = run(argv + ["--trust-unverified"], capsys)
    assert rc == 0 and (out / "s.png").is_file()
    from ScoreReconLib.networks import load_checkpoint, sign_checkpoint

    sign_checkpoint(folder)
    load_checkpoint(folder)  # signed: loads without trust


def test_shipped_priors_are_signed():
    from ScoreReconLib.networks import config_digest
    from ScoreReconLib.resources import resource_path

    for name in ("default-ct", "default-mri"):
        cfg = json.loads((resource_path("models", name) / "config.json").read_text())
        assert cfg["config_sha256"] == config_digest(cfg)


def test_fuzz_model_configs(tiny_ct_16, tmp_path, capsys):
    rng = np.random.default_rng(2)
    cfg = json.loads((tiny_ct_16 / "config.json").read_text())
    out = tmp_path / "out"
    out.mkdir()
    for k in range(25):
        folder = tmp_path / f"m{k}"
        shutil.copytree(tiny_ct_16, folder)
        bad = fuzz_json(cfg, rng)
        bad.pop("config_sha256", None) if isinstance(bad, dict) else None
        (folder / "config.json").write_text(json.dumps(bad) if k % 5 else json.dumps(bad)[: 50 + k])
        assert_no_crash(["sample", "--model", folder, "--output", out / "s.png", "--size", "16", "--n", "1",
                          "--steps", "2", "--quiet", "--trust-unverified"], capsys)
        (out / "s.png").unlink(missing_ok=True)
