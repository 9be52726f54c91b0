#!/usr/bin/env bash
# Regenerate Resources/models/*/MODEL_CARD.md from each model's config.json, tuned.json and loss log.
set -euo pipefail
cd "$(dirname "$0")/.."
python scripts/write_model_card.py Resources/models/default-ct --grid samples.png --limits "- Trained on ONE patient (the InVesalius example head CT, 108 axial slices, resliced to 169 isotropic slices and sliced along all three axes): a head-only, single-patient prior. It does not represent other anatomy, other scanners, kernels, doses or fields of view; expect it to fall behind TV on images unlike that head (e.g. on the held-out neck slice in benchmarks/RESULTS.md).
- 128×128 only, pixels of about 1.9 mm (a 245 mm field of view); resample other sizes (the CLI's --size, the Slicer module's automatic resampling).
- 10,500 training steps of a 4.3 M-parameter network (the paper used NCSN++ with far more parameters, data and steps): unconditional samples are plausible at a coarse level, not anatomically faithful in detail.
- Training intensities were windowed to [-1000, 2000] HU, so metal (> 2000 HU) was never seen: metal-ct relies on the metal trace being excluded from the data.
- The InVesalius example is labelled GPL-2 by its Debian package; whether trained weights are a derived work is not settled — check before redistributing the weights under another licence."
python scripts/write_model_card.py Resources/models/default-mri --grid samples.png --limits "- Trained on two T1 templates: Colin27 (one subject scanned 27 times and averaged, with scalp) and the MNI ICBM152 2009a average (152 subjects, skull-stripped as shipped in nilearn). Averages are smoother and less noisy than single acquisitions; real single-coil k-space, other contrasts (T2, FLAIR), other anatomy and pathology are not represented.
- Magnitude images only (real-valued, non-negative); no phase, no coil sensitivities (single-coil).
- 128×128 only, 1 mm training resolution with the head filling most of the field of view; each volume is scaled so its 99.5th percentile of non-zero voxels is 1.
- 10,500 training steps of a 4.3 M-parameter network: on the held-out ITK T1 head (8-bit, 2×3 mm, with scalp) it does not beat compressed sensing at every setting (benchmarks/RESULTS.md)."
