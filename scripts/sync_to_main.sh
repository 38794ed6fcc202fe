#!/usr/bin/env bash
# Copy this worktree (without .git, caches, reports/conformance/_work) into /work/main/.wtcuda for the device tool.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
rm -rf /work/main/.wtcuda && mkdir -p /work/main/.wtcuda
tar -C "$src" --exclude=.git --exclude=__pycache__ --exclude=.mypy_cache --exclude=.ruff_cache \
    --exclude=.pytest_cache --exclude=.hypothesis --exclude=reports/conformance/_work -cf - . | tar -C /work/main/.wtcuda -xf -
du -sh /work/main/.wtcuda
