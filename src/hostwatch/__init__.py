"""hostwatch: a daemon that watches hosts with ICMP and TCP probes."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    """`__version__`, read from the installed metadata when first asked for: importlib.metadata
    costs ~70 ms and a few MB, which the /metrics renderer process does without."""
    if name != "__version__":
        raise AttributeError(f"module 'hostwatch' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        found = version("hostwatch")
    except PackageNotFoundError:  # pragma: no cover - a source tree without install
        found = "0.0.0+unknown"
    globals()["__version__"] = found
    return found
