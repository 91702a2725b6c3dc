"""A curator strategy inside TRL's real GRPOTrainer (tiny in-process model, CPU, a few steps)."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from curator.errors import ConfigError  # noqa: E402
from curator.integrations.grpo import STATE_FILE, CuratedSampler, GRPOCuration, grader_reward  # noqa: E402
from curator.integrations.rl import RolloutCurator, rollout_pool  # noqa: E402
from curator.models import load_model  # noqa: E402


def dataset(n: int = 12) -> Dataset:
    return Dataset.from_list([{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(n)])


def scripted_reward(completions, curator_id, trainer_state, **kw):
    """Rewards that depend only on the prompt, the completion's place and the step (reproducible)."""
    return [float((int(i) * 7 + j + trainer_state.global_step) % 3 == 0) for j, i in enumerate(curator_id)]


def trainer(tmp_path, reward=scripted_reward, **cfg) -> GRPOTrainer:
    lm = load_model("tiny-random")
    args = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        max_steps=4,
        gradient_accumulation_steps=2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
        learning_rate=1e-3,
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    args.update(cfg)
    return GRPOTrainer(
        model=lm.model,
        processing_class=lm.tokenizer,
        reward_funcs=[reward],
        args=GRPOConfig(**args),
        train_dataset=dataset(),
    )


def test_sampler_has_repeat_samplers_layout():
    c = RolloutCurator(rollout_pool([str(i) for i in range(6)]), "iid", seed=0)
    s = CuratedSampler(c, mini_repeat_count=2, batch_size=3, repeat_count=2)
    out = list(s)
    assert len(s) == len(out) == 2 * 3 * 2 * 2  # 2 blocks per epoch
    first = c._positions(c.select(3, index=0)).tolist()
    block = [p for p in first for _ in range(2)]
    assert out[:12] == block + block
    assert c.n_selections == 2


def test_grader_reward_grades_completions_and_names_a_missing_column():
    r = grader_reward("numeric")
    assert r.__name__ == "curator_numeric"
    assert r(["The answer is 3", [{"role": "assistant", "content": "4"}], "nope"], answer=["3", "4", "5"]) == [
        1.0,
        1.0,
        0.0,
    ]
    cut = grader_reward("gsm8k", stop=["\nDone"])
    assert cut(["#### 3\nDone. Q: x #### 9", "#### 9"], answer=["3", "3"]) == [1.0, 0.0]
    assert grader_reward("gsm8k")(["#### 3\nDone. Q: x #### 9"], answer=["3"]) == [0.0]  # the last #### counts
    with pytest.raises(ConfigError, match="has no 'answer' column"):
        r(["3"], solution=["3"])


def test_grpo_trainer_runs_under_a_strategy_and_resumes_with_identical_prompts(tmp_path):
    # uninterrupted: 4 optimizer steps (gradient accumulation 2, num_generations 2), saved at step 2
    t = trainer(tmp_path, save_strategy="steps", save_steps=2)
    cur = GRPOCuration("drop-solved-failed").attach(t)
    t.train()
    whole = cur.curator.state_dict()
    # every generation batch: 8 completions of 4 distinct prompts; 4 generations + 1 fetched ahead
    assert len(whole["log"]) == 5 and all(len(set(s)) == 4 for s in whole["log"])
    assert cur.curator.rollouts == 4 * 8 and cur.curator.checkpoint == 4
    saved = json.load(open(os.path.join(tmp_path, "out", "checkpoint-2", STATE_FILE)))
    assert saved["log"] == whole["log"][: len(saved["log"])] and saved["last_step"] == 1

    # killed after the checkpoint at step 2; a fresh process resumes from it
    t2 = trainer(tmp_path, save_strategy="steps", save_steps=2)
    cur2 = GRPOCuration("drop-solved-failed").attach(t2)
    t2.train(resume_from_checkpoint=os.path.join(tmp_path, "out", "checkpoint-2"))
    assert cur2.curator.state_dict() == whole  # same prompts drawn, same ledger


def test_real_rewards_reach_the_ledger(tmp_path):
    t = trainer(tmp_path, reward=grader_reward("numeric"), max_steps=2)
    cur = GRPOCuration("learnability", {"n": 2}, grader="numeric").attach(t)
    t.train()
    led = cur.curator.ledger()
    assert led.meta["kind"] == "rollout" and int(led.df["n_samples"].sum()) == 16
    logged = [h["reward"] for h in t.state.log_history if "reward" in h]
    per_step = led.df.groupby("checkpoint")["n_correct"].sum() / 8
    assert per_step.tolist() == pytest.approx(logged)  # the ledger holds the trainer's own rewards
    # grader="numeric": the answers extracted from the latest group of each drawn prompt are kept too
    kept = {p: len(a) for p, a in cur.curator._answers.items()}
    assert kept and kept == {p: int(n) for p, n in enumerate(cur.curator._last_ns) if n}


TWO_RANKS = """
import json, sys
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer
from curator.distributed import rank, shutdown
from curator.integrations.grpo import GRPOCuration
from curator.models import load_model

def scripted_reward(completions, curator_id, trainer_state, **kw):
    return [float((int(i) * 7 + j + trainer_state.global_step) % 3 == 0) for j, i in enumerate(curator_id)]

lm = load_model("tiny-random")
ds = Dataset.from_list([{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(24)])
args = GRPOConfig(output_dir=sys.argv[1], per_device_train_batch_size=4, num_generations=2, max_completion_length=4,
    max_steps=3, gradient_accumulation_steps=2, report_to="none", save_strategy="no", seed=0, bf16=False,
    use_cpu=True, disable_tqdm=True)
t = GRPOTrainer(model=lm.model, processing_class=lm.tokenizer, reward_funcs=[scripted_reward], args=args,
    train_dataset=ds)
cur = GRPOCuration("drop-solved-failed").attach(t)
if rank() != 0:
    def refuse(k):
        raise AssertionError("only the main process selects")
    cur.curator._choose = refuse
t.train()
with open(f"{sys.argv[1]}/rank{rank()}.json", "w") as fh:
    json.dump(cur.curator.state_dict(), fh)
del t, cur, lm  # everything holding the process group, then end it before the interpreter does
shutdown()
"""


@pytest.mark.slow
def test_two_processes_draw_one_broadcast_selection_and_hold_one_ledger(tmp_path):
    import subprocess
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from launching import launch_cmd

    script = tmp_path / "worker.py"
    script.write_text(TWO_RANKS)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CURATOR_COLLECTIVE_TIMEOUT="120")
    proc = subprocess.run(
        launch_cmd(2, [str(script), str(tmp_path)]), env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1
    # per generation: 4 prompts per device x 2 devices x 2 accumulation steps / 2 generations = 8 distinct
    assert len(r0["log"]) == 3 and all(len(set(s)) == 8 for s in r0["log"])
    observed = sum(cell[1] for cells in r0["windows"].values() for cell in cells)
    assert observed == 3 * 16  # both ranks' completions, every step
