"""Target discovery from files in Prometheus' file_sd format, applied without a restart.

`discover(config)` returns the config with the targets of every file matched by its
`target_files` globs appended, validated like the rest (file:line:column on any problem). The
daemon calls it at every load and polls the matched files (`Fingerprint`) at the shortest
`refresh` of the groups; a change is applied with the same validate-then-swap rule as a reload.
"""

from __future__ import annotations

import dataclasses
import glob
import os

from hostwatch.config import ConfigError, Problem, parse_target_file
from hostwatch.model import Config, TargetConfig

__all__ = ["Fingerprint", "discover", "fingerprint", "matched_files", "refresh_interval"]

MAX_FILE_BYTES = 16 * 1024 * 1024
Fingerprint = tuple[tuple[str, int, int], ...]


def matched_files(config: Config) -> list[str]:
    """Every file the globs of `config` match now, sorted, without duplicates."""
    found: set[str] = set()
    for group in config.target_files:
        for pattern in group.patterns:
            found.update(p for p in glob.glob(pattern) if os.path.isfile(p))
    return sorted(found)


def fingerprint(config: Config) -> Fingerprint:
    """(path, mtime_ns, size) of every matched file: a change means re-read."""
    out = []
    for path in matched_files(config):
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.append((path, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError([Problem(None, "", f"cannot read it: {err.strerror}; check the file "
                                   "and its permissions", path)]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([Problem(None, "", "is larger than 16 MiB; split it", path)])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([Problem(None, "", "is not UTF-8 text", path)]) from None


def discover(config: Config) -> Config:
    """`config` plus the discovered targets; ConfigError listing the problems of every file."""
    if not config.target_files:
        return config
    taken = {t.name: str(t.source or config.source) for t in config.targets}
    found: list[TargetConfig] = []
    problems: list[Problem] = []
    for group in config.target_files:
        for path in sorted({p for pattern in group.patterns for p in glob.glob(pattern)
                            if os.path.isfile(p)}):
            try:
                targets = parse_target_file(_read(path), path, group, taken)
            except ConfigError as err:
                problems.extend(err.problems)
                continue
            found.extend(targets)
            taken.update((t.name, str(t.source)) for t in targets)
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(config, targets=config.targets + tuple(found))


def refresh_interval(config: Config) -> float | None:
    """How often to poll the files: the shortest `refresh` of the groups (None: no groups)."""
    return min((g.refresh for g in config.target_files), default=None)
