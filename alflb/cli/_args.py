"""Argument types shared by the subcommands (private)."""

from __future__ import annotations

import argparse


def key_value(text: str) -> tuple[str, object]:
    """Parse ``KEY=VALUE`` for repeatable options; the value is read as a number, bool or string."""
    from ..simulator import parse_value

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), parse_value(value.strip())


def run_config(path: str, key: str, what: str) -> dict:
    """The ``key`` section of a run folder's JSON (``--config RUN/config.json``), or one line.

    ``path`` may name the JSON file or the run folder that holds it.
    """
    import json
    from pathlib import Path

    from ..errors import InvalidInputError

    p = Path(path)
    if p.is_dir():
        p = p / ("sweep.json" if key == "sweep" else "config.json")
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"--config: no such file: {p}") from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"--config: {p} is not readable JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise InvalidInputError(f"--config: {p} is not the configuration of {what}")
    return data[key]


def importer_options(format: str, n_experts: int | None) -> dict:
    """What the command line hands a trace importer: ``n_experts`` for the formats that need it.

    ``--n-experts`` with a format that states its experts itself is refused (one line).
    """
    from ..errors import InvalidInputError

    if format == "megatron":
        return {"n_experts": n_experts}  # the importer refuses None in one line
    if n_experts is not None:
        raise InvalidInputError(f"--n-experts applies to --format megatron only; a {format} file "
                                "states its number of experts")
    return {}
