"""BART 0.8 (Berkeley Advanced Reconstruction Toolbox) as an optional peer of the MRI benchmarks.

Runs ``bart ecalib`` / ``bart pics`` on the k-space arrays the benchmarks already have, in our conventions:
k-space ``y`` complex64 ``(C, N, N)`` centred (DC at index N//2) under the orthonormal centred 2-D FFT
(``ScoreReconLib.operators.mri.fft2c``), axes (ky = rows, kx = columns), zeros where unmeasured; coil maps
``(C, N, N)``; images ``(N, N)``. BART's dims are (x = readout, y, z, coil, map, ...) in column-major order,
so our ``(C, Ny, Nx)`` array is BART's ``(Nx, Ny, 1, C)`` transposed; BART's centred FFT in ``pics`` is the
same unitary transform as ours (checked by ``Testing/test_bart_peer.py``, fully sampled: > 100 dB).

``pics`` runs with ``-w 1`` (no data rescaling: the image and the regularisation weight are in our units;
BART's default divides the data by an estimated scale, the weight then acts on the rescaled problem).

Getting BART without root (``--install-bart`` of a benchmark, or ``python benchmarks/bart_peer.py
--install-bart``): ``apt-get download`` of ``bart`` and the shared libraries it needs, ``dpkg -x`` into
``$SCORERECON_CACHE/bart`` (default ``~/.cache/scorerecon/bart``); it then runs with ``LD_LIBRARY_PATH`` on
the extracted library folders. :func:`find_bart` looks for an explicit path, ``$BART_PATH``, ``bart`` on
``PATH``, then that folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Debian packages extracted by :func:`install_bart_locally`: bart and the libraries a bare system may lack
PACKAGES = ("bart", "libfftw3-single3", "liblapacke", "liblapack3", "libblas3", "libtmglib3", "libgfortran5")
#: BART's number of dims (a .hdr lists this many)
BART_DIMS = 16
#: ``pics`` regularisers: our name → BART's ``-R`` letter (None: no ``-R``)
REGULARIZERS = {"wavelet": "W", "tv": "T", "l2": "Q", "none": None}
MISSING = ("BART is not installed: pass --install-bart to the benchmark (apt-get download + dpkg -x into "
           "~/.cache/scorerecon/bart, no root needed), 'apt-get install bart', or set BART_PATH to the bart binary")


# ------------------------------------------------------------------------------------------ CFL I/O
def write_cfl(base: str | Path, array: np.ndarray) -> None:
    """Write ``array`` (dims in BART's order, at most 16) as ``base.hdr`` + ``base.cfl`` (complex64, column-major)."""
    a = np.asarray(array)
    if a.ndim > BART_DIMS:
        raise ValueError(f"BART arrays have at most {BART_DIMS} dims, got {a.ndim}")
    dims = list(a.shape) + [1] * (BART_DIMS - a.ndim)
    Path(f"{base}.hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in dims) + "\n")
    a.astype("<c8").ravel(order="F").tofile(f"{base}.cfl")


def read_cfl(base: str | Path) -> np.ndarray:
    """Read ``base.hdr`` + ``base.cfl`` → complex64 array in BART's dim order, trailing singleton dims dropped."""
    lines = Path(f"{base}.hdr").read_text().splitlines()
    try:
        dims = [int(d) for d in lines[lines.index("# Dimensions") + 1].split()]
    except (ValueError, IndexError):
        raise ValueError(f"{base}.hdr is not a BART header ('# Dimensions' then the dims)") from None
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    count = int(np.prod(dims))
    data = np.fromfile(f"{base}.cfl", dtype="<c8", count=count)
    if data.size != count:
        raise ValueError(f"{base}.cfl holds {data.size} values, its header says {count}")
    return data.reshape(dims, order="F").astype(np.complex64)


def to_bart(a: np.ndarray) -> np.ndarray:
    """Our ``(C, Ny, Nx)`` k-space / maps (or an ``(Ny, Nx)`` image) → BART's ``(Nx, Ny, 1, C)`` (``(Nx, Ny)``)."""
    a = np.asarray(a, dtype=np.complex64)
    if a.ndim == 2:
        return a.T
    if a.ndim != 3:
        raise ValueError(f"expected (C, N, N) or (N, N), got shape {a.shape}")
    return a.transpose(2, 1, 0)[:, :, None, :]


def from_bart(a: np.ndarray, coils: bool) -> np.ndarray:
    """BART's ``(Nx, Ny, 1, C, ...)`` → our ``(C, Ny, Nx)`` (first map set); ``coils=False``: an ``(Ny, Nx)`` image."""
    a = a.reshape(a.shape + (1,) * (5 - a.ndim))
    if coils:
        return np.ascontiguousarray(a[:, :, 0, :, 0].transpose(2, 1, 0))
    return np.ascontiguousarray(a[:, :, 0, 0, 0].T)


# --------------------------------------------------------------------------------------- the binary
@dataclass
class BartRunner:
    """A ``bart`` binary and the environment it needs (``LD_LIBRARY_PATH`` for a local extraction)."""

    binary: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, args: Sequence[str], threads: int | None = None, cwd: str | Path | None = None) -> float:
        """Run ``bart *args``; returns its wall seconds; a failure raises RuntimeError with BART's stderr."""
        env = {**os.environ, **self.env}
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(int(threads))
        t0 = time.perf_counter()
        proc = subprocess.run([str(self.binary), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"'bart {' '.join(map(str, args))}' failed (exit {proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()}")
        return seconds

    def version(self) -> str:
        """``bart version`` (e.g. ``v0.8.00``)."""
        env = {**os.environ, **self.env}
        proc = subprocess.run([str(self.binary), "version"], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.binary} does not run: {(proc.stderr or proc.stdout).strip()}")
        return proc.stdout.strip()


def cache_folders() -> list[Path]:
    """Where :func:`install_bart_locally` puts BART (first) and :func:`find_bart` looks for it."""
    folders = [Path("~/.cache/scorerecon").expanduser() / "bart"]
    if os.environ.get("SCORERECON_CACHE"):
        folders.insert(0, Path(os.environ["SCORERECON_CACHE"]).expanduser() / "bart")
    return folders


def _local_runner(root: Path) -> BartRunner | None:
    """Runner for a ``dpkg -x`` extraction at ``root`` (its library folders on ``LD_LIBRARY_PATH``), if any."""
    binary = root / "usr" / "bin" / "bart"
    if not binary.is_file():
        return None
    libs = sorted({str(p.parent) for p in (root / "usr" / "lib").rglob("*.so*")})
    old = os.environ.get("LD_LIBRARY_PATH")
    return BartRunner(binary, {"LD_LIBRARY_PATH": os.pathsep.join(libs + ([old] if old else []))})


def _works(runner: BartRunner) -> bool:
    try:
        runner.version()
    except (OSError, RuntimeError):
        return False
    return True


def find_bart(explicit: str | Path | None = None) -> BartRunner | None:
    """A working BART: ``explicit`` (a binary, or a folder holding ``bart`` / a ``dpkg -x`` extraction), else
    ``$BART_PATH`` (same), else ``bart`` on ``PATH``, else the cache folders; None if none runs.

    An explicit path or ``$BART_PATH`` that does not run raises RuntimeError (a typo should not fall back)."""
    for given in (explicit, os.environ.get("BART_PATH")):
        if not given:
            continue
        p = Path(given).expanduser()
        runner = _local_runner(p) if p.is_dir() and not (p / "bart").is_file() else None
        runner = runner or BartRunner(p / "bart" if p.is_dir() else p)
        if not _works(runner):
            raise RuntimeError(f"{given} is not a working bart binary; {MISSING}")
        return runner
    on_path = shutil.which("bart")
    if on_path and _works(BartRunner(Path(on_path))):
        return BartRunner(Path(on_path))
    for folder in cache_folders():
        runner = _local_runner(folder)
        if runner is not None and _works(runner):
            return runner
    return None


def require_bart(bart: BartRunner | None = None) -> BartRunner:
    """``bart`` or :func:`find_bart`'s; RuntimeError naming ``--install-bart`` / ``apt-get install bart`` if none."""
    runner = bart or find_bart()
    if runner is None:
        raise RuntimeError(MISSING)
    return runner


def install_bart_locally(dest: Path | None = None) -> Path:
    """``apt-get download`` BART and its libraries, ``dpkg -x`` them into ``dest`` (default: the first of
    :func:`cache_folders`); no root needed. Returns the binary; RuntimeError if it still does not run."""
    dest = Path(dest or cache_folders()[0])
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"--install-bart needs {tool} (Debian/Ubuntu); install BART yourself and set BART_PATH")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for pkg in PACKAGES:  # one by one: a library another release names differently must not stop the rest
            proc = subprocess.run(["apt-get", "download", pkg], cwd=tmp, capture_output=True, text=True)
            if proc.returncode != 0 and pkg == "bart":
                raise RuntimeError(f"'apt-get download bart' failed: {proc.stderr.strip()}")
        for deb in sorted(Path(tmp).glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(dest)], check=True, capture_output=True)
    runner = _local_runner(dest)
    assert runner is not None
    ldd = subprocess.run(["ldd", str(runner.binary)], capture_output=True, text=True, env={**os.environ, **runner.env})
    missing = [line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line]
    if missing or not _works(runner):
        raise RuntimeError(f"BART extracted to {dest} but does not run; missing libraries: {', '.join(missing) or '?'}")
    return runner.binary


