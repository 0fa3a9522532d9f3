"""What produced an output: library versions, the code revision, the machine's device."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path


def version() -> str:
    """llm-dit's version: pyproject.toml holds the one literal, the package metadata carries it here
    (``llm_dit.__version__``, ``llm-dit --version``, run records and the web API all read this)."""
    try:
        return metadata.version("llm-dit")
    except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
        return "0+unknown"


@functools.cache
def versions() -> dict[str, str]:
    out = {"llm-dit": version()}
    for pkg in ("torch", "diffusers", "transformers", "accelerate", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@functools.cache
def git_revision() -> str | None:
    """The commit of the llm-dit checkout this code runs from (``+dirty`` if modified), if any."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def provenance() -> dict:
    return {"versions": versions(), "git_revision": git_revision()}
