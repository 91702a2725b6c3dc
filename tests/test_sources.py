"""Sources: a fixed pool and a generator of synthetic candidates."""

import pytest

from curator.data.example import Example
from curator.data.sources import GeneratorSource, PoolSource, Source
from curator.data.synthetic import synthetic_task
from curator.errors import ConfigError, CuratorError


def test_pool_source_returns_its_examples_and_cannot_generate():
    exs = [Example.make(f"q{i}", f"#### {i}", str(i)) for i in range(4)]
    src = PoolSource(exs)
    assert isinstance(src, Source) and src.generative is False
    got = src.candidates()
    assert got == exs and got is not src.candidates()  # a copy: callers may not mutate the pool
    with pytest.raises(CuratorError, match="cannot make new examples"):
        src.similar(exs[:1], 2, seed=0)
    with pytest.raises(CuratorError, match="duplicate"):
        PoolSource(exs + exs[:1])


def test_generator_source_pool_is_deterministic_iid():
    task = synthetic_task("easy")
    a = GeneratorSource(task, pool_size=50, seed=7)
    assert isinstance(a, Source) and a.generative is True
    pool = a.candidates()
    assert len(pool) == 50 and len({e.id for e in pool}) == 50
    assert [e.id for e in pool] == [e.id for e in task.generate(50, seed=7)]
    assert [e.id for e in GeneratorSource(task, 50, seed=7).candidates()] == [e.id for e in pool]
    assert {e.id for e in GeneratorSource(task, 50, seed=8).candidates()}.isdisjoint({e.id for e in pool})
    with pytest.raises(ConfigError, match="pool_size"):
        GeneratorSource(task, pool_size=0)


def test_generator_source_similar():
    src = GeneratorSource(synthetic_task("medium"), pool_size=20, seed=0)
    parents = src.candidates()[:3]
    new = src.similar(parents, n_per=4, seed=1)
    assert len(new) == 12
    pool_ids = {e.id for e in src.candidates()}
    by_parent = {}
    for e in new:
        assert e.id not in pool_ids
        by_parent.setdefault(e.meta["parent_id"], []).append(e)
    assert set(by_parent) == {p.id for p in parents}
    for p in parents:
        assert all(k.meta["structure"] == p.meta["structure"] for k in by_parent[p.id])
    # each parent's draws depend on (seed, id), not on the order the parents are given in
    again = src.similar(parents[::-1], n_per=4, seed=1)
    assert sorted(e.id for e in again) == sorted(e.id for e in new)
    assert {e.id for e in src.similar(parents, 4, seed=2)}.isdisjoint({e.id for e in new})
