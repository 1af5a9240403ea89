"""The learned optimizer: :class:`NeuralGraphOptimizer`, its pure update and its checkpoints."""

from . import higher_hook  # noqa: F401,E402  (registers NeuralGraphOptimizer with higher)
from .checkpoint import CheckpointError, checkpoint_dict, load_learned_update, save_checkpoint, shipped_checkpoints
from .functional import init_state, ngo_update
from .higher_hook import DifferentiableNeuralGraphOptimizer
from .learned import FEATURES, LearnedUpdate, LearnedUpdateConfig
from .optimizer import NeuralGraphOptimizer

__all__ = [
    "FEATURES", "CheckpointError", "DifferentiableNeuralGraphOptimizer", "LearnedUpdate", "LearnedUpdateConfig", "NeuralGraphOptimizer",
    "checkpoint_dict", "init_state", "load_learned_update", "ngo_update", "save_checkpoint",
    "shipped_checkpoints",
]
