"""Predict a CNN checkpoint's test accuracy from its weights (Kofinas et al., ICLR 2024, Small CNN Zoo).

Predictors:

* ``gnn`` / ``transformer``: :class:`AccuracyPredictor`, the unchanged
  :class:`~lopt_graphs.nn.NeuralGraphEncoder` (NG-GNN or NG-T) with an invariant readout of one output,
  squashed by a sigmoid and trained with MSE against the accuracy. The network's graph comes from
  ``graph_from_module(ZooCNN(...))``; edges carry the raw weights (conv kernels as vectors), nodes the
  biases, both divided by one global scale measured on the training split.
* ``statnn``: per-tensor statistics (mean, variance, quantiles 0/25/50/75/100 % of every weight and bias,
  convolutions padded with zeros up to the deepest architecture) into a gradient-boosted regressor.

The metric is Kendall's tau between predicted and true accuracy over all checkpoints of the test runs.

Command::

    python -m lopt_graphs.tasks.cnn_zoo.predict --config configs/tasks/zoo_small.yaml [key=value ...]

Writes ``{out_dir}/zoo_{name}/``: ``config.yaml`` (resolved), ``results.json``, ``scatter.png``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lopt_graphs.config import command_parser, config_to_dict, save_resolved_config, set_threads
from lopt_graphs.graph import GraphSpec, graph_from_module, neural_graph, pad_graph
from lopt_graphs.io import atomic_write_text
from lopt_graphs.nn import EncoderConfig, NeuralGraphEncoder
from lopt_graphs.plotting import new_figure, save_figure

from .config import ZooTaskConfig, load_task_config
from .zoo import Zoo, ZooCNN, load_or_build_zoo

__all__ = ["AccuracyPredictor", "ZooGraphs", "checkpoint_graph", "kendall_tau", "main", "run_task", "statnn_features", "train_statnn",
           "train_encoder_ensemble", "train_encoder_predictor"]


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b of two sequences (``scipy.stats.kendalltau`` when scipy is installed)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    try:
        from scipy.stats import kendalltau
    except ImportError:  # O(n^2) tau-b, fine for test splits of a few thousand checkpoints
        dx = np.sign(x[:, None] - x[None, :])
        dy = np.sign(y[:, None] - y[None, :])
        iu = np.triu_indices(len(x), k=1)
        s = float((dx * dy)[iu].sum())
        nx, ny = float((dx[iu] != 0).sum()), float((dy[iu] != 0).sum())
        return s / math.sqrt(nx * ny) if nx and ny else float("nan")
    return float(kendalltau(x, y).statistic)


def checkpoint_graph(spec: GraphSpec, tensors: Sequence[Tensor], scale: tuple[float, float], kmax: int, slots: int,
                     edge_features: str = "kernel", dtype: torch.dtype = torch.float32):
    """The neural graph of one network's parameters, as the predictors read it.

    Args:
        spec: the network's graph spec.
        tensors: its parameters (``spec.params`` order).
        scale: ``(edge_scale, node_scale)`` dividing weights and biases.
        kmax: entries per edge after padding (also the feature count of ``"kernel"`` edge features).
        slots: node slots after padding.
        edge_features: ``"value"`` or ``"kernel"`` (see :class:`ZooGraphs`).
        dtype: feature dtype.
    """
    feats = []
    for t, p in zip(tensors, spec.params):
        if p.kind == "edge":
            t = t.to(dtype) / scale[0]
            if edge_features == "kernel":  # entry j of an edge -> feature channel j
                v = t.reshape(p.rows * p.cols, p.entries)
                onehot = v.new_zeros(p.rows * p.cols, p.entries, kmax)
                onehot[:, torch.arange(p.entries), torch.arange(p.entries)] = v
                feats.append(onehot.reshape(*p.shape, kmax))
            else:
                feats.append(t.unsqueeze(-1))
        else:
            feats.append(t.to(dtype).unsqueeze(-1) / scale[1])
    return pad_graph(neural_graph(spec, feats), kmax, slots)


# ---------------------------------------------------------------------------------------------- graphs
class ZooGraphs:
    """Neural graphs of zoo checkpoints, with one :class:`GraphSpec` per (architecture, activation).

    Args:
        zoo: the zoo.
        scale: ``(edge_scale, node_scale)`` dividing weights and biases (``None``: measured on ``fit_runs``).
        fit_runs: runs whose parameters set the scales.
        edge_features: ``"value"``: one feature per edge entry, the (scaled) weight; ``"kernel"``: ``kmax``
            features, entry ``j`` of an edge (its ``j``-th kernel position) puts its weight in channel ``j``
            and zeros elsewhere. The encoder averages the embeddings of an edge's entries after a shared
            linear map, so with ``"value"`` it sees only the mean of each kernel; ``"kernel"`` lets that
            linear map read the whole kernel (still per edge, so invariance is untouched).
    """

    def __init__(self, zoo: Zoo, scale: tuple[float, float] | None = None, fit_runs: Sequence[int] = (),
                 edge_features: str = "value"):
        if edge_features not in ("value", "kernel"):
            raise ValueError(f"edge_features must be 'value' or 'kernel', got {edge_features!r}")
        self.zoo = zoo
        self.edge_features = edge_features
        self._specs: dict[tuple[int, str], GraphSpec] = {}
        if scale is None:
            scale = self._fit_scale(fit_runs or range(zoo.num_runs))
        self.scale = scale
        specs = [self.spec(r) for r in range(zoo.num_runs)]
        self.kmax = max(s.kmax for s in specs)
        self.slots = max(s.num_slots for s in specs)

    def spec(self, run: int) -> GraphSpec:
        """The graph spec of run ``run``'s architecture and activation (cached)."""
        key = (int(self.zoo.arch_id[run]), self.zoo.activation[run])
        if key not in self._specs:
            self._specs[key] = graph_from_module(ZooCNN(self.zoo.arch(run), key[1]))
        return self._specs[key]

    def _fit_scale(self, runs: Sequence[int]) -> tuple[float, float]:
        w, b = [], []
        for r in runs:
            for t, p in zip(self.zoo.tensors(r, self.zoo.num_checkpoints - 1), self.spec(r).params):
                (w if p.kind == "edge" else b).append(t.reshape(-1))
        sw = float(torch.cat(w).std()) if w else 1.0
        sb = float(torch.cat(b).std()) if b else 1.0
        return max(sw, 1e-8), max(sb, 1e-8)

    def graph(self, run: int, ckpt: int, tensors: Sequence[Tensor] | None = None,
              dtype: torch.dtype = torch.float32):
        """The neural graph of a checkpoint (or of ``tensors`` in its run's architecture), padded."""
        spec = self.spec(run)
        tensors = self.zoo.tensors(run, ckpt) if tensors is None else tensors
        return checkpoint_graph(spec, tensors, self.scale, self.kmax, self.slots, self.edge_features, dtype)

    @property
    def edge_in(self) -> int:
        """Features per edge entry of the graphs."""
        return self.kmax if self.edge_features == "kernel" else 1

    def graphs(self, items: Sequence[tuple[int, int]]) -> list:
        return [self.graph(r, c) for r, c in items]


