"""Every code block of the README runs: python blocks execute, ``alflb`` lines parse.

Python blocks run in order in one namespace, in a temporary working directory. Shell
blocks are checked by parsing each ``alflb ...`` line with the real argument parser (so a
renamed flag or subcommand fails here); the two set-up commands must be the Makefile's.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from alflb.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)


def test_readme_has_the_two_setup_commands():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "make demo" in README and "make test" in README
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci


def test_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = [body for lang, body in BLOCKS if lang == "python"]
    assert code, "the README has no python example"
    namespace: dict = {"__name__": "readme"}
    for i, body in enumerate(code):
        try:
            exec(compile(body, f"README.md python block {i}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"README python block {i} failed: {exc!r}\n{body}")


def _alflb_lines():
    for lang, body in BLOCKS:
        if lang not in ("bash", "sh", "console"):
            continue
        for line in body.splitlines():
            line = line.strip().lstrip("$ ").strip()
            if line.startswith("alflb ") or line == "alflb":
                yield line.split(" #", 1)[0].strip()


@pytest.mark.parametrize("line", sorted(set(_alflb_lines())))
def test_cli_lines_parse(line):
    args = shlex.split(line)[1:]
    parsed = build_parser().parse_args(args)
    assert getattr(parsed, "func", None) is not None, f"{line!r} names no subcommand"
