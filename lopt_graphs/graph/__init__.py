"""Networks as neural graphs: neurons are nodes, weights are edges (Kofinas et al., ICLR 2024)."""

from .builder import GraphBuildError
from .from_module import graph_from_module
from .from_params import graph_from_parameters
from .neural_graph import NeuralGraph, collate, neural_graph, pad_graph
from .spec import ACTIVATIONS, NODE_SLOTS, ROLE_HIDDEN, ROLE_INPUT, ROLE_OUTPUT, GraphSpec, ParamSlot

__all__ = [
    "ACTIVATIONS", "NODE_SLOTS", "ROLE_HIDDEN", "ROLE_INPUT", "ROLE_OUTPUT", "GraphBuildError", "GraphSpec",
    "NeuralGraph", "ParamSlot", "collate", "graph_from_module", "graph_from_parameters", "neural_graph",
    "pad_graph",
]