def add_bart_arguments(parser: argparse.ArgumentParser) -> None:
    """``--bart PATH`` and ``--install-bart`` for a benchmark that runs BART as a peer."""
    parser.add_argument("--bart", default=None,
                        help="bart binary (default: $BART_PATH, bart on PATH, ~/.cache/scorerecon/bart)")
    parser.add_argument("--install-bart", action="store_true",
                        help="apt-get download + dpkg -x BART 0.8 into ~/.cache/scorerecon/bart (no root) first")


def bart_from_args(args: argparse.Namespace) -> BartRunner | None:
    """The runner the options of :func:`add_bart_arguments` ask for (installing first with ``--install-bart``)."""
    if getattr(args, "install_bart", False) and find_bart(args.bart) is None:
        install_bart_locally()
    return find_bart(args.bart)


# ---------------------------------------------------------------------------------- reconstructions
def _check_kspace(y: np.ndarray, name: str = "y") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 3 or y.shape[1] != y.shape[2]:
        raise ValueError(f"{name} must be (C, N, N), got shape {y.shape}")
    return y


def ecalib(y: np.ndarray, calib_width: int | None = None, crop: float | None = None, *,
           bart: BartRunner | None = None, threads: int | None = None) -> tuple[np.ndarray, float]:
    """ESPIRiT maps by ``bart ecalib -m1`` (first map set) → ``(maps (C, N, N) complex64, seconds)``.

    ``calib_width``: ``-r`` (BART's default: the fully sampled centre, at most 24); ``crop``: ``-c`` (BART's
    default 0.8 zeroes the maps where the eigenvalue is below it: outside the object, but with a 10-line 8x
    centre at 128² also inside it (|S_est^H x_c| vs |x| 36 dB; ``crop=0``: 61 dB, as ``coils.espirit_maps``))."""
    runner = require_bart(bart)
    y = _check_kspace(y)
    args = ["ecalib", "-m1"]
    if calib_width is not None:
        args += ["-r", str(int(calib_width))]
    if crop is not None:
        args += ["-c", str(float(crop))]
    with tempfile.TemporaryDirectory(prefix="bart-") as tmp:
        write_cfl(Path(tmp) / "ksp", to_bart(y))
        seconds = runner.run([*args, "ksp", "maps"], threads=threads, cwd=tmp)
        maps = read_cfl(Path(tmp) / "maps")
    return from_bart(maps, coils=True), seconds


