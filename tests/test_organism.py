"""The model organism: deterministic build, refusals before training, the cache, the corpus."""

from __future__ import annotations

import pytest

from curator.errors import ConfigError
from curator.organism import build, config_from_dict, organism_dir, parse_spec, weights_hash
from curator.organism.corpus import build_tokenizer, skill_counts, terse_solution, vocabulary

# small enough to build in a few seconds; still >= 20 problems per covered skill and more answer
# tokens than parameters
SMALL = "organism?corpus_size=1500&epochs=1&hidden=16&layers=1&heads=2&batch_size=32&warmup=5"


def test_terse_solution_keeps_only_the_equations():
    trace = "9 * 3 = 27, so the cost of the cups is 27 dollars.\nThe money he has left: 32 - 27 = 5 dollars.\n#### 5"
    assert terse_solution(trace, "5") == "9 * 3 = 27\n32 - 27 = 5\n#### 5"
    assert terse_solution("Leo has 4 * (2 + 3) = 20 coins.\n#### 20", "20") == "4 * (2 + 3) = 20\n#### 20"


def test_skill_counts_follow_coverage_and_sum_to_n():
    assert skill_counts({"a": 0.5, "b": 0.3, "c": 0.2, "d": 0.0}, 10) == {"a": 5, "b": 3, "c": 2, "d": 0}
    c = skill_counts({"a": 1, "b": 1, "c": 1}, 10)
    assert sum(c.values()) == 10 and sorted(c.values()) == [3, 3, 4]


def test_tokenizer_round_trips_task_text_exactly():
    text = "Omar has $32. Leo's 9 cups cost 3 * 9 = 27 dollars.\nAnswer: 32 - 27 = 5\n#### 5\nDone."
    tok = build_tokenizer(vocabulary([text], extra=["\nDone"]))
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_ids_to_tokens(ids)[1:6] == ["Omar", " has", " $", "3", "2"]


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="absent from both pretraining"):
        config_from_dict({"coverage": "comparison:1,sharing:0", "pool_skills": "comparison"})
    with pytest.raises(ConfigError, match="unknown organism setting 'layer'.*did you mean 'layers'"):
        parse_spec("organism?layer=2")
    with pytest.raises(ConfigError, match="fewer than 20 pretraining problems"):
        config_from_dict({"corpus_size": 100})
    with pytest.raises(ConfigError, match="unknown skills"):
        config_from_dict({"coverage": "algebra:1"})
    with pytest.raises(ConfigError, match="multiple of heads"):
        config_from_dict({"hidden": 30, "heads": 4})


def test_fractional_settings_parse_as_numbers():
    cfg = parse_spec("organism?verbose_share=0.5&learning_rate=0.001&hidden=64")
    assert (cfg.verbose_share, cfg.learning_rate, cfg.hidden) == (0.5, 0.001, 64)


def test_too_small_vocabulary_and_corpus_are_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="vocab_size=50 is too small: the task's text needs"):
        build(parse_spec(SMALL + "&vocab_size=50"), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="corpus is too small for the model"):
        build(parse_spec("organism?corpus_size=300&epochs=1&hidden=64&layers=2"), tmp_path / "b", progress=False)
    assert not (tmp_path / "a" / "config.json").exists() and not (tmp_path / "b" / "config.json").exists()


def test_the_organism_builds_bit_identically_from_a_seed(tmp_path):
    from transformers import AutoModelForCausalLM

    hashes = []
    for name, spec in (("a", SMALL), ("b", SMALL), ("c", SMALL + "&seed=1")):
        build(parse_spec(spec), tmp_path / name, progress=False)
        hashes.append(weights_hash(AutoModelForCausalLM.from_pretrained(tmp_path / name)))
    assert hashes[0] == hashes[1]
    assert hashes[0] != hashes[2]


def test_cache_builds_once_and_never_uses_a_half_built_organism(tmp_path, monkeypatch):
    import sys

    from curator.models import load_model

    ob = sys.modules["curator.organism.build"]  # the package re-exports a function named build

    monkeypatch.setenv("CURATOR_CACHE", str(tmp_path))
    # a killed build: the temporary directory is removed and nothing lands in the final place
    real_build = ob.build

    def dies(cfg, out, progress=True, timings=None):
        (out / "config.json").write_text("{}")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(ob, "build", dies)
    with pytest.raises(KeyboardInterrupt):
        organism_dir(SMALL, progress=False)
    assert list((tmp_path / "models").iterdir()) == []

    calls = []
    monkeypatch.setattr(ob, "build", lambda *a, **k: calls.append(1) or real_build(*a, **k))
    d1 = organism_dir(SMALL, progress=False)
    d2 = organism_dir(SMALL, progress=False)
    assert d1 == d2 and len(calls) == 1 and d1.name == f"organism-{parse_spec(SMALL).key()}"
    loaded = load_model(SMALL, device="cpu")
    assert loaded.model.config.hidden_size == 16 and loaded.tokenizer.pad_token_id == 0


def test_selected_skills_counts_what_each_strategy_added_and_trained_on(tmp_path):
    import json

    from curator.data.example import Example
    from curator.drivers.organism_report import selected_skills

    pool = [
        Example(id=f"x{i}", question="q", solution="s", answer="1", meta={"skill": "sharing" if i < 4 else "rates"})
        for i in range(8)
    ]
    for seed, loss_picks in ((0, ["x0", "x1"]), (1, ["x2", "x4"])):
        d = tmp_path / f"seed-{seed}"
        d.mkdir()
        (d / "seed_ids.json").write_text(json.dumps(["x7"]))
        for name, picks in (("loss", loss_picks), ("iid", ["x5", "x6"])):
            for r, nxt in enumerate((["x7"] + picks, ["x7"] + picks + ["x3"])):  # round 1 adds x3, untrained
                rd = d / name / f"round-{r:02d}"
                rd.mkdir(parents=True)
                (rd / "DONE").write_text("")
                (rd / "next_train_ids.json").write_text(json.dumps(nxt))
            (d / name / "run.json").write_text("{}")
    t = selected_skills(tmp_path, pool)
    assert t.loc["loss", "sharing"] == 0.75 and t.loc["loss", "rates"] == 0.25 and t.loc["loss", "n"] == 4
    assert t.loc["iid", "rates"] == 1.0 and t.loc["iid", "sharing"] == 0.0
