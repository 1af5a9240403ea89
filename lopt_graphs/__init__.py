"""lopt_graphs: neural graphs of PyTorch models and a learned optimizer over them.

``from lopt_graphs import NeuralGraphOptimizer`` gives the optimizer; ``lopt_graphs.graph`` turns networks
into graphs; ``lopt_graphs.nn`` holds the encoder shared by every task.
"""

from .optim import NeuralGraphOptimizer

__version__ = "0.1.0"
__all__ = ["NeuralGraphOptimizer", "__version__"]
