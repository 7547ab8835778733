"""The libyaml fast paths of the config loader give exactly what PyYAML alone gives: the same
Config, the same sources, the same errors, and no crash on absurd nesting. The one-pass
composer over libyaml's events (`_compose_plain`) makes the very tree PyYAML's composer and
`_Converter` make, and hands every text it is not made for to them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hostwatch import config
from hostwatch.config import ConfigError, parse_config
from hostwatch.model import Config

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
        m.setattr(config, "_LIBYAML", False)
        return _outcome(text)


def _without_plain(text: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, object]:
    """libyaml's parser with PyYAML's composer (the path before the one-pass composer)."""
    def refuse(context: object, text: str) -> None:
        raise config._NotPlainError

    with monkeypatch.context() as m:
        m.setattr(config, "_compose_plain", refuse)
        return _outcome(text)


def _tree(text: str, compose: Callable[[config._Context, str], object]) -> object:
    return compose(config._Context("t.yml"), text)


def _composed_tree(context: config._Context, text: str) -> object:
    """libyaml's parser, PyYAML's composer and `_Converter`: what `_compose_plain` replaces
    (the same events, so the same locations; PyYAML's own parser places some empty values
    elsewhere, which only a message would show, and messages come from PyYAML alone)."""
    return config._compose(context, text, config._FAST_LOADER)


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
            assert _without_plain(text, monkeypatch) == _outcome(text)


_SCALARS = st.sampled_from([
    "a", "x y", "'quoted'", '"dq \\u00e9"', "1", "-2", "0x1f", "0o17", "1_000", "1.5", "-.5e3",
    ".inf", "~", "null", "", "true", "No", "off", "2026-11-23", "2026-11-23 10:00:00Z",
    "'127.0.0.1'", "127.0.0.1", "1h30m", "500ms", "é", "'it''s'", "a#b", "=", "<<x",
])
_KEYS = st.sampled_from(["a", "b", "name", "host", "'1'", '"x y"', "é", "k_1", "-k"])


def _flow(depth: int) -> st.SearchStrategy[str]:
    if depth == 0:
        return _SCALARS
    inner = _flow(depth - 1)
    return st.one_of(
        _SCALARS,
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(_KEYS, inner, max_size=3).map(
            lambda d: "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"),
    )


def _block(depth: int, indent: int) -> st.SearchStrategy[str]:
    """A block mapping or list at `indent` whose values are flow text or nested blocks."""
    pad = " " * indent
    value = _flow(2).map(lambda v: " " + v + "\n")
    if depth > 0:
        value = st.one_of(value, _block(depth - 1, indent + 2).map(lambda b: "\n" + b))
    mapping = st.dictionaries(_KEYS, value, min_size=1, max_size=3).map(
        lambda d: "".join(f"{pad}{k}:{v}" for k, v in d.items()))
    items = st.lists(value, min_size=1, max_size=3).map(
        lambda vs: "".join(f"{pad}-{v}" for v in vs))
    return st.one_of(mapping, items)


@pytest.mark.skipif(not config._LIBYAML, reason="PyYAML built without libyaml")
class TestPlainComposer:
    @settings(max_examples=300, deadline=None)
    @given(st.one_of(_block(3, 0), _flow(3)))
    def test_same_tree(self, text: str) -> None:
        """Documents of every plain shape: the tree libyaml's parser, PyYAML's composer and
        `_Converter` make, node for node with values and locations; where they find a
        problem (a duplicate key, a key that is not a string, an unsupported tag, …) it
        hands the text over."""
        context = config._Context("t.yml")
        try:
            expected = _composed_tree(context, text)
        except yaml.YAMLError:
            context.problems.append(config.Problem(None, "", "invalid YAML", "t.yml"))
        if context.problems:
            with pytest.raises((config._NotPlainError, yaml.YAMLError)):
                _tree(text, config._compose_plain)
        else:
            assert expected == _tree(text, config._compose_plain), text

    @pytest.mark.parametrize("name", ["full.yml", "several-errors.yml", "timeout-error.yml"])
    def test_fixture_trees(self, name: str) -> None:
        text = (CONFIGS / name).read_text()
        assert _tree(text, _composed_tree) == _tree(text, config._compose_plain)

    def test_many_targets_tree(self) -> None:
        text = _generated(300)
        assert _tree(text, _composed_tree) == _tree(text, config._compose_plain)

    @pytest.mark.parametrize("text", [
        "a: &x 1\nb: 2\n",  # an anchor
        "a: [1]\nb: *x\n",  # an alias
        "a: !!str 1\n",  # a tag
        "a: !custom {b: 1}\n",
        "a: 1\na: 2\n",  # a duplicate key
        "1: a\n",  # a key that is not a string
        "<<: {a: 1}\n",  # a merge key
        "? [a]\n: 1\n",  # a collection as a key
        "a: 1\n---\nb: 2\n",  # a second document
        "a: \x07\n",  # a character PyYAML's reader refuses
        "a:\tb\n",  # a tab, where libyaml is laxer
        "[" * 20 + "]" * 20,  # deeper than any config
    ])
    def test_hands_over(self, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Texts the one-pass composer is not made for go to the full composers, which say
        what is wrong; parse_config's outcome is PyYAML's."""
        with pytest.raises(config._NotPlainError):
            _tree(text, config._compose_plain)
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

    def test_equal_values_are_one_object(self, tmp_path: Path) -> None:
        """Unpickled targets share equal values (a float per target and field otherwise), with
        each other and, on a reload, with the running config."""
        path, text = self._big(tmp_path, broken=False)
        running = config.load_config(path)
        first, last = running.targets[0], running.targets[-1]
        assert (first.interval, first.timeout) == (last.interval, last.timeout)
        assert first.interval is last.interval
        assert first.timeout is last.timeout
        path.write_text(text.replace("  - name: t3000\n", "  - name: t3000\n    window: 7\n"))
        loaded = config.load_config(path, running)
        new = loaded.targets[3000]
        assert new is not running.targets[3000]
        assert new.interval is first.interval
        assert new.timeout is first.timeout

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


