"""A small DeepSeekMoE in torch whose router feeds alflb's metrics and simulator.

Modules, in the order data flows: :mod:`.config` (the frozen configuration and the
``tiny``/``small``/``paper_1b`` presets), :mod:`.transformer` (norm, attention, experts,
router, MoE layer, block, model), :mod:`.balancing` (auxiliary losses and the bias update
of :mod:`alflb.rules`), :mod:`.data` (byte-level corpora), :mod:`.checkpoint`, :mod:`.train_config` (the run's
configuration), :mod:`.evaluate` (validation metrics), :mod:`.runlog` (the run folder's
logs and trace), :mod:`.distributed` (process group and collectives), :mod:`.launch`
(local processes, interrupts) and :mod:`.train` (the loop).

Sign convention: the router adds the bias to its scores for selection only; an
overloaded expert's bias goes down.
"""

from .balancing import LOSS_MODES, BalanceConfig, Balancer
from .checkpoint import load_checkpoint, save_checkpoint
from .config import PRESETS, ModelConfig, get_preset
from .data import BatchSampler, Corpus, load_corpus
from .evaluate import EvalResult, evaluate
from .train import TrainResult, train
from .train_config import TRAIN_PRESETS, TrainConfig
from .transformer import DeepSeekMoE, ModelOutput, MoELayer, Router, RouterOutput

__all__ = [
    "LOSS_MODES",
    "PRESETS",
    "TRAIN_PRESETS",
    "BalanceConfig",
    "Balancer",
    "BatchSampler",
    "Corpus",
    "DeepSeekMoE",
    "EvalResult",
    "MoELayer",
    "ModelConfig",
    "ModelOutput",
    "Router",
    "RouterOutput",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "get_preset",
    "load_checkpoint",
    "load_corpus",
    "save_checkpoint",
    "train",
]
