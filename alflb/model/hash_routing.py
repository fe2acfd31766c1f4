r"""Hash-routed MoE layers (DeepSeek-V4): a fixed token-id -> experts table, no bias.

Shape legend: ``B`` sequences, ``T`` tokens, ``E`` experts, ``K`` experts per token,
``V`` vocabulary.

DeepSeek-V4 routes its first MoE layers by a hash of the token id: token ``v`` always
goes to the ``K`` experts ``table[v]``, whatever its hidden state. Such a layer is
outside the assignment problem (nothing to choose, so no dual and no bias): its router
has ``in_balance = False``, which :meth:`~alflb.model.DeepSeekMoE.routers` and the
model's routing list honour, so the :class:`~alflb.model.Balancer` neither updates it nor
counts it in MaxVio averages. Its own loads are still counted (``load_count``) and can be
read with :func:`hash_loads` when asked. Gate weights: the router's scores of the table's
experts (the score function of the config), normalised as in the learned router.

References
----------
.. [V4] DeepSeek-AI, DeepSeek-V4 (2026): sqrt-softplus router scores, hash-routed first
   layers, no group-limited routing.
.. [HASH] S. Roller et al., Hash Layers for Large Sparse Models, NeurIPS 2021.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError
from .config import ModelConfig, get_preset
from .transformer import DeepSeekMoE, MoELayer, Router

__all__ = ["HashRouter", "build_deepseek_v4", "hash_loads", "hash_table"]


def hash_table(vocab_size: int, n_experts: int, k: int, seed: int = 0) -> torch.Tensor:
    """A fixed table ``(V, K)`` int64: ``K`` distinct experts per token id, balanced over ids.

    Slots are dealt round-robin (id ``v`` gets experts ``vK, ..., vK + K - 1`` mod ``E``) and
    the experts relabelled by a seeded permutation, so each expert holds ``V K / E`` ids (up
    to one).

    >>> t = hash_table(16, 4, 2)
    >>> tuple(t.shape), torch.bincount(t.reshape(-1), minlength=4).tolist()
    ((16, 2), [8, 8, 8, 8])
    """
    if not 1 <= k < n_experts:
        raise InvalidInputError(f"k must satisfy 1 <= k < n_experts={n_experts}, got {k}")
    gen = torch.Generator().manual_seed(seed)
    start_V = torch.arange(vocab_size) * k  # (V,) round-robin: slot j of id v is v K + j mod E
    base_VK = (start_V[:, None] + torch.arange(k)[None, :]) % n_experts  # K distinct (K < E)
    relabel_E = torch.randperm(n_experts, generator=gen)  # seeded expert relabelling
    return relabel_E[base_VK]


class HashRouter(Router):
    """Routes token ``v`` to ``table[v]``; the bias is unused and the layer is not balanced.

    Needs the token ids of the current forward (:meth:`set_token_ids`, called by the
    forward pre-hook that :func:`build_deepseek_v4` installs). Gates come from the score
    function of the learned router (``weight`` is still trained through the gates).
    """

    in_balance = False

    def __init__(self, cfg: ModelConfig, seed: int = 0) -> None:
        super().__init__(cfg)
        self.register_buffer("table_VK", hash_table(cfg.vocab_size, cfg.n_routed_experts, cfg.top_k, seed))
        self._ids: torch.Tensor | None = None

    def set_token_ids(self, idx_BT: torch.Tensor) -> None:
        self._ids = idx_BT

    def select(self, scores_TE: torch.Tensor) -> torch.Tensor:
        """The experts of each token from the hash table of its id (no bias, no scores).

        The rest of the forward (gates from the unbiased scores, counting) is the
        :class:`~alflb.model.transformer.Router`'s own.
        """
        if self._ids is None or self._ids.numel() != scores_TE.shape[0]:
            raise InvalidInputError("a hash-routed layer needs the token ids of this forward (set_token_ids)")
        return self.table_VK[self._ids.reshape(-1)]  # (T, K) by token id


def _feed_ids(model: DeepSeekMoE, args, kwargs) -> None:
    idx_BT = args[0] if args else kwargs["idx_BT"]
    for block in model.blocks:
        if isinstance(block.ffn, MoELayer) and isinstance(block.ffn.router, HashRouter):
            block.ffn.router.set_token_ids(idx_BT)


def build_deepseek_v4(cfg: ModelConfig | None = None, n_hash_layers: int = 1, seed: int = 0) -> DeepSeekMoE:
    """A DeepSeekMoE whose first ``n_hash_layers`` MoE layers route by token-id hash.

    ``cfg`` defaults to the ``deepseek_v4_tiny`` preset (sqrt-softplus scores, no group limit).

    >>> model = build_deepseek_v4()
    >>> out = model(torch.zeros(2, 8, dtype=torch.long))
    >>> len(model.routers()), len(out.routing)  # 3 MoE layers, the first hash-routed
    (2, 2)
    """
    cfg = get_preset("deepseek_v4_tiny") if cfg is None else cfg
    if not 0 <= n_hash_layers <= cfg.n_moe_layers:
        raise InvalidInputError(
            f"n_hash_layers must be in 0..{cfg.n_moe_layers} (the MoE layers), got {n_hash_layers}"
        )
    model = DeepSeekMoE(cfg)
    moe = [b for b in model.blocks if isinstance(b.ffn, MoELayer)]
    for block in moe[:n_hash_layers]:
        router = HashRouter(cfg, seed=seed)
        with torch.no_grad():
            router.weight.copy_(block.ffn.router.weight)
        block.ffn.router = router
    model.register_forward_pre_hook(_feed_ids, with_kwargs=True)
    return model


def hash_loads(model: DeepSeekMoE) -> torch.Tensor:
    """Counted loads ``(L_hash, E)`` of the hash-routed layers (outside the balancing)."""
    rows = [b.ffn.router.load_count for b in model.blocks
            if isinstance(b.ffn, MoELayer) and isinstance(b.ffn.router, HashRouter)]
    return torch.stack(rows) if rows else torch.zeros(0, model.cfg.n_routed_experts, dtype=torch.int64)
