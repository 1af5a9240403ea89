"""Tests for MinibatchStream."""

from __future__ import annotations

import io

import pytest
import torch

from lopt_graphs.data import DatasetSplits, MinibatchStream


def _toy(n: int = 23) -> DatasetSplits:
    """Dataset whose inputs encode their own index, to track sampling."""
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1).expand(n, 1, 3).contiguous()
    y = torch.arange(n, dtype=torch.int64) % 4
    return DatasetSplits(
        x_train=x, y_train=y, x_test=x[:5].clone(), y_test=y[:5].clone(),
        name="toy", input_shape=(1, 3), num_classes=4,
    )


def _ids(batch: tuple[torch.Tensor, torch.Tensor]) -> list[int]:
    return batch[0][:, 0, 0].long().tolist()


def test_batch_shapes_and_pairing() -> None:
    data = _toy()
    stream = MinibatchStream(data, 4, seed=0, device="cpu")
    x, y = stream.next()
    assert tuple(x.shape) == (4, 1, 3) and tuple(y.shape) == (4,)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y, x[:, 0, 0].long() % 4)  # x and y stay paired
    assert stream.steps_per_epoch == 5 and stream.device.type == "cpu"


def test_without_replacement_and_reshuffle() -> None:
    stream = MinibatchStream(_toy(23), 5, seed=1)
    epochs = []
    for _ in range(3):
        ids = [i for _ in range(stream.steps_per_epoch) for i in _ids(stream.next())]
        assert len(ids) == len(set(ids)) == 20  # no repeats within an epoch
        epochs.append(ids)
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled each epoch
    assert stream.epoch == 2


def test_determinism_and_seed_dependence() -> None:
    data = _toy()
    a = [_ids(b) for b, _ in zip(MinibatchStream(data, 4, seed=7), range(20))]
    b = [_ids(b) for b, _ in zip(MinibatchStream(data, 4, seed=7), range(20))]
    c = [_ids(b) for b, _ in zip(MinibatchStream(data, 4, seed=8), range(20))]
    assert a == b
    assert a != c


def test_independent_of_global_rng() -> None:
    data = _toy()
    torch.manual_seed(0)
    a = [_ids(MinibatchStream(data, 4, seed=3).next())]
    torch.manual_seed(999)
    b = [_ids(MinibatchStream(data, 4, seed=3).next())]
    assert a == b


@pytest.mark.parametrize("steps_before", [0, 3, 5, 6, 13])
def test_state_dict_resume(steps_before: int) -> None:
    data = _toy()
    ref = MinibatchStream(data, 4, seed=11)
    for _ in range(steps_before):
        ref.next()
    state = ref.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)  # must be serialisable
    buf.seek(0)
    loaded_state = torch.load(buf, weights_only=True)

    expected = [_ids(ref.next()) for _ in range(12)]
    resumed = MinibatchStream(data, 4, seed=0)  # seed is overridden by the state
    resumed.next()  # arbitrary prior progress is discarded
    resumed.load_state_dict(loaded_state)
    assert [_ids(resumed.next()) for _ in range(12)] == expected
    assert resumed.epoch == ref.epoch and resumed.position == ref.position
    # Taking a state_dict does not perturb the stream it was taken from.
    assert resumed.state_dict()["position"] == ref.state_dict()["position"]


def test_load_state_dict_mismatch() -> None:
    data = _toy()
    state = MinibatchStream(data, 4).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        MinibatchStream(data, 5).load_state_dict(state)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_batch_size(bad) -> None:
    with pytest.raises(ValueError, match=f"batch_size.*{bad!r}"):
        MinibatchStream(_toy(), bad)


def test_batch_size_too_large_and_bad_split() -> None:
    with pytest.raises(ValueError, match="24"):
        MinibatchStream(_toy(23), 24)
    with pytest.raises(ValueError, match="split"):
        MinibatchStream(_toy(), 2, split="val")  # type: ignore[arg-type]
    test_stream = MinibatchStream(_toy(), 5, split="test")
    assert sorted(_ids(test_stream.next())) == [0, 1, 2, 3, 4]
