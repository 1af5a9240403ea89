"""lopt_graphs: learned-optimizer experiments in PyTorch."""
