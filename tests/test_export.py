"""`curate export`: a real `curate run` directory -> the selected training set as a dataset that
`datasets` loads and TRL's SFTTrainer trains on; unfinished rounds and other bad input refused."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from launching import tiny_recipe

from curator.errors import ConfigError, CuratorError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")

POOL = "synthetic:easy?n=12&seed=1"
TINY = tiny_recipe(
    name="tiny-export",
    seed=3,
    data={"pool": POOL, "test": "synthetic:easy?n=2&seed=2"},
    evaluation={"max_new_tokens": 4},
    dynamics={"max_new_tokens": 4},
    loop={"budget": 2},
    strategies=[{"name": "loss"}],
)
# round 0's planted ledger over the seed set (k=2, one checkpoint, p=1.105): correct counts and
# perplexities; the last example is memorized, so its PreMemAcc is 0 although it answers right
CORRECT = [2, 1, 0, 2]
PPL = [2.0, 2.0, 2.0, 1.0]
PREMEM = [1.0, 0.5, 0.0, 0.0]
SCORES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]  # the 8 candidates'; the top 2 are selected


def _write_round(rd, ledger, next_ids, selection=None):
    """A finished round as loops/active.py writes it (ledger, selection, next ids, DONE last)."""
    from curator.io import atomic_write_text

    rd.mkdir(parents=True)
    ledger.to_parquet(rd / "ledger.parquet")
    if selection is not None:
        selection.to_parquet(rd / "selection.parquet", index=False)
    atomic_write_text(rd / "next_train_ids.json", json.dumps(next_ids))
    atomic_write_text(rd / "DONE", "")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A two-round run directory of strategy 'loss' with planted ledgers and scores."""
    from curator.data.loaders import load_examples
    from curator.dynamics.ledger import Ledger
    from curator.recipes import recipe_from_dict

    out = tmp_path_factory.mktemp("export") / "run"
    d = json.loads(json.dumps(TINY))
    d["output_dir"] = str(out)
    out.mkdir(parents=True)
    (out / "recipe.yaml").write_text(recipe_from_dict(d).to_yaml())
    pool = [e.id for e in load_examples(POOL)]
    seed, cands = pool[:4], pool[4:]
    (out / "seed_ids.json").write_text(json.dumps(seed))
    chosen = [cands[7], cands[6]]
    sel = pd.DataFrame(
        {
            "example_id": cands,
            "score": SCORES,
            "selected": [i in chosen for i in cands],
            "rank": [chosen.index(i) if i in chosen else -1 for i in cands],
        }
    )
    l0 = Ledger.from_arrays(seed, np.array(CORRECT)[:, None], k=2, perplexity=np.array(PPL)[:, None], p=1.105)
    _write_round(out / "loss" / "round-00", l0, seed + chosen, sel)
    l1 = Ledger.from_arrays(seed + chosen, np.full((6, 1), 2), k=2, perplexity=np.full((6, 1), 1.5), p=1.105)
    _write_round(out / "loss" / "round-01", l1, seed + chosen)
    return out


def test_export_round0_holds_the_next_training_set_with_premem_and_scores(run_dir, tmp_path):
    import datasets

    from curator.export import export_selection

    res = export_selection(run_dir, tmp_path / "r0.jsonl", round=0)
    assert (res.strategy, res.round, res.n_examples) == ("loss", 0, 6)
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "r0.jsonl"), split="train")
    seed = json.loads((run_dir / "seed_ids.json").read_text())
    assert ds["id"] == json.loads((run_dir / "loss" / "round-00" / "next_train_ids.json").read_text())
    assert ds["premem_acc"] == PREMEM + [None, None]  # the two new ones are not trained on yet (NaN)
    assert ds["selected_round"] == [-1] * 4 + [0, 0]
    assert ds["score"][4:] == [0.8, 0.7] and all(s is None for s in ds["score"][:4])
    assert ds["id"][:4] == seed
    # the exact text curator trains on: prompt template + target template
    first = ds[0]
    assert first["prompt"] == first["question"] + "\nAnswer:"
    assert first["completion"] == " " + first["solution"] + "\nDone."


def test_export_formats_and_only_new(run_dir, tmp_path):
    import datasets

    from curator.data.loaders import load_examples
    from curator.export import export_selection

    export_selection(run_dir, tmp_path / "new.parquet", round=0, only_new=True)
    new = datasets.load_dataset("parquet", data_files=str(tmp_path / "new.parquet"), split="train")
    assert len(new) == 2 and set(new["selected_round"]) == {0}
    export_selection(run_dir, tmp_path / "chat", round=0, chat=True)
    chat = datasets.load_from_disk(str(tmp_path / "chat"))
    assert [m["role"] for m in chat[0]["messages"]] == ["user", "assistant"]
    assert "prompt" not in chat.column_names
    # curator reads its exports back: same examples, ids and answers
    back = load_examples(tmp_path / "chat")
    assert [e.id for e in back] == chat["id"] and [e.answer for e in back] == chat["answer"]
    # no half-written leftovers next to the outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat", "new.parquet"]


