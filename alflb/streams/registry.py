"""The stream registry: names to classes, and back from dicts."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import InvalidInputError, UnknownNameError
from .base import ScoreStream
from .synthetic import SYNTHETIC_STREAMS
from .trace import TraceStream

__all__ = ["available_streams", "make_stream", "stream_from_dict"]


_STREAMS: dict[str, type[ScoreStream]] = {cls.name: cls for cls in (*SYNTHETIC_STREAMS, TraceStream)}


def available_streams() -> list[str]:
    """The registered stream names.

    >>> available_streams()
    ['adversarial', 'bursty', 'clustered', 'drifting', 'fixed', 'gaussian', 'skewed', 'trace']
    """
    return sorted(_STREAMS)


def make_stream(name: str, **params: Any) -> ScoreStream:
    """Build a stream by registry name; unknown names raise :class:`UnknownNameError`.

    >>> make_stream("clustered", n_topics=4)
    ClusteredStream(sigma=1.0, activation='sigmoid', n_topics=4, topic_scale=1.5, concentration=1.0)
    """
    if not isinstance(name, str) or name.lower() not in _STREAMS:
        raise UnknownNameError(
            f"unknown score stream {name!r}; available: {', '.join(available_streams())}"
        )
    cls = _STREAMS[name.lower()]
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = [p for p in params if p not in allowed]
    if unknown:
        raise InvalidInputError(
            f"stream {name!r} has no parameter {unknown[0]!r}; its parameters are: {', '.join(allowed)}"
        )
    return cls(**params)


def stream_from_dict(d: dict[str, Any]) -> ScoreStream:
    """Inverse of :meth:`ScoreStream.as_dict`."""
    if not isinstance(d, dict) or "name" not in d:
        raise InvalidInputError(f"a stream dict needs a 'name' key, got {d!r}")
    params = dict(d)
    return make_stream(params.pop("name"), **params)
