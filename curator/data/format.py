"""How an Example becomes a (prompt, target) pair, and how that pair becomes token ids.

Training, target perplexity and sampling all go through `PromptFormat` and `encode_pair`, so the
tokens the model is trained on are exactly the tokens whose perplexity is measured.

Defaults are the PreMemAcc paper's: prompt ``question + "\\nAnswer:"``, target
``" " + solution + "\\nDone."``; generation stops at ``"\\nDone."``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from curator.data.example import Example
from curator.errors import ConfigError, CuratorError

DEFAULT_PROMPT = "{question}\nAnswer:"
DEFAULT_TARGET = " {solution}\nDone."
DEFAULT_STOP = ("\nDone.",)


@dataclass(frozen=True)
class PromptFormat:
    """Prompt and target templates.

    Attributes:
        prompt: template over the Example's fields (``{question}``, ``{solution}``, ``{answer}``).
        target: template for the target the model is trained to produce.
        chat: wrap the prompt in the tokenizer's chat template (instruct models); the target then
            follows the assistant turn's opening.
        stop: strings that end a sampled completion (the stop string itself is cut off).
    """

    prompt: str = DEFAULT_PROMPT
    target: str = DEFAULT_TARGET
    chat: bool = False
    stop: tuple[str, ...] = DEFAULT_STOP

    def __post_init__(self):
        problems = []
        for name in ("prompt", "target"):
            tpl = getattr(self, name)
            try:
                tpl.format(question="q", solution="s", answer="a")
            except (KeyError, IndexError, ValueError) as e:
                problems.append(
                    f"format.{name}: template {tpl!r} is invalid ({e}); use "
                    "{question}, {solution} and {answer} only"
                )
        if problems:
            raise ConfigError(problems)

    def prompt_text(self, ex: Example, tokenizer: Any = None) -> str:
        text = self.prompt.format(question=ex.question, solution=ex.solution, answer=ex.answer)
        if not self.chat:
            return text
        if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
            raise ConfigError(
                "format.chat is true but the tokenizer has no chat template; set format.chat=false for base models"
            )
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )

    def target_text(self, ex: Example) -> str:
        return self.target.format(question=ex.question, solution=ex.solution, answer=ex.answer)

    def pairs(self, examples: Sequence[Example], tokenizer: Any = None) -> tuple[list[str], list[str]]:
        return ([self.prompt_text(e, tokenizer) for e in examples], [self.target_text(e) for e in examples])


def encode_pair(tokenizer: Any, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt and target, tokenized separately and concatenated.

    Tokenizing separately keeps the prompt/target boundary exact (joint tokenization can merge the
    last prompt token with the first target token). The BOS token, if the tokenizer adds one, goes
    on the prompt only. No EOS is appended: the target template ends in its own stop marker
    ("\nDone."), as in the paper, so perplexity covers exactly the target text.
    """
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    t = tokenizer(target, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    # a tokenizer that appends EOS to every encoding would put one inside the prompt
    if eos is not None and len(p) > 0 and p[-1] == eos and not prompt.endswith(tokenizer.eos_token or "\0"):
        p = p[:-1]
    return list(p), list(t)


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt ids exactly as `encode_pair` produces them (for sampling)."""
    return encode_pair(tokenizer, prompt, "")[0]


def encode_scoring_pairs(
    tokenizer: Any, prompts: Sequence[str], targets: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    """`encode_pair` for every (prompt, target) a sampler scores, with the checks all backends need."""
    if len(prompts) != len(targets):
        raise CuratorError(f"target_logprobs got {len(prompts)} prompts but {len(targets)} targets")
    pairs = [encode_pair(tokenizer, p, t) for p, t in zip(prompts, targets)]
    for i, (p, _) in enumerate(pairs):
        if not p:
            raise CuratorError(
                f"prompt {i} tokenizes to nothing and the tokenizer adds no BOS token, so "
                "its first target token has no context; give a non-empty prompt"
            )
    return pairs
