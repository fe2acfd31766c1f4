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
