"""The libyaml fast path of the config loader gives exactly what PyYAML alone gives: the same
Config, the same sources, the same errors, and no crash on absurd nesting."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostwatch import config
from hostwatch.config import ConfigError, parse_config

CONFIGS = Path(__file__).parent / "configs"
YAML_CHARS = " \n-:{}[],'\"#abc01.!&*|>?%@`\\\t"


def _outcome(text: str) -> tuple[str, object]:
    """What parse_config makes of `text`: the Config with every target's source, or the
    error text."""
    try:
        parsed = parse_config(text, "t.yml")
    except ConfigError as err:
        return "error", str(err)
    return "config", (parsed, [t.source for t in parsed.targets])


def _pure(text: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, object]:
    with monkeypatch.context() as m:
        m.setattr(config, "_FAST_LOADER", config._Loader)
        return _outcome(text)


def _generated(count: int) -> str:
    lines = ["defaults: {interval: 2s, labels: {site: x}}", "targets:"]
    for i in range(count):
        lines += [f"  - name: t{i}", f"    host: 127.0.{i // 250}.{1 + i % 250}",
                  "    probes:", "      icmp:", f"      tcp: {{port: {1 + i}}}"]
    return "\n".join(lines) + "\n"


@pytest.mark.skipif(not config._LIBYAML, reason="PyYAML built without libyaml")
class TestSameAsPyYAML:
    @pytest.mark.parametrize("name", ["full.yml", "several-errors.yml", "timeout-error.yml"])
    def test_fixture_files(self, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """The test fixtures: same Config and sources, or the same messages."""
        text = (CONFIGS / name).read_text()
        assert _pure(text, monkeypatch) == _outcome(text)

    def test_many_targets(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """500 targets, block style: identical down to each target's line and column."""
        text = _generated(500)
        assert _pure(text, monkeypatch) == _outcome(text)

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=YAML_CHARS, max_size=40))
    def test_any_text(self, text: str) -> None:
        """Arbitrary YAML-ish text: accepted alike (with the same Config) or refused alike
        (with the same message). Tabs, where libyaml is laxer, go to PyYAML directly."""
        with pytest.MonkeyPatch.context() as monkeypatch:
            assert _pure("targets:\n" + text, monkeypatch) == _outcome("targets:\n" + text)
            assert _pure(text, monkeypatch) == _outcome(text)


class TestNesting:
    @pytest.mark.parametrize("opening", ["[", "{"])
    def test_million_levels_is_an_error_not_a_crash(self, opening: str) -> None:
        """1,000,000 nested brackets: the depth message, in a child process so that a crash
        (libyaml's composer recursed to a segfault at 100,000) fails the test cleanly."""
        code = ("from hostwatch.config import parse_config, ConfigError\n"
                f"try:\n    parse_config({opening!r} * 1_000_000, 'deep.yml')\n"
                "except ConfigError as err:\n    print(err)\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120, check=False)
        assert 0 == done.returncode, done.stderr
        assert "nests deeper than 64 levels" in done.stdout


class TestParsedInAChild:
    """Files of `_PARSE_IN_CHILD_CHARS` and more are parsed in a forked child; sync and async
    loaders give what parse_config gives, errors included, and leave no child behind."""

    def _big(self, tmp_path: Path, broken: bool) -> tuple[Path, str]:
        text = _generated(3_300)
        if broken:
            text = text.replace("    host: 127.0.5.1\n", "    host: 127.0.5.1\n    colour: red\n")
        assert len(text) >= config._PARSE_IN_CHILD_CHARS
        path = tmp_path / "big.yml"
        path.write_text(text)
        return path, text

    def test_same_config(self, tmp_path: Path) -> None:
        path, text = self._big(tmp_path, broken=False)
        expected = parse_config(text, str(path))
        assert expected == config.load_config(path)
        assert expected == asyncio.run(config.load_config_async(path))
        with pytest.raises(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)

    def test_same_error(self, tmp_path: Path) -> None:
        path, text = self._big(tmp_path, broken=True)
        with pytest.raises(ConfigError) as direct:
            parse_config(text, str(path))
        assert "targets[1250]: unknown key 'colour'" in str(direct.value)
        with pytest.raises(ConfigError) as caught:
            config.load_config(path)
        assert str(direct.value) == str(caught.value)
        with pytest.raises(ConfigError) as caught:
            asyncio.run(config.load_config_async(path))
        assert str(direct.value) == str(caught.value)

    def test_running_targets_kept(self, tmp_path: Path) -> None:
        """With the running config given, a target that is unchanged and in the same place
        comes back as the running object; a changed one, and every one whose place in the
        file moved, is new and carries its new location. The Config equals a fresh parse."""
        path, text = self._big(tmp_path, broken=False)
        running = config.load_config(path)
        changed = text.replace("tcp: {port: 11}\n", "tcp: {port: 9}\n", 1)
        changed = changed.replace("  - name: t3000\n", "  - name: t3000\n    window: 7\n")
        path.write_text(changed)
        loaded = asyncio.run(config.load_config_async(path, running))
        assert loaded == parse_config(changed, str(path))
        kept = [new is old for new, old in zip(loaded.targets, running.targets, strict=True)]
        assert kept[:10] == [True] * 10
        assert not kept[10]  # t10, port 11 -> 9
        assert kept[11:3000] == [True] * 2989
        assert kept[3000:] == [False] * 300  # t3000 changed, the ones after it moved
        moved = loaded.targets[3001].source
        assert moved is not None
        assert moved.line == running.targets[3001].source.line + 1  # type: ignore[union-attr]