class AccuracyPredictor(nn.Module):
    """NG encoder with an invariant one-output readout, squashed to ``(0, 1)`` by a sigmoid."""

    def __init__(self, variant: str, hidden: int, edge_hidden: int, layers: int, heads: int, max_kernel: int,
                 edge_in: int = 1):
        super().__init__()
        self.encoder = NeuralGraphEncoder(EncoderConfig(variant=variant, node_in=1, edge_in=edge_in, hidden=hidden,
                                                        edge_hidden=edge_hidden, layers=layers, heads=heads,
                                                        graph_out=1, max_kernel=max_kernel))

    def forward(self, batch) -> Tensor:
        """``[B]`` predicted accuracies of a batch of neural graphs."""
        return torch.sigmoid(self.encoder(batch).graph_out[:, 0])


def _items(zoo: Zoo, split: int, cap: int = 0, seed: int = 0) -> list[tuple[int, int]]:
    runs = torch.nonzero(zoo.split == split).flatten().tolist()
    items = [(r, c) for r in runs for c in range(zoo.num_checkpoints)]
    if cap and len(items) > cap:
        g = torch.Generator().manual_seed(seed)
        items = [items[i] for i in sorted(torch.randperm(len(items), generator=g)[:cap].tolist())]
    return items


def _targets(zoo: Zoo, items: Sequence[tuple[int, int]]) -> np.ndarray:
    return np.array([float(zoo.test_acc[r, c]) for r, c in items])


@torch.no_grad()
def _predict(model: AccuracyPredictor, graphs: list, batch: int) -> np.ndarray:
    from torch_geometric.data import Batch

    model.eval()
    out = [model(Batch.from_data_list(graphs[i: i + batch])) for i in range(0, len(graphs), batch)]
    return torch.cat(out).double().numpy()


@dataclass
class PredictorResult:
    """Predictions and scores of one predictor."""

    name: str
    test_pred: np.ndarray
    test_tau: float
    val_tau: float
    seconds: float
    extra: dict[str, object]


