"""Probe sets: for each probe prompt, the families of responses whose log-probability is tracked.

The families follow Ren & Sutherland (arXiv 2407.10490, §4): how one update on (x_u, y_u) moves
log π(y | x_o) depends on how y relates to the trained responses, so each family is a different
relation to y+ — itself, its rephrasing, another prompt's answer, a test answer, unrelated text,
and non-language made of the same words. Every family is a response to the *probe's* prompt.

| family | response to probe prompt x_i |
| --- | --- |
| `chosen` | y+_i |
| `rejected` | y-_i |
| `chosen_rephrase` | a rephrasing of y+_i (user column, or made by a rephrasing model) |
| `rejected_rephrase` | a rephrasing of y-_i |
| `other_chosen` | y+_j of another training prompt j != i (seeded pick) |
| `test_chosen` | y+ of a held-out test prompt (seeded pick) |
| `unrelated` | an unrelated sentence (seeded pick from `UNRELATED`) |
| `chosen_shuffled` | the words of y+_i in a seeded random order |
| `unrelated_shuffled` | the words of the `unrelated` sentence in a seeded random order |
| `greedy` | the model's own greedy response to x_i before any training |

Each (probe, family) pick draws from its own stream seeded by (seed, probe id, family), so adding a
probe or a family never changes the others.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from curator import models  # models.load_model: looked up when called, so it can be replaced
from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.errors import ConfigError, CuratorError, DataError
from curator.probes.preferences import PreferenceRow
from curator.registry import Registry
from curator.sampling.base import SamplingParams
from curator.sampling.hf import HFSampler

# plain sentences on nothing the tasks talk about (no numbers, no arithmetic)
UNRELATED = (
    "The old lighthouse keeper painted the railings blue every spring before the storms arrived.",
    "Quiet rivers carve deep valleys over thousands of years, shaping the hills around them.",
    "She tuned the violin carefully while the audience found their seats in the dim hall.",
    "Migrating geese fly in a loose formation that saves energy on their long journey south.",
    "The museum reopened its east wing after restoring the painted ceiling of the grand staircase.",
    "Fresh snow muffles the sound of the city, and the streets feel strangely calm at night.",
)

REPHRASE_PROMPT = (
    "Rephrase the following solution in different words, keeping every number and "
    "the final line exactly as they are.\n\n{response}\n\nRephrased:"
)


@dataclass(frozen=True)
class ProbeSet:
    """Probe prompts and, per family, one response per probe (aligned with `probes`).

    Attributes:
        probes: the probe rows (their questions are the prompts).
        responses: family -> list of response texts (solutions, before the target template), one
            per probe; the `greedy` family holds target texts as the model produced them.
        notes: families left out and why (e.g. no rephrasings were given).
    """

    probes: list[PreferenceRow]
    responses: dict[str, list[str]]
    notes: list[str] = field(default_factory=list)

    @property
    def families(self) -> list[str]:
        return [f for f in FAMILIES if f in self.responses] + [f for f in self.responses if f not in FAMILIES]

    def pairs(self, fmt: PromptFormat, tokenizer: Any = None) -> tuple[list[str], list[str], list[tuple[str, str]]]:
        """(prompts, targets, keys) over every (family, probe), where keys are (family, probe id).

        Responses go through the target template like training targets do, so y+ here is
        token for token what SFT trained on; the greedy response is already a target text.
        """
        prompts, targets, keys = [], [], []
        for fam in self.families:
            for row, resp in zip(self.probes, self.responses[fam]):
                ex = Example(id=row.id, question=row.question, solution=resp, answer="")
                prompts.append(fmt.prompt_text(ex, tokenizer))
                targets.append(resp if fam == "greedy" else fmt.target_text(ex))
                keys.append((fam, row.id))
        return prompts, targets, keys

    def to_dict(self) -> dict[str, Any]:
        return {"probes": [r.__dict__ for r in self.probes], "responses": self.responses, "notes": self.notes}


def shuffle_words(text: str, rng: random.Random) -> str:
    """The words of `text` (split on whitespace) in a random order, joined by single spaces.

    When the words are not all equal, the order differs from the original (a reshuffle is drawn
    until it does), so a shuffled response is never the response itself.
    """
    words = text.split()
    if len(set(words)) < 2:
        return " ".join(words)
    out = list(words)
    while out == words:
        rng.shuffle(out)
    return " ".join(out)


def _rng(seed: int, probe_id: str, family: str) -> random.Random:
    return random.Random(f"{seed}|{probe_id}|{family}")


def build_probe_set(
    probes: Sequence[PreferenceRow],
    train: Sequence[PreferenceRow],
    test: Sequence[PreferenceRow] = (),
    *,
    seed: int = 0,
    unrelated: Sequence[str] = UNRELATED,
    rephraser: Any = None,
    greedy: Sequence[str] | None = None,
    rephrase_max_new_tokens: int = 128,
) -> ProbeSet:
    """The response families for `probes` (see the module docstring).

    Args:
        probes: probe rows; usually the first few training rows (the paper probes training prompts).
        train: the training rows; `other_chosen` picks among those with another id.
        test: held-out rows (only their chosen response is used); no rows: no `test_chosen`.
        unrelated: sentences for `unrelated` / `unrelated_shuffled`.
        rephraser: a Sampler used to rephrase y+ and y- where a probe row has no rephrase column
            (greedy decoding of `REPHRASE_PROMPT`); None: rows must bring their own, or the
            rephrase families are left out (said in `notes`).
        greedy: the model's greedy target text per probe, made before training (`greedy_responses`).

    Raises:
        ConfigError: no probes; fewer than two distinct training rows; no unrelated sentence.
    """
    probes = list(probes)
    if not probes:
        raise ConfigError("probes: no probe rows; give at least one (probes.n >= 1)")
    others = {r.id: r for r in train}
    if len(others) < 2:
        raise ConfigError("the other_chosen family needs at least two training rows with different ids")
    if not unrelated or not all(isinstance(s, str) and s.split() for s in unrelated):
        raise ConfigError("probes.unrelated: give at least one non-empty unrelated sentence")
    inputs = _FamilyInputs(
        probes, others, list(test), seed, list(unrelated), rephraser, greedy, rephrase_max_new_tokens
    )
    notes: list[str] = []
    resp: dict[str, list[str]] = {}
    for name, family in PROBE_FAMILIES.items():  # in order: a family may use one made before it
        made = family.build(inputs, resp)
        if isinstance(made, str):
            notes.append(made)
        elif made is not None:
            resp[name] = made
    return ProbeSet(probes=probes, responses=resp, notes=notes)


# ---------------------------------------------------------------- the families


@dataclass(frozen=True)
class _FamilyInputs:
    """What a family builder may use (the arguments of `build_probe_set`)."""

    probes: list[PreferenceRow]
    train: dict[str, PreferenceRow]  # by id
    test: list[PreferenceRow]
    seed: int
    unrelated: list[str]
    rephraser: Any
    greedy: Sequence[str] | None
    rephrase_max_new_tokens: int


@dataclass(frozen=True)
class ProbeFamily:
    """One family of probe responses: what it is, and ``build(inputs, made)`` giving one response
    per probe, a note saying why the family is left out, or None (left out, nothing to say).
    ``made`` holds the families built before it, in registration order."""

    description: str
    build: Callable[[_FamilyInputs, dict[str, list[str]]], list[str] | str | None]


def _rephrased(col: str, src: str) -> Callable[[_FamilyInputs, dict[str, list[str]]], list[str] | str]:
    """The probe rows' own ``col`` rephrasings, the rephrasing model's where a row has none."""

    def build(x: _FamilyInputs, made: dict[str, list[str]]) -> list[str] | str:
        probes = x.probes
        given = [getattr(r, col) for r in probes]
        missing = [i for i, g in enumerate(given) if g is None]
        if missing and x.rephraser is not None:
            texts = rephrase(x.rephraser, [getattr(probes[i], src) for i in missing], x.rephrase_max_new_tokens)
            for i, text in zip(missing, texts):
                if not text.strip():
                    raise DataError(
                        f"the rephrasing model returned an empty rephrasing of probe {i} "
                        f"(id {probes[i].id}) {src}; give a '{col}' column or another model"
                    )
                given[i] = text
            missing = []
        if missing:
            return (
                f"{col} left out: probe row {missing[0]} (id {probes[missing[0]].id}) has no '{col}' "
                "and no rephrasing model is set (probes.rephrase_model)"
            )
        return given

    return build


def _other_chosen(x: _FamilyInputs, made: dict[str, list[str]]) -> list[str]:
    ids = sorted(x.train)
    out = []
    for r in x.probes:
        choices = [i for i in ids if i != r.id]
        out.append(x.train[_rng(x.seed, r.id, "other_chosen").choice(choices)].chosen)
    return out


def _test_chosen(x: _FamilyInputs, made: dict[str, list[str]]) -> list[str] | str:
    if not x.test:
        return "test_chosen left out: no test rows were given"
    return [x.test[_rng(x.seed, r.id, "test_chosen").randrange(len(x.test))].chosen for r in x.probes]


def _unrelated(x: _FamilyInputs, made: dict[str, list[str]]) -> list[str]:
    return [x.unrelated[_rng(x.seed, r.id, "unrelated").randrange(len(x.unrelated))] for r in x.probes]


def _unrelated_shuffled(x: _FamilyInputs, made: dict[str, list[str]]) -> list[str]:
    return [shuffle_words(u, _rng(x.seed, r.id, "unrelated_shuffled")) for u, r in zip(made["unrelated"], x.probes)]


def _greedy(x: _FamilyInputs, made: dict[str, list[str]]) -> list[str] | None:
    if x.greedy is None:
        return None
    if len(x.greedy) != len(x.probes):
        raise ConfigError(f"greedy: {len(x.greedy)} responses for {len(x.probes)} probes")
    empty = [i for i, g in enumerate(x.greedy) if not g]
    if empty:
        raise DataError(
            f"the model's greedy response to probe {empty[0]} is empty (it ended at once); "
            "the greedy family cannot be scored — raise probes.greedy_max_new_tokens or use "
            "another model"
        )
    return list(x.greedy)


# the families in the order they are built and reported (the module docstring's table)
PROBE_FAMILIES: Registry[ProbeFamily] = Registry("probe family", base=ProbeFamily, ordered=True)
for _name, _family in (
    ("chosen", ProbeFamily("y+_i", lambda x, made: [r.chosen for r in x.probes])),
    ("rejected", ProbeFamily("y-_i", lambda x, made: [r.rejected for r in x.probes])),
    ("chosen_rephrase", ProbeFamily("a rephrasing of y+_i", _rephrased("chosen_rephrase", "chosen"))),
    ("rejected_rephrase", ProbeFamily("a rephrasing of y-_i", _rephrased("rejected_rephrase", "rejected"))),
    ("other_chosen", ProbeFamily("y+_j of another training prompt j != i", _other_chosen)),
    ("test_chosen", ProbeFamily("y+ of a held-out test prompt", _test_chosen)),
    ("unrelated", ProbeFamily("an unrelated sentence", _unrelated)),
    (
        "chosen_shuffled",
        ProbeFamily(
            "the words of y+_i in a seeded random order",
            lambda x, made: [shuffle_words(r.chosen, _rng(x.seed, r.id, "chosen_shuffled")) for r in x.probes],
        ),
    ),
    ("unrelated_shuffled", ProbeFamily("the words of the unrelated sentence, shuffled", _unrelated_shuffled)),
    ("greedy", ProbeFamily("the model's own greedy response before training", _greedy)),
):
    PROBE_FAMILIES.register(_name, _family)
FAMILIES = tuple(PROBE_FAMILIES)


def rephrase(sampler: Any, responses: Sequence[str], max_new_tokens: int = 128) -> list[str]:
    """Greedy rephrasings of `responses` by `sampler` (one per response)."""
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop=("\n\n",))
    outs = sampler.generate([REPHRASE_PROMPT.format(response=r) for r in responses], 1, params)
    return [o[0].strip() for o in outs]


def greedy_responses(
    sampler: Any, probes: Sequence[PreferenceRow], fmt: PromptFormat, tokenizer: Any = None, max_new_tokens: int = 96
) -> list[str]:
    """The model's greedy target text for each probe prompt, up to and including its stop string.

    The greedy family is scored on exactly the text the model produced, its ending included (a
    completion that never reaches a stop string is kept whole, `max_new_tokens` long).
    """
    prompts = [
        fmt.prompt_text(Example(id=r.id, question=r.question, solution="", answer=""), tokenizer) for r in probes
    ]
    # generate without stop strings and cut here: the sampler drops the stop string it cuts at, and
    # whether the completion ended on one (rather than running out of tokens) must be kept
    outs = sampler.generate(prompts, 1, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop=()))
    texts = []
    for (text,) in outs:
        ends = [(text.find(st) + len(st)) for st in fmt.stop if st and st in text]
        texts.append(text[: min(ends)] if ends else text)
    return texts


def load_rephraser(spec: str | None, setting: str = "probes.rephrase_model") -> Any:
    """A greedy HFSampler for the rephrasing model, or None.

    Raises ConfigError naming the setting when the model cannot be loaded.
    """
    if not spec:
        return None
    try:
        loaded = models.load_model(spec)
    except CuratorError as e:
        raise ConfigError(f"{setting}: the rephrasing model {spec!r} is not available ({e})") from None
    return HFSampler.from_loaded(loaded)