def test_export_refuses_an_unfinished_round_and_other_bad_input(run_dir, tmp_path, monkeypatch):
    from curator.export import export_selection

    # round 1 is the last round; hide its DONE marker as a crash before it would be written
    done = run_dir / "loss" / "round-01" / "DONE"
    done.rename(done.with_name("DONE.hidden"))
    try:
        with pytest.raises(DataError) as e:
            export_selection(run_dir, tmp_path / "x.jsonl", round=1)
        msg = str(e.value)
        assert "round-01" in msg and "has not finished" in msg and "rerun `curate run`" in msg and "\n" not in msg
        assert not (tmp_path / "x.jsonl").exists()
        # without --round the last finished one is taken
        assert export_selection(run_dir, tmp_path / "last.jsonl").round == 0
    finally:
        done.with_name("DONE.hidden").rename(done)
    with pytest.raises(ConfigError, match="no rounds of strategy 'iid'.*available: loss"):
        export_selection(run_dir, tmp_path / "x.jsonl", strategy="iid")
    with pytest.raises(ConfigError, match="round-07 does not exist"):
        export_selection(run_dir, tmp_path / "x.jsonl", round=7)
    with pytest.raises(DataError, match="not a `curate run` directory"):
        export_selection(tmp_path, tmp_path / "x.jsonl")
    (tmp_path / "taken.jsonl").write_text("keep me\n")
    with pytest.raises(ConfigError, match="already exists.*--overwrite"):
        export_selection(run_dir, tmp_path / "taken.jsonl")
    assert (tmp_path / "taken.jsonl").read_text() == "keep me\n"
    export_selection(run_dir, tmp_path / "taken.jsonl", overwrite=True)
    assert (tmp_path / "taken.jsonl").read_text() != "keep me\n"


def test_export_refuses_a_ledger_that_does_not_match_the_training_set(run_dir, tmp_path):
    from curator.dynamics.ledger import read_ledger
    from curator.export import export_selection

    path = run_dir / "loss" / "round-00" / "ledger.parquet"
    original = path.read_bytes()
    ledger = read_ledger(path)
    ledger.df = ledger.df.replace({"example_id": {ledger.example_ids[0]: "someone-else"}})
    ledger.to_parquet(path)
    try:
        with pytest.raises(DataError, match="ledger does not match the examples.*someone-else"):
            export_selection(run_dir, tmp_path / "x.jsonl", round=0)
    finally:
        path.write_bytes(original)


def test_push_to_hub_goes_through_the_hub_client_up_to_its_offline_error(run_dir, monkeypatch):
    from curator.data import loaders
    from curator.export import export_selection

    monkeypatch.setattr(loaders, "_hub_unreachable", lambda timeout=3.0: "huggingface.co:443: offline")
    with pytest.raises(CuratorError, match="cannot push to hub dataset 'me/curated'.*unreachable.*offline"):
        export_selection(run_dir, push_to_hub="me/curated")
    # past the reachability check, the real client runs and its failure is one line
    monkeypatch.setattr(loaders, "_hub_unreachable", lambda timeout=3.0: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CuratorError) as e:
        export_selection(run_dir, push_to_hub="me/curated")
    assert "cannot push to hub dataset 'me/curated'" in str(e.value) and "\n" not in str(e.value)


def test_cli_export_prints_what_it_wrote(run_dir, tmp_path, capsys):
    from curator.cli.main import main

    main(["export", str(run_dir), "--out", str(tmp_path / "o.parquet"), "--round", "0"])
    assert capsys.readouterr().out.strip() == f"6 examples of loss, round 0 -> {tmp_path / 'o.parquet'}"
    with pytest.raises(SystemExit) as e:
        main(["export", str(run_dir)])
    assert e.value.code == 2


@pytest.mark.slow
def test_a_real_run_exports_and_the_export_trains_with_sft_trainer(tmp_path):
    """`curate run` (two rounds, tiny model) -> `curate export` -> datasets -> TRL SFTTrainer."""
    import datasets
    from accelerate.state import AcceleratorState, GradientState
    from trl import SFTConfig, SFTTrainer

    from curator.dynamics.ledger import read_ledger
    from curator.dynamics.metrics import premem_acc
    from curator.export import export_selection
    from curator.models import load_model
    from curator.recipes import recipe_from_dict
    from curator.run import run_recipe

    d = json.loads(json.dumps(TINY))
    d.update(output_dir=str(tmp_path / "run"), strategies=[{"name": "iid"}])
    os.environ["CURATOR_QUIET"] = "1"
    try:
        run_recipe(recipe_from_dict(d), progress=False, echo=lambda *a, **k: None)
    finally:
        os.environ.pop("CURATOR_QUIET", None)
    rd = tmp_path / "run" / "iid" / "round-00"
    export_selection(tmp_path / "run", tmp_path / "train.jsonl", round=0)
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "train.jsonl"), split="train")
    assert ds["id"] == json.loads((rd / "next_train_ids.json").read_text())
    final = premem_acc(read_ledger(rd / "ledger.parquet")).iloc[:, -1]
    assert ds["premem_acc"][:4] == [final[i] for i in ds["id"][:4]]
    sel = pd.read_parquet(rd / "selection.parquet").set_index("example_id")
    assert ds["score"][4:] == [sel.loc[i, "score"] for i in ds["id"][4:]]

    lm = load_model("tiny-random")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    cfg = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=2,
        per_device_train_batch_size=3,
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        max_length=256,
    )
    try:
        out = SFTTrainer(model=lm.model, args=cfg, train_dataset=ds, processing_class=lm.tokenizer).train()
    finally:  # a Trainer leaves accelerate's process-wide state behind for later tests
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert out.global_step == 2 and np.isfinite(out.training_loss)
    assert any(not (p == before[n]).all() for n, p in lm.model.named_parameters())