def pics(y: np.ndarray, maps: np.ndarray, regularizer: str = "wavelet", weight: float = 0.0,
         iterations: int = 100, real: bool = False, *, bart: BartRunner | None = None, threads: int | None = None,
         cycle_spin: bool = True, extra: Sequence[str] = ()) -> tuple[np.ndarray, float]:
    """``bart pics -w 1`` → ``(image (N, N) complex64, seconds)`` in the units of the image that made ``y``.

    ``regularizer``: ``"wavelet"`` (``-R W:3:0:weight``, l1 Daubechies wavelets over x, y; FISTA),
    ``"tv"`` (``-R T:3:0:weight``, isotropic TV over x, y; ADMM), ``"l2"`` (``-R Q:weight``, Tikhonov; CG) or
    ``"none"`` (CG on the normal equations, early-stopped by ``iterations``). Objective
    ``½‖P F S x − y‖² + weight·R(x)`` on the unscaled data. ``real``: BART's real-value constraint ``-c``.
    ``cycle_spin=False`` adds ``-n`` (no random wavelet shifts). ``extra``: more ``pics`` flags."""
    runner = require_bart(bart)
    y, maps = _check_kspace(y), _check_kspace(maps, "maps")
    if maps.shape != y.shape:
        raise ValueError(f"maps {maps.shape} and k-space {y.shape} differ in shape")
    if regularizer not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {regularizer!r}; choose one of {', '.join(REGULARIZERS)}")
    args = ["pics", "-w", "1", "-i", str(int(iterations))]
    letter = REGULARIZERS[regularizer]
    if letter == "Q":
        args += ["-R", f"Q:{float(weight):.8g}"]
    elif letter is not None:
        args += ["-R", f"{letter}:3:0:{float(weight):.8g}"]
    if real:
        args.append("-c")
    if not cycle_spin:
        args.append("-n")
    args += list(extra)
    with tempfile.TemporaryDirectory(prefix="bart-") as tmp:
        write_cfl(Path(tmp) / "ksp", to_bart(y))
        write_cfl(Path(tmp) / "sens", to_bart(maps))
        seconds = runner.run([*args, "ksp", "sens", "img"], threads=threads, cwd=tmp)
        img = read_cfl(Path(tmp) / "img")
    return from_bart(img, coils=False), seconds