def train_encoder_predictor(cfg: ZooTaskConfig, variant: str, zg: ZooGraphs, train: list, val: list, test: list,
                            progress: bool = True) -> tuple[AccuracyPredictor, PredictorResult]:
    """Train an :class:`AccuracyPredictor`; the epoch with the best validation tau is kept (the last epoch
    without a validation split)."""
    from torch_geometric.data import Batch
    from tqdm import tqdm

    t0 = time.time()
    torch.manual_seed(cfg.pred_seed)
    g_train, g_val, g_test = zg.graphs(train), zg.graphs(val), zg.graphs(test)
    y_train = torch.tensor(_targets(zg.zoo, train), dtype=torch.float32)
    y_val = _targets(zg.zoo, val)
    model = AccuracyPredictor(variant, cfg.hidden, cfg.edge_hidden, cfg.layers, cfg.heads, max_kernel=zg.kmax,
                              edge_in=zg.edge_in)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pred_lr, weight_decay=cfg.pred_weight_decay)
    steps = cfg.pred_epochs * math.ceil(len(g_train) / cfg.pred_batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    gen = torch.Generator().manual_seed(cfg.pred_seed)
    best, best_tau, history = copy.deepcopy(model.state_dict()), -2.0, []
    bar = tqdm(range(cfg.pred_epochs), desc=f"{cfg.name}/{variant}", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(g_train), generator=gen).tolist()
        total = 0.0
        for i in range(0, len(order), cfg.pred_batch):
            idx = order[i: i + cfg.pred_batch]
            pred = model(Batch.from_data_list([g_train[j] for j in idx]))
            loss = ((pred - y_train[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        val_pred = _predict(model, g_val, 256) if val else np.zeros(0)
        val_tau = kendall_tau(val_pred, y_val) if val else float("nan")
        history.append({"epoch": epoch + 1, "train_mse": total / len(order), "val_tau": val_tau,
                        "val_mse": float(((val_pred - y_val) ** 2).mean()) if val else float("nan")})
        bar.set_postfix(mse=f"{total / len(order):.4f}", val_tau=f"{val_tau:.3f}")
        if not val or val_tau > best_tau:
            best_tau, best = val_tau, copy.deepcopy(model.state_dict())
    model.load_state_dict(best)
    test_pred = _predict(model, g_test, 256)
    y_test = _targets(zg.zoo, test)
    name = {"gnn": "NG-GNN", "transformer": "NG-T"}[variant]
    return model, PredictorResult(name, test_pred, kendall_tau(test_pred, y_test), best_tau, time.time() - t0,
                                  {"history": history, "test_mse": float(((test_pred - y_test) ** 2).mean()),
                                   "params": sum(p.numel() for p in model.parameters())})


def train_encoder_ensemble(cfg: ZooTaskConfig, variant: str, zg: ZooGraphs, train: list, val: list, test: list,
                           progress: bool = True) -> PredictorResult:
    """``cfg.pred_ensemble`` encoder predictors (seeds ``pred_seed``, ``pred_seed + 1``, ...), each selected on
    the validation split, whose predicted accuracies are averaged (one predictor when ``pred_ensemble=1``)."""
    members = [train_encoder_predictor(dataclasses.replace(cfg, pred_seed=cfg.pred_seed + i), variant, zg, train,
                                       val, test, progress) for i in range(cfg.pred_ensemble)]
    if len(members) == 1:
        return members[0][1]
    g_val = zg.graphs(val)
    val_pred = np.mean([_predict(model, g_val, 256) for model, _ in members], axis=0) if val else np.zeros(0)
    test_pred = np.mean([r.test_pred for _, r in members], axis=0)
    y_test = _targets(zg.zoo, test)
    first = members[0][1]
    return PredictorResult(
        first.name, test_pred, kendall_tau(test_pred, y_test),
        kendall_tau(val_pred, _targets(zg.zoo, val)) if val else float("nan"), sum(r.seconds for _, r in members),
        {"ensemble": len(members), "member_test_tau": [r.test_tau for _, r in members],
         "member_val_tau": [r.val_tau for _, r in members], "test_mse": float(((test_pred - y_test) ** 2).mean()),
         "params": first.extra["params"], "history": first.extra["history"]})


# ---------------------------------------------------------------------------------------------- StatNN
_QUANTILES = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])


def _tensor_stats(t: Tensor) -> Tensor:
    t = t.reshape(-1).double()
    return torch.cat([t.mean()[None], t.var(unbiased=False)[None], torch.quantile(t, _QUANTILES.double())])


def statnn_features(zoo: Zoo, items: Sequence[tuple[int, int]], max_convs: int) -> np.ndarray:
    """``[n, 7 * 2 * (max_convs + 1)]`` statistics of every weight and bias (missing convs are zeros)."""
    rows = []
    for r, c in items:
        ts = zoo.tensors(r, c)
        convs = [torch.cat([_tensor_stats(ts[2 * i]), _tensor_stats(ts[2 * i + 1])]) for i in range(len(ts) // 2 - 1)]
        convs += [torch.zeros(14, dtype=torch.float64)] * (max_convs - len(convs))
        rows.append(torch.cat(convs + [_tensor_stats(ts[-2]), _tensor_stats(ts[-1])]))
    return torch.stack(rows).numpy()


def train_statnn(cfg: ZooTaskConfig, zoo: Zoo, train: list, val: list, test: list) -> PredictorResult:
    """Fit the StatNN baseline (gradient-boosted trees on weight statistics)."""
    from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingRegressor

    t0 = time.time()
    max_convs = max(len(a.widths) for a in zoo.archs)
    x_tr, x_va, x_te = (statnn_features(zoo, it, max_convs) for it in (train, val, test))
    if cfg.statnn_model == "hgb":
        model = HistGradientBoostingRegressor(max_iter=500, learning_rate=0.05, early_stopping=False,
                                              random_state=cfg.pred_seed)
    else:
        model = GradientBoostingRegressor(n_estimators=500, learning_rate=0.05, max_depth=3, subsample=0.8,
                                          random_state=cfg.pred_seed)
    model.fit(x_tr, _targets(zoo, train))
    val_tau = kendall_tau(model.predict(x_va), _targets(zoo, val)) if val else float("nan")
    pred = model.predict(x_te)
    y = _targets(zoo, test)
    return PredictorResult("StatNN", pred, kendall_tau(pred, y), val_tau, time.time() - t0,
                           {"features": int(x_tr.shape[1]), "model": type(model).__name__,
                            "test_mse": float(((pred - y) ** 2).mean())})


# ---------------------------------------------------------------------------------------------- task
def _scatter(path: Path, y: np.ndarray, results: list[PredictorResult], title: str) -> None:
    fig, axes = new_figure(1, len(results), figsize=(4 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results):
        ax.scatter(y, res.test_pred, s=4, alpha=0.5)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlabel("true test accuracy")
        ax.set_ylabel("predicted")
        ax.set_title(f"{res.name}: tau={res.test_tau:.3f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    fig.suptitle(title)
    save_figure(fig, path, dpi=110)


def run_task(cfg: ZooTaskConfig, progress: bool = True, write: bool = True) -> dict[str, object]:
    """Build/load the zoo, train the configured predictors, score them on the test split.

    Returns:
        The results dict (also written to ``{out}/results.json`` with ``write``).
    """
    set_threads(cfg.threads)
    out = cfg.out
    if write:
        save_resolved_config(cfg, out / "config.yaml", header="Resolved CNN-zoo task config")
    zoo, path, cached = load_or_build_zoo(cfg, progress=progress)
    train = _items(zoo, 0, cfg.max_train_checkpoints, cfg.pred_seed)
    val, test = _items(zoo, 1), _items(zoo, 2)
    results: list[PredictorResult] = []
    zg = None
    for m in cfg.models:
        if m == "statnn":
            results.append(train_statnn(cfg, zoo, train, val, test))
        else:
            if zg is None:
                zg = ZooGraphs(zoo, fit_runs=sorted({r for r, _ in train}), edge_features=cfg.edge_features)
            results.append(train_encoder_ensemble(cfg, m, zg, train, val, test, progress))
    y = _targets(zoo, test)
    summary = {
        "task": cfg.name, "zoo": {"cache": str(path), "loaded_from_cache": cached, **zoo.summary()},
        "checkpoints_used": {"train": len(train), "val": len(val), "test": len(test)},
        "kendall_tau": {r.name: r.test_tau for r in results},
        "val_kendall_tau": {r.name: r.val_tau for r in results},
        "seconds": {r.name: r.seconds for r in results},
        "details": {r.name: r.extra for r in results},
        "config": config_to_dict(cfg),
    }
    if write:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
        _scatter(out / "scatter.png", y, results, f"zoo {cfg.name}: predicted vs true test accuracy")
    return summary


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Parse arguments and run :func:`run_task`."""
    a = command_parser(ZooTaskConfig, "Predict CNN test accuracy from weights (NG encoder vs StatNN).").parse_args(argv)
    cfg = load_task_config(a.config, a.overrides)
    res = run_task(cfg)
    print(json.dumps({"task": res["task"], "kendall_tau": res["kendall_tau"],
                      "checkpoints_used": res["checkpoints_used"]}, indent=2))
    return res


if __name__ == "__main__":
    main()
