"""What a fence is: one use of a library's private API, the versions it was read in, and a
probe that tells, at start, whether the installed library still has what it needs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

log = logging.getLogger("proxy.compat")

Version = tuple[int, int]


class CompatError(RuntimeError):
    """A library changed under a fence that has no public path to fall back to."""


@dataclass(frozen=True, slots=True)
class Fence:
    name: str  # what the gateway uses it for, e.g. "aiohttp edge"
    module: str  # the fence's module, for the message: where to look when it breaks
    distribution: str  # the library's distribution name, for its installed version
    checked: tuple[Version, Version]  # [low, high): the versions read for this fence
    # What the installed library lacks of what the fence uses ([] when it is all there).
    probe: Callable[[], list[str]]
    # What the gateway does instead when the probe fails; None: it refuses to start.
    fallback: str | None = None


def installed(distribution: str) -> Version | None:
    """The installed (major, minor) of a distribution; None when it cannot be told."""
    try:
        parts = metadata.version(distribution).split(".")
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (metadata.PackageNotFoundError, ValueError, IndexError):
        return None


def run(fence: Fence) -> list[str]:
    """Probe one fence: raise `CompatError` when it has no fallback and the library lacks
    what it uses; else return the warnings (also logged): a fallback taken, a version that
    was never checked."""
    try:
        missing = fence.probe()
    except Exception as e:  # noqa: BLE001 - a probe that breaks is a library that changed
        missing = [f"its probe failed ({type(e).__name__}: {e})"]
    version = installed(fence.distribution)
    shown = f"{fence.distribution} " + ("unknown" if version is None else
                                         f"{version[0]}.{version[1]}")
    warnings = []
    if missing:
        what = f"{shown} lacks what {fence.module} uses: {'; '.join(missing)}"
        if fence.fallback is None:
            raise CompatError(f"{fence.name}: {what}; {fence.module} needs updating for it")
        warnings.append(f"{fence.name}: {what}; {fence.fallback}")
    low, high = fence.checked
    if version is not None and not low <= version < high:
        warnings.append(f"{fence.name}: {shown} was not checked against {fence.module} "
                        f"(checked: {low[0]}.{low[1]} to before {high[0]}.{high[1]})")
    for warning in warnings:
        log.warning("compat: %s", warning)
    return warnings
