"""The verl adapter against verl's curriculum-sampler interface.

verl 0.6.1 does not import here (``verl/__init__`` needs ray and tensordict), so these tests put a
stand-in for ``verl.experimental.dataset.sampler`` in ``sys.modules``: the two abstract classes with
the signatures of verl's source (``AbstractSampler.__init__(data_source, data_config)``,
``AbstractCurriculumSampler.update(batch)``), and drive the adapter the way verl does: the class
loaded from ``data.sampler.class_path`` / ``class_name`` (verl's ``create_rl_sampler``), a data loader
with ``batch_size=data.train_batch_size`` and no workers, ``update(batch)`` after every step when
the sampler is an ``AbstractCurriculumSampler`` (``RayPPOTrainer.fit``), the sampler's
``state_dict`` saved with the data loader's checkpoint.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from abc import abstractmethod
from collections.abc import Sized

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Sampler

from curator.errors import ConfigError, DataError


def standin_verl() -> dict[str, types.ModuleType]:
    class AbstractSampler(Sampler[int]):
        @abstractmethod
        def __init__(self, data_source: Sized, data_config):
            pass

    class AbstractCurriculumSampler(AbstractSampler):
        @abstractmethod
        def update(self, batch) -> None:
            pass

    mods = {name: types.ModuleType(name) for name in ("verl", "verl.experimental", "verl.experimental.dataset")}
    sampler = types.ModuleType("verl.experimental.dataset.sampler")
    sampler.AbstractSampler = AbstractSampler  # type: ignore[attr-defined]
    sampler.AbstractCurriculumSampler = AbstractCurriculumSampler  # type: ignore[attr-defined]
    mods["verl.experimental.dataset.sampler"] = sampler
    return mods


@pytest.fixture
def verl(monkeypatch):
    for name, mod in standin_verl().items():
        monkeypatch.setitem(sys.modules, name, mod)
    import curator.integrations.verl as adapter

    yield importlib.reload(adapter), sys.modules["verl.experimental.dataset.sampler"]
    monkeypatch.undo()
    importlib.reload(adapter)


class DataProto:
    """verl's DataProto, reduced to the two fields the adapter reads."""

    def __init__(self, batch: dict[str, torch.Tensor], non_tensor_batch: dict[str, np.ndarray]):
        self.batch, self.non_tensor_batch = batch, non_tensor_batch


def load_extern_type(class_path: str, class_name: str):  # verl.utils.import_utils, the pkg:// branch
    return getattr(importlib.import_module(class_path[len("pkg://") :].replace("/", ".")), class_name)


def config(**curator):
    return {
        "train_batch_size": 4,
        "dataloader_num_workers": 0,
        "seed": 5,
        "sampler": {
            "class_path": "pkg://curator.integrations.verl",
            "class_name": "CuratorSampler",
            "curator": curator,
        },
    }


def rollouts(prompts: list[int], step: int, n: int = 4) -> DataProto:
    """``n`` rollouts per prompt with scores at the last token; prompt i is solved with prob (i % 5) / 4."""
    index, scores = [], []
    for i in prompts:
        wins = np.random.default_rng([i, step]).random(n) < (i % 5) / 4
        index += [i] * n
        scores += wins.astype(float).tolist()
    tls = torch.zeros(len(scores), 6)
    tls[:, -1] = torch.tensor(scores)
    return DataProto({"token_level_scores": tls}, {"index": np.array(index, dtype=object)})


def fit(sampler, steps: range, curriculum_cls) -> list[list[int]]:
    """RayPPOTrainer.fit's use of the sampler: iterate the loader, update after each step."""
    loader = DataLoader(list(range(10)), batch_size=4, sampler=sampler, drop_last=True, num_workers=0)
    drawn: list[list[int]] = []
    it = iter(loader)
    for step in steps:
        try:
            batch = next(it)
        except StopIteration:  # the next epoch
            it = iter(loader)
            batch = next(it)
        prompts = batch.tolist()
        drawn.append(prompts)
        if isinstance(sampler, curriculum_cls):
            sampler.update(batch=rollouts(prompts, step))
    return drawn


def test_the_adapter_implements_verls_curriculum_interface(verl):
    adapter, iface = verl
    cfg = config(strategy="drop-solved-failed")
    cls = load_extern_type(cfg["sampler"]["class_path"], cfg["sampler"]["class_name"])
    assert cls is adapter.CuratorSampler and issubclass(cls, iface.AbstractCurriculumSampler)
    sampler = cls(data_source=list(range(10)), data_config=cfg)
    assert isinstance(sampler, iface.AbstractSampler)  # verl's create_rl_sampler asserts this
    assert len(sampler) == 8 and sampler.curator.seed == 5  # 2 batches of 4 per epoch; data.seed
    drawn = fit(sampler, range(5), iface.AbstractCurriculumSampler)
    assert all(len(set(b)) == 4 for b in drawn)
    assert sampler.curator.rollouts == 5 * 16 and sampler.curator.checkpoint == 5


def test_a_resumed_verl_run_draws_the_same_prompts(verl):
    adapter, iface = verl
    cfg = config(strategy="learnability", params={"n": 4})
    whole = fit(adapter.CuratorSampler(list(range(10)), cfg), range(7), iface.AbstractCurriculumSampler)
    first = adapter.CuratorSampler(list(range(10)), cfg)
    drawn = fit(first, range(3), iface.AbstractCurriculumSampler)  # killed mid-epoch 2 after step 3
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = adapter.CuratorSampler(list(range(10)), cfg)
    resumed.load_state_dict(saved)
    drawn += fit(resumed, range(3, 7), iface.AbstractCurriculumSampler)
    assert drawn == whole and len({tuple(b) for b in whole}) > 1


def test_prompt_ids_come_from_extra_info_index(verl):
    adapter, _ = verl

    class Frame(dict):
        column_names = ["prompt", "extra_info"]

    class RLHFDataset:  # verl's dataset keeps its rows in `dataframe`
        dataframe = Frame(extra_info=[{"index": 100 + i} for i in range(10)])

        def __len__(self):
            return 10

    s = adapter.CuratorSampler(RLHFDataset(), config())
    assert s.curator.ids[:2] == ["100", "101"]
    ids = [int(s.curator.ids[p]) for p in list(iter(s))[:4]]
    s.update(rollouts(ids, 0))
    assert s.curator.rollouts == 16


def test_bad_config_and_batches_name_the_problem(verl):
    adapter, _ = verl
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['stratgy'\]"):
        adapter.CuratorSampler(list(range(10)), config(stratgy="iid"))
    with pytest.raises(ConfigError, match="train_batch_size=4 is larger than the dataset"):
        adapter.CuratorSampler(list(range(3)), config())
    s = adapter.CuratorSampler(list(range(10)), config())
    prompts = list(iter(s))[:4]
    with pytest.raises(DataError, match=r"no non_tensor_batch\['index'\]"):
        s.update(DataProto({"token_level_scores": torch.zeros(4, 2)}, {"uid": np.zeros(4)}))
    bad = rollouts(prompts, 0)
    bad.batch["token_level_scores"][0, -1] = 2.0
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        s.update(bad)
    with pytest.raises(DataError, match="never issued"):
        s.update(rollouts([p for p in range(10) if p not in prompts][:1], 0))


def test_without_verl_the_adapter_is_a_torch_sampler():
    import curator.integrations.verl as adapter

    if "verl.experimental.dataset.sampler" not in sys.modules:
        assert adapter.CuratorSampler.__mro__[1] is Sampler
