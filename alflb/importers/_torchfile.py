"""Reading a recorder's ``torch.save`` file safely (the loader both importers share)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CorruptFileError, InvalidInputError

__all__ = ["load_torch_file"]


def load_torch_file(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; ``what`` names the file in errors.

    A missing file is an :class:`InvalidInputError`, a damaged or unsafe one (pickled code
    is refused by ``weights_only``) a :class:`CorruptFileError`, each one line.
    """
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency of the model extra
        raise InvalidInputError(f"reading {what} needs torch (pip install torch)") from exc
    if not path.is_file():
        raise InvalidInputError(f"no such file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or unsafe file
        raise CorruptFileError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from None
