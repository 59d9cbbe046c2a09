#!/usr/bin/env bash
# Snakemake runs this once, inside the environment it just made from envs/sftvsrl.yaml, from its working directory:
# the repository root, where the README runs snakemake. It installs the project there (editable).
set -euo pipefail
if ! grep -qs '^name = "sftvsrl"' pyproject.toml; then
    echo "envs/sftvsrl.yaml: run snakemake from the sftvsrl repository root (here: $PWD has no sftvsrl pyproject.toml)" >&2
    exit 1
fi
python -m pip install -e .
