"""Integrations with other libraries (loaded lazily: importing alflb needs neither torch
nor transformers).

- :mod:`alflb.integrations.transformers`: record routing traces of transformers MoE
  models and balance them with alflb's update rules.
- :mod:`alflb.integrations.audit`: a conformance kit for router implementations.
- :mod:`alflb.integrations.replay`: group-limited routing replayed on a trace.
"""

__all__ = ["audit", "replay", "transformers"]
