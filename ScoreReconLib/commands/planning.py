"""What ``scorerecon reconstruct`` will do before it does anything: the jobs (input, outputs, reference) with every
path checked, the torchrun shard, and the staging that moves outputs into place only when all succeeded."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import (
    IMAGE_SUFFIXES,
    WRITE_SUFFIXES,
    check_writable_suffix,
)
from ..errors import ScoreReconError
from ..measurement import Measurement
from ..utils import check_output_folder, check_output_path, make_temp_beside


@dataclass
class Job:
    """One measurement file to reconstruct and where its results go."""

    name: str
    input: Path
    output: Path
    std_output: Path | None = None
    reference: Path | None = None
    measurement: Measurement | None = None
    reference_x: torch.Tensor | None = None
    complex_output: Path | None = None
    residual_output: Path | None = None
    disagreement_output: Path | None = None


def shard(items: list, rank: int, world: int) -> list:
    """The items rank ``rank`` of ``world`` processes: ``items[rank::world]``."""
    return list(items[rank::world])


def _strip_suffix(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES + (".npz",), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _find_reference(folder: Path, name: str) -> Path:
    hits = sorted(p for p in folder.iterdir()
                  if _strip_suffix(p) == name and (p.is_dir() or p.suffix) and not p.name.lower().endswith(".npz"))
    if not hits:
        raise ScoreReconError(f"no reference image named {name}.* in {folder}; add it or drop --reference")
    return hits[0]


def plan_jobs(args: argparse.Namespace) -> tuple[list[Job], bool]:
    """Validate paths and list the jobs; returns (jobs, batch_mode). Writes nothing."""
    inp, out = Path(args.input), Path(args.output)
    if not inp.exists():
        raise ScoreReconError(f"input {inp} does not exist; check the path")
    ref = Path(args.reference) if args.reference else None
    if ref is not None and not ref.exists():
        raise ScoreReconError(f"reference {ref} does not exist; check the path")
    std = Path(args.std_output) if args.std_output else None
    if args.metrics_json:
        check_output_path(args.metrics_json, "--metrics-json")
    resid = Path(args.residual_output) if getattr(args, "residual_output", None) else None
    disagree = Path(args.disagreement_output) if getattr(args, "disagreement_output", None) and \
        args.method == "score" else None
    if getattr(args, "disagreement_output", None) and args.method != "score":
        print(f"scorerecon reconstruct: note: --disagreement-output needs --method score (it compares the score "
              f"image with the classical one using the posterior std); not written for --method {args.method}",
              file=sys.stderr, flush=True)
    cplx = Path(args.complex_output) if getattr(args, "complex_output", None) else None
    if cplx is not None and (inp.is_dir() or cplx.suffix.lower() != ".npy" or cplx.is_dir()):
        raise ScoreReconError("--complex-output takes one .npy file name and one measurement file (not a folder)")
    if cplx is not None:
        check_output_path(cplx, "--complex-output")
    if not inp.is_dir():
        if out.is_dir():
            raise ScoreReconError(f"--output {out} is a folder; give an image file name such as {out / 'recon.nrrd'}")
        check_writable_suffix(out)
        check_output_path(out, "--output")
        if std is not None:
            check_writable_suffix(std)
            check_output_path(std, "--std-output")
        if resid is not None:
            if resid.suffix.lower() != ".npz" or resid.is_dir():
                raise ScoreReconError(f"--residual-output {resid} must be a .npz file name")
            check_output_path(resid, "--residual-output")
        if disagree is not None:
            check_writable_suffix(disagree)
            check_output_path(disagree, "--disagreement-output")
        return [Job(_strip_suffix(inp), inp, out, std, ref, complex_output=cplx, residual_output=resid,
                    disagreement_output=disagree)], False
    files = sorted(p for p in inp.iterdir() if p.is_file() and p.suffix.lower() == ".npz")
    if not files:
        raise ScoreReconError(f"folder {inp} holds no .npz measurement files; make them with 'scorerecon simulate'")
    if out.exists() and not out.is_dir():
        raise ScoreReconError(f"--input is a folder, so --output must be a folder too, but {out} is a file")
    if std is not None and std.exists() and not std.is_dir():
        raise ScoreReconError(f"--input is a folder, so --std-output must be a folder too, but {std} is a file")
    if ref is not None and not ref.is_dir():
        raise ScoreReconError(f"--input is a folder, so --reference must be a folder of NAME.* images, not {ref}")
    if resid is not None and resid.exists() and not resid.is_dir():
        raise ScoreReconError(f"--input is a folder, so --residual-output must be a folder too, but {resid} is a file")
    check_output_folder(out, "--output")
    if std is not None:
        check_output_folder(std, "--std-output")
    if resid is not None:
        check_output_folder(resid, "--residual-output")
    if disagree is not None:
        check_output_folder(disagree, "--disagreement-output")
    suffix = args.output_suffix if args.output_suffix.startswith(".") else "." + args.output_suffix
    if suffix.lower() not in WRITE_SUFFIXES:
        raise ScoreReconError(f"--output-suffix {suffix} cannot be written; use one of {', '.join(WRITE_SUFFIXES)}")
    jobs = []
    for f in files:
        name = _strip_suffix(f)
        jobs.append(Job(name, f, out / f"{name}{suffix}", None if std is None else std / f"{name}_std{suffix}",
                        None if ref is None else _find_reference(ref, name),
                        residual_output=None if resid is None else resid / f"{name}_residual.npz",
                        disagreement_output=None if disagree is None else disagree / f"{name}_disagreement{suffix}"))
    return jobs, True


class Staging:
    """Outputs written to temporary files beside their targets and moved into place only by :meth:`commit`,
    so a run that fails (or is stopped) on its third file leaves none of the first two behind."""

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path]] = []

    def path_for(self, final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_beside(final, "".join(final.suffixes))
        self.staged.append((tmp, final))
        return tmp

    def commit(self) -> None:
        for tmp, final in self.staged:
            os.replace(tmp, final)
        self.staged = []

    def discard(self) -> None:
        for tmp, _ in self.staged:
            if tmp.exists():
                tmp.unlink()
        self.staged = []
