"""One progress bar for every long phase (simulations, comparators, sweeps, training).

:func:`progress` wraps tqdm: by default the bar shows only when stderr is a terminal, so
logs and CI output stay clean; ``enabled=False`` gives an object with the same methods
that does nothing.

>>> bar = progress(total=3, desc="demo", enabled=False)
>>> bar.update(2); bar.set_postfix_str("x"); bar.close()
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["progress"]


class _Silent:
    """The no-op bar: the methods alflb calls on a tqdm bar, doing nothing."""

    def __init__(self, iterable: Iterable[Any] | None = None) -> None:
        self._iterable = iterable

    def __iter__(self):
        return iter(self._iterable if self._iterable is not None else ())

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None,
             desc: str | None = None, unit: str = "it", initial: int = 0,
             enabled: bool | None = None, leave: bool = False) -> Any:
    """A tqdm bar, or a silent stand-in.

    Parameters
    ----------
    enabled : bool or None
        ``True`` shows the bar when stderr is a terminal; ``None`` (default) does the
        same; ``False`` never shows it. A bar never writes to a non-terminal stderr, so
        a run's log holds no carriage-return noise.
    """
    if enabled is False:
        return _Silent(iterable)
    from tqdm.auto import tqdm

    # disable=None: tqdm stays silent when stderr is not a terminal (logs, CI).
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                disable=None, dynamic_ncols=True)
