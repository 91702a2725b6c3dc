"""A TRL GRPOTrainer run whose prompts a curator strategy chooses (CPU, the model organism, ~2 min).

    python examples/grpo_organism.py [strategy] [steps]      # default: learnability, 8 steps

Reward = curator's gsm8k grader's verdict (0/1). The one curator line is `GRPOCuration(...).attach`.
"""

import sys

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from curator.data.loaders import load_examples
from curator.integrations import GRPOCuration, grader_reward
from curator.models import load_model

strategy = sys.argv[1] if len(sys.argv) > 1 else "learnability"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 8

lm = load_model("organism")  # built on first use (~5 min on 2 cores), then cached
tok = lm.tokenizer
# the organism ends answers with "\nDone." and never emits EOS: stop generation there
lm.model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("\nDone")]

pool = load_examples("synthetic:easy?n=128&seed=101&min_steps=1&max_steps=2&max_operand=10")
train = Dataset.from_list([{"prompt": f"{e.question}\nAnswer:", "answer": e.answer, "id": e.id} for e in pool])

args = GRPOConfig(
    output_dir="runs/grpo-organism",
    per_device_train_batch_size=32,  # 8 prompts x 4 completions per step
    num_generations=4,
    max_completion_length=72,
    max_steps=steps,
    learning_rate=3e-5,  # calibrated on uniform sampling (docs/RESULTS.md, "RL")
    logging_steps=1,
    save_steps=4,  # each checkpoint holds the selection state: resume_from_checkpoint draws the same prompts
    report_to="none",
    use_cpu=True,
    bf16=False,
)
trainer = GRPOTrainer(
    model=lm.model,
    processing_class=tok,
    reward_funcs=[grader_reward("gsm8k", stop=["\nDone"])],
    args=args,
    train_dataset=train,
)
curation = GRPOCuration(strategy).attach(trainer)  # <- the one extra line
trainer.train()

cur = curation.curator
print(f"{strategy}: {cur.rollouts} rollouts over {cur.n_selections} selections")
print(cur.ledger().df.groupby("checkpoint")[["n_samples", "n_correct"]].sum())
