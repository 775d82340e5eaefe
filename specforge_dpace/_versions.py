"""Installed distribution versions, for provenance (bench) and diagnostics (doctor)."""

from __future__ import annotations

from typing import Iterable, Optional


def package_version(distribution: str) -> Optional[str]:
    """The installed version of ``distribution``, or None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def package_versions(distributions: Iterable[str]) -> dict[str, Optional[str]]:
    return {name: package_version(name) for name in distributions}
