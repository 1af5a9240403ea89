"""The neural-graph encoder: NG-GNN and NG-Transformer layers, equivariant heads, invariant readout."""

from .config import EncoderConfig
from .encoder import EncoderOutput, NeuralGraphEncoder
from .ng_gnn import NGGNNLayer
from .ng_transformer import NGTransformerLayer

__all__ = ["EncoderConfig", "EncoderOutput", "NGGNNLayer", "NGTransformerLayer", "NeuralGraphEncoder"]