@pytest.mark.skipif(not config._LIBYAML, reason="PyYAML built without libyaml")
class TestReadOnlyWhatChanged:
    """parse_config with the running config: an entry with the same text and defaults at the
    same place comes back as the running object, anything else is read again; the Config
    always equals a parse from scratch."""

    BASE = ("defaults: {interval: 2s}\n"
            "targets:\n"
            "  - {name: a, host: 127.0.0.1, probes: {icmp: {}}}\n"
            "  - name: b   # the second\n"
            "    host: 127.0.0.2\n"
            "    probes: {icmp: {}}\n"
            "  - name: c\n"
            "    host: 127.0.0.3\n"
            "    probes: {tcp: {port: 22}}\n")

    def _again(self, before: str, after: str) -> tuple[Config, list[bool]]:
        running = parse_config(before, "t.yml")
        loaded = parse_config(after, "t.yml", running)
        assert loaded == parse_config(after, "t.yml")
        assert [t.source for t in loaded.targets] == [
            t.source for t in parse_config(after, "t.yml").targets]
        kept = [any(t is r for r in running.targets) for t in loaded.targets]
        return loaded, kept

    def test_same_text_keeps_every_target(self) -> None:
        assert self._again(self.BASE, self.BASE)[1] == [True, True, True]

    def test_a_changed_entry_is_read_again(self) -> None:
        after = self.BASE.replace("127.0.0.2", "127.0.0.9")
        loaded, kept = self._again(self.BASE, after)
        assert kept == [True, False, True]
        assert loaded.targets[1].host == "127.0.0.9"

    def test_changed_defaults_read_every_entry_again(self) -> None:
        after = self.BASE.replace("interval: 2s", "interval: 3s")
        loaded, kept = self._again(self.BASE, after)
        assert kept == [False, False, False]
        assert {t.interval for t in loaded.targets} == {3.0}

    def test_defaults_after_the_targets(self) -> None:
        before = self.BASE.replace("defaults: {interval: 2s}\n", "") + "defaults: {window: 9}\n"
        after = before.replace("window: 9", "window: 8")
        loaded, kept = self._again(before, after)
        assert kept == [False, False, False]
        assert {t.window for t in loaded.targets} == {8}

    def test_an_entry_that_moved_is_read_again(self) -> None:
        after = self.BASE.replace("targets:\n", "targets:\n\n")
        assert self._again(self.BASE, after)[1] == [False, False, False]

    def test_a_changed_comment_after_an_entry(self) -> None:
        """A block entry's text runs up to the next entry: a new comment after `b` makes it
        read again (and equal, so the reload still finds it unchanged); `c` moved. The flow
        entry `a` ends at its brace."""
        after = self.BASE.replace("  - name: c", "  # c is next\n  - name: c")
        loaded, kept = self._again(self.BASE, after)
        assert kept == [True, False, False]
        assert loaded.targets[1] == parse_config(self.BASE, "t.yml").targets[1]

    def test_the_last_entry_grows(self) -> None:
        """A line added to the last entry, at the end of the file, is part of it."""
        loaded, kept = self._again(self.BASE, self.BASE + "    labels: {site: x}\n")
        assert kept == [True, True, False]
        assert loaded.targets[2].labels == (("site", "x"),)

    def test_a_duplicate_name_beside_a_kept_entry(self) -> None:
        after = self.BASE.replace("name: c", "name: a")
        running = parse_config(self.BASE, "t.yml")
        with pytest.raises(ConfigError) as fresh:
            parse_config(after, "t.yml")
        with pytest.raises(ConfigError) as again:
            parse_config(after, "t.yml", running)
        assert "duplicate target name 'a' (first at line 3" in str(again.value)
        assert str(fresh.value) == str(again.value)

    def test_not_ascii_is_read_again(self) -> None:
        """Spans are taken only in ASCII text: with other characters, every entry is read."""
        text = self.BASE.replace("# the second", "# the sécond")
        assert self._again(text, text)[1] == [False, False, False]

    def test_another_file_is_read_again(self) -> None:
        running = parse_config(self.BASE, "other.yml")
        loaded = parse_config(self.BASE, "t.yml", running)
        assert not any(t is r for t, r in zip(loaded.targets, running.targets, strict=True))