def sense(y: np.ndarray, maps: np.ndarray, iterations: int = 15, *, bart: BartRunner | None = None,
          threads: int | None = None) -> tuple[np.ndarray, float]:
    """SENSE by ``bart pics`` with no regulariser: ``iterations`` CG steps from 0 (as ``coils.sense_reconstruct``)."""
    return pics(y, maps, "none", 0.0, iterations, bart=bart, threads=threads)


# ------------------------------------------------------------------------------------------- check
def psnr(x: np.ndarray, ref: np.ndarray) -> float:
    """PSNR in dB of ``x`` against ``ref`` with the peak ``max|ref|`` (complex arrays)."""
    mse = float(np.mean(np.abs(np.asarray(x, np.complex128) - ref) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(float(np.max(np.abs(ref))) ** 2 / mse)


def main(argv: Sequence[str] | None = None) -> None:
    """``--install-bart`` if asked, then a fully sampled convention check and the seconds per call."""
    ap = argparse.ArgumentParser(description="BART peer: install and check conventions / timings")
    add_bart_arguments(ap)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    runner = bart_from_args(args)
    if runner is None:
        raise SystemExit(MISSING)
    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    import torch

    from ScoreReconLib.coils import synthetic_maps
    from ScoreReconLib.operators.mri import equispaced_mask, fft2c

    n, t = args.size, args.threads
    x = test_image(n)
    s = synthetic_maps(n, args.coils, seed=1)[0].numpy()
    y = fft2c(torch.from_numpy(s * x)).numpy()
    mask = equispaced_mask(n, 8, 0.08).numpy()
    print(f"{runner.binary} {runner.version()}, {n}² × {args.coils} coils, {t} thread(s)")
    rec, sec = sense(y, s, 5, bart=runner, threads=t)
    print(f"fully sampled, sense 5 CG, true maps:  PSNR {psnr(rec, x):6.1f} dB  {sec:5.2f} s")
    for name, ksp, crop in (("fully sampled", y, None), ("8x equispaced", y * mask, None),
                            ("8x equispaced", y * mask, 0.0)):
        maps, sec = ecalib(ksp, crop=crop, bart=runner, threads=t)
        comb = np.abs((maps.conj() * ifft(y)).sum(0))
        print(f"{name}, ecalib -m1 crop {crop}: PSNR |S^H x_c| vs |x| {psnr(comb, np.abs(x)):6.1f} dB  {sec:5.2f} s")
    for reg in ("wavelet", "tv"):
        rec, sec = pics(y * mask, s, reg, 1e-3, args.iterations, bart=runner, threads=t)
        print(f"8x equispaced, pics {reg} {args.iterations} it λ 1e-3: PSNR {psnr(rec, x):6.1f} dB  {sec:5.2f} s")


def test_image(n: int) -> np.ndarray:
    """A smooth complex test image (N, N) complex64: a tapered ellipse inside the field of view, linear phase."""
    g = (np.arange(n) - n // 2) / (n / 2)
    yy, xx = np.meshgrid(g, g, indexing="ij")
    mag = np.sqrt(np.clip(1 - (xx / 0.8) ** 2 - (yy / 0.65) ** 2, 0, None)) * (1 + 0.3 * xx)
    return (mag * np.exp(1j * (1.5 * xx - yy))).astype(np.complex64)


def ifft(y: np.ndarray) -> np.ndarray:
    """Our centred orthonormal inverse 2-D FFT over the last two axes (numpy twin of ``ifft2c``)."""
    k = np.fft.ifftshift(y, axes=(-2, -1))
    return np.fft.fftshift(np.fft.ifft2(k, axes=(-2, -1), norm="ortho"), axes=(-2, -1))


if __name__ == "__main__":
    main()
