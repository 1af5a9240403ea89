"""Meta-training harness of the learned optimizer (``python meta_train/run.py``).

Generic pieces live in small modules that import nothing heavy at package import time:

* :mod:`meta_train.config` -- the typed, validated :class:`~meta_train.config.MetaTrainConfig`,
  YAML loading and ``key=value`` overrides;
* :mod:`meta_train.checkpointing` -- atomic, ``weights_only``-loadable checkpoints and RNG state;
* :mod:`meta_train.logging_utils` -- JSONL / stdout / wandb metrics logging and a progress bar;
* :mod:`meta_train.report` -- the end-of-run markdown report with the meta-loss plot.
"""
