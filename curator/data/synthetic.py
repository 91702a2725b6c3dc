"""Synthetic GSM8K-format multi-step arithmetic word problems.

Each problem is built from a *skill* (shopping totals, rates and time, sharing, comparisons,
group totals) and a *shape* (how many items/entities and which operators), realised with random
names, objects and numbers. The arithmetic is an expression DAG; a solution trace walks it in
some valid order (independent sub-results in any order, sums pairwise or in one line, several
subtractions one by one or summed first, commutative operands either way round, equivalent
methods such as ``r*a + r*b`` vs ``r*(a+b)``) and phrases each line from a few templates. So a
problem has several genuinely different valid traces, all ending ``#### <answer>``; one is the
example's target. That is what lets PreMemAcc tell copying the target from solving the problem.

Everything is deterministic by seed, answers are non-negative integers (divisions are exact by
construction), and ``similar`` re-realises the same skill and shape with fresh names and numbers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from curator.data.example import Example
from curator.errors import ConfigError, CuratorError, DataError
from curator.registry import Registry

MAX_STEPS = 10

# ---------------------------------------------------------------- vocabulary

# (name, subject pronoun, possessive)
_NAMES = [
    ("Mia", "she", "her"),
    ("Liam", "he", "his"),
    ("Ava", "she", "her"),
    ("Noah", "he", "his"),
    ("Emma", "she", "her"),
    ("Omar", "he", "his"),
    ("Zoe", "she", "her"),
    ("Ravi", "he", "his"),
    ("Lena", "she", "her"),
    ("Hugo", "he", "his"),
    ("Nora", "she", "her"),
    ("Ivan", "he", "his"),
    ("Sara", "she", "her"),
    ("Tom", "he", "his"),
    ("Aisha", "she", "her"),
    ("Ben", "he", "his"),
    ("Yuki", "she", "her"),
    ("Leo", "he", "his"),
    ("Maya", "she", "her"),
    ("Sam", "he", "his"),
    ("Ella", "she", "her"),
    ("Kai", "he", "his"),
    ("Rosa", "she", "her"),
    ("Finn", "he", "his"),
    ("Chloe", "she", "her"),
    ("Jack", "he", "his"),
    ("Lucy", "she", "her"),
    ("Marco", "he", "his"),
    ("Priya", "she", "her"),
    ("Eli", "he", "his"),
    ("Hana", "she", "her"),
    ("Diego", "he", "his"),
]

_GOODS = [
    ("pen", "pens"),
    ("notebook", "notebooks"),
    ("apple", "apples"),
    ("sticker", "stickers"),
    ("book", "books"),
    ("cup", "cups"),
    ("candle", "candles"),
    ("mango", "mangoes"),
    ("shirt", "shirts"),
    ("lamp", "lamps"),
    ("bottle of juice", "bottles of juice"),
    ("toy car", "toy cars"),
    ("basket", "baskets"),
    ("pair of socks", "pairs of socks"),
]

# subject, definite reference, works-verb, verb (3rd person), base verb, past participle, noun,
# period (singular, plural)
_RATE_CONTEXTS = [
    ("a machine", "the machine", "runs", "makes", "make", "made", "toys", "hour", "hours"),
    ("a printer", "the printer", "runs", "prints", "print", "printed", "pages", "minute", "minutes"),
    ("a bus", "the bus", "drives", "travels", "travel", "traveled", "kilometers", "hour", "hours"),
    ("a pump", "the pump", "runs", "moves", "move", "moved", "liters", "minute", "minutes"),
    (None, None, "reads", "reads", "read", "read", "pages", "day", "days"),
    (None, None, "bakes", "bakes", "bake", "baked", "loaves", "day", "days"),
]
_WEEKDAYS = ["on Monday", "on Tuesday", "on Wednesday", "on Thursday", "on Friday", "on Saturday", "on Sunday"]
_MONTHS = ["in March", "in April", "in May", "in June", "in July", "in August"]

# noun, sentence for buying it in groups, who shares it (plural, singular)
_SHARE_CONTEXTS = [
    ("cookies", "bakes {g} trays of {s} cookies", "friends", "friend"),
    ("marbles", "buys {g} bags of {s} marbles", "classmates", "classmate"),
    ("stickers", "gets {g} sheets of {s} stickers", "cousins", "cousin"),
    ("pencils", "buys {g} boxes of {s} pencils", "students", "student"),
    ("candies", "buys {g} packs of {s} candies", "children", "child"),
]
_RECIPIENTS = [
    "a neighbor",
    "a teacher",
    "a classmate",
    "the coach",
    "a cousin",
    "the librarian",
    "a friend",
    "the mail carrier",
    "the baker",
]

_THINGS = ["marbles", "stamps", "shells", "cards", "coins", "stickers", "books", "beads"]

# verb (3rd person), base verb, plural, singular
_GROUP_CONTEXTS = [
    ("picks", "pick", "apples", "apple"),
    ("collects", "collect", "shells", "shell"),
    ("bakes", "bake", "muffins", "muffin"),
    ("grows", "grow", "tomatoes", "tomato"),
    ("sells", "sell", "tickets", "ticket"),
    ("folds", "fold", "paper cranes", "paper crane"),
]

# irrelevant facts with numbers (the numbers must read naturally at any magnitude)
_DISTRACTORS = [
    "{d} walked {n} steps this morning.",
    "{d} lives {n} meters from the park.",
    "The school has {n} students.",
    "{d} has {n} photos on a phone.",
    "There are {n} houses on the street.",
    "{d} read {n} pages last month.",
    "The bus ride takes {n} seconds longer on Fridays.",
    "{d}'s town has {n} lamp posts.",
]

_ORDINAL_DIV = {2: "half", 3: "a third", 4: "a quarter"}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _join(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


# ---------------------------------------------------------------- expression DAG


class _Q:
    """A quantity: a given number (op None) or an operation over other quantities.

    `what` names the result ("the cost of the pens"), `unit` follows its value (" dollars"),
    `phrases` overrides the line templates, `sum_what` names the sum of the subtrahends when a
    multi-term subtraction sums them first.
    """

    __slots__ = ("op", "args", "value", "what", "unit", "phrases", "sum_what")

    def __init__(self, op, args=(), value=None, what="", unit="", phrases=None, sum_what=None):
        self.op, self.args, self.what, self.unit = op, list(args), what, unit
        self.phrases, self.sum_what = phrases, sum_what
        if op is None:
            self.value = value
        else:
            vs = [a.value for a in self.args]
            if op == "+":
                self.value = sum(vs)
            elif op == "*":
                self.value = vs[0] * vs[1]
            elif op == "-":
                self.value = vs[0] - sum(vs[1:])
            elif op == "/":
                if vs[1] == 0 or vs[0] % vs[1]:
                    raise _Retry()
                self.value = vs[0] // vs[1]
            if self.value < 0:
                raise _Retry()


class _Retry(Exception):
    """Numbers drawn for a shape did not work out (a negative or inexact result): redraw."""


def _n(v: int) -> _Q:
    return _Q(None, value=v)


_PHRASES = (
    "{What} is {e} = {v}{u}.",
    "{What}: {e} = {v}{u}.",
    "So {what} is {e} = {v}{u}.",
    "{e} = {v}, so {what} is {v}{u}.",
)
_PARTIAL = ("{e} = {v}.", "{e} = {v} so far.")


class _Trace:
    __slots__ = ("rng", "lines", "exprs", "done")

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.lines: list[str] = []
        self.exprs: list[str] = []
        self.done: dict[int, int] = {}  # id(node) -> its value, for sub-results already written

    def line(self, node: _Q | None, expr: str, value: int) -> None:
        self.exprs.append(expr)
        if node is None or not node.what:
            tpl = self.rng.choice(_PARTIAL)
            self.lines.append(tpl.format(e=expr, v=value))
            return
        tpl = self.rng.choice(node.phrases or _PHRASES)
        self.lines.append(tpl.format(e=expr, v=value, u=node.unit, what=node.what, What=_cap(node.what)))

    def emit(self, node: _Q) -> int:
        """Write the lines that compute `node` (once: the graph may share sub-results)."""
        if node.op is None:
            return node.value
        key = id(node)
        if key in self.done:
            return self.done[key]
        rng = self.rng
        order = list(range(len(node.args)))
        rng.shuffle(order)  # independent sub-results may be computed in any order
        for i in order:
            self.emit(node.args[i])
        vs = [a.value for a in node.args]
        if node.op == "*":
            a, b = vs if rng.random() < 0.5 else vs[::-1]
            self.line(node, f"{a} * {b}", node.value)
        elif node.op == "/":
            self.line(node, f"{vs[0]} / {vs[1]}", node.value)
        elif node.op == "+":
            self._sum(node, vs)
        elif node.op == "-":
            base, subs = vs[0], vs[1:]
            rng.shuffle(subs)
            mode = rng.randrange(3) if len(subs) > 1 else 0
            if mode == 0:  # one subtraction at a time
                acc = base
                for x in subs[:-1]:
                    self.line(None, f"{acc} - {x}", acc - x)
                    acc -= x
                self.line(node, f"{acc} - {subs[-1]}", node.value)
            elif mode == 1:  # add up what is taken away, then subtract once
                total = sum(subs)
                self._sum(_Q(None, value=total, what=node.sum_what or "", unit=node.unit), subs)
                self.line(node, f"{base} - {total}", node.value)
            else:
                self.line(node, " - ".join(str(x) for x in [base] + subs), node.value)
        self.done[key] = node.value
        return node.value

    def _sum(self, node: _Q, vs: list[int]) -> None:
        vs = list(vs)
        self.rng.shuffle(vs)
        if len(vs) == 2 or self.rng.random() < 0.35:
            self.line(node, " + ".join(str(x) for x in vs), node.value)
            return
        acc = vs[0]
        for x in vs[1:-1]:
            self.line(None, f"{acc} + {x}", acc + x)
            acc += x
        self.line(node, f"{acc} + {vs[-1]}", node.value)


@dataclass
class _Problem:
    facts: list[str]
    ask: str
    methods: list[_Q]  # equivalent roots; a trace picks one

    @property
    def answer(self) -> int:
        return self.methods[0].value


# ---------------------------------------------------------------- skills
#
# A skill has `shape(rng, steps) -> tuple` (the structure: operators and how many of each) and
# `realize(rng, shape, mag, names) -> _Problem` (entities and numbers for that structure). The
# number of steps is the number of arithmetic operations of the problem's first method.


def _shopping_shape(rng: random.Random, steps: int) -> tuple:
    left = steps >= 2 and rng.random() < 0.5
    r = steps - left
    # m items, u of them bought in quantity (one multiplication each), m-1 additions
    options = [m for m in range(1, r + 2) if 0 <= r - m + 1 <= m and (m > 1 or r == 1)]
    m = rng.choice(options)
    u = r - m + 1
    kinds = ["*"] * u + ["1"] * (m - u)
    rng.shuffle(kinds)
    return (tuple(kinds), "left" if left else "total")


def _shopping(rng: random.Random, shape: tuple, mag: int, names: list) -> _Problem:
    kinds, final = shape
    name, pron, _ = names[0]
    goods = rng.sample(_GOODS, len(kinds))
    phrases, costs = [], []
    for kind, (sing, plur) in zip(kinds, goods):
        price = rng.randint(2, mag)
        if kind == "*":
            q = rng.randint(2, min(9, mag))
            phrases.append(f"{q} {plur} at ${price} each")
            costs.append(_Q("*", [_n(q), _n(price)], what=f"the cost of the {plur}", unit=" dollars"))
        else:
            phrases.append(f"{_article(sing)} for ${price}")
            costs.append(_n(price))
    facts = [f"{name} buys {_join(phrases)}."]
    if final == "left":
        spent = sum(c.value for c in costs)
        money = spent + rng.randint(2, mag)
        facts.insert(0, f"{name} has ${money}.")
        root = _Q(
            "-", [_n(money)] + costs, what=f"the money {pron} has left", unit=" dollars", sum_what="the total cost"
        )
        ask = f"How much money does {pron} have left?"
    else:
        root = costs[0] if len(costs) == 1 else _Q("+", costs, what="the total cost", unit=" dollars")
        ask = f"How much does {pron} spend in total?"
    return _Problem(facts, ask, [root])


def _rates_shape(rng: random.Random, steps: int) -> tuple:
    # m periods: m multiplications and m-1 additions; an even step count adds a goal subtraction
    goal = steps % 2 == 0
    m = (steps - goal + 1) // 2
    return (m, rng.choice(("same", "varied")), "goal" if goal else "total")


def _rates(rng: random.Random, shape: tuple, mag: int, names: list) -> _Problem:
    m, kind, final = shape
    subj, ref, works, verb, base, pp, noun, per, pers = rng.choice(_RATE_CONTEXTS)
    if subj is None:
        subj, pron, _ = names[0]
        ref = subj
    else:
        pron = "it"
    labels = _WEEKDAYS if per in ("hour", "minute") else _MONTHS
    start = rng.randrange(len(labels) - m + 1)
    labels = labels[start : start + m]
    times = [rng.randint(2, min(9, mag)) for _ in range(m)]
    unit = f" {noun}"
    if kind == "same":
        rate = rng.randint(2, mag)
        rate_q = _n(rate)
        facts = [
            f"{_cap(subj)} {verb} {rate} {noun} per {per}.",
            f"{_cap(pron)} {works} for " + _join([f"{t} {pers} {lab}" for t, lab in zip(times, labels)]) + ".",
        ]
        parts = [_Q("*", [rate_q, _n(t)], what=f"the {noun} {pp} {lab}", unit=unit) for t, lab in zip(times, labels)]
        methods = [parts[0] if m == 1 else _Q("+", parts, what=f"the total number of {noun}", unit=unit)]
        if m > 1:  # rate * (sum of times): the same answer by the distributive law
            hours = _Q("+", [_n(t) for t in times], what=f"the total number of {pers}", unit=f" {pers}")
            methods.append(_Q("*", [rate_q, hours], what=f"the total number of {noun}", unit=unit))
    else:
        rates = [rng.randint(2, mag) for _ in range(m)]
        facts = [
            f"{_cap(lab)} {subj if i == 0 else pron} {verb} {r} {noun} per {per} for {t} {pers}."
            for i, (r, t, lab) in enumerate(zip(rates, times, labels))
        ]
        parts = [
            _Q("*", [_n(r), _n(t)], what=f"the {noun} {pp} {lab}", unit=unit) for r, t, lab in zip(rates, times, labels)
        ]
        methods = [parts[0] if m == 1 else _Q("+", parts, what=f"the total number of {noun}", unit=unit)]
    if final == "goal":
        goal = methods[0].value + rng.randint(2, mag)
        facts.append(f"The goal is {goal} {noun}.")
        methods = [_Q("-", [_n(goal), root], what=f"the number of {noun} still needed", unit=unit) for root in methods]
        ask = f"How many more {noun} are needed to reach the goal?"
    else:
        ask = f"How many {noun} does {ref} {base} in total?"
    return _Problem(facts, ask, methods)


def _sharing_shape(rng: random.Random, steps: int) -> tuple:
    final = steps >= 2 and rng.random() < 0.5
    groups = steps - final >= 2 and rng.random() < 0.5
    j = steps - 1 - final - groups
    if j > 5:  # keep the list of gifts readable
        final, groups = True, True
        j = steps - 3
    return (bool(groups), j, bool(final))


def _sharing(rng: random.Random, shape: tuple, mag: int, names: list) -> _Problem:
    groups, j, final = shape
    name, pron, _ = names[0]
    noun, group_tpl, sharers, sharer = rng.choice(_SHARE_CONTEXTS)
    p = rng.randint(2, min(9, mag))
    a = rng.randint(4 if final else 2, max(4, mag // 2))
    if groups:
        g = rng.randint(2, 9)
        need = p * a + j
        s = -(-need // g) + rng.randint(0, max(1, mag // 4))
        if j == 0:  # no gifts: the groups must divide evenly, so make them from p*a
            a_total = p * a
            divs = [d for d in range(2, 10) if a_total % d == 0 and a_total // d >= 2]
            if not divs:
                raise _Retry()
            g = rng.choice(divs)
            s = a_total // g
        total_q = _Q("*", [_n(g), _n(s)], what=f"the number of {noun} {pron} has", unit=f" {noun}")
        facts = [f"{name} {group_tpl.format(g=g, s=s)}."]
    else:
        total = p * a + rng.randint(j, j * max(2, mag // 2)) if j else p * a
        total_q = _n(total)
        facts = [f"{name} has {total} {noun}."]
    gift_total = total_q.value - p * a
    if gift_total < j or (j == 0 and gift_total != 0):
        raise _Retry()
    gifts = _split(rng, gift_total, j)
    if j:
        who = rng.sample(_RECIPIENTS, j)
        given = _join([f"{x} to {w}" for x, w in zip(gifts, who)])
        facts.append(
            f"{_cap(pron)} gives {given}{',' if j > 1 else ''} and shares the rest equally among {p} {sharers}."
        )
        rest = _Q(
            "-",
            [total_q] + [_n(x) for x in gifts],
            what=f"the number of {noun} left to share",
            unit=f" {noun}",
            sum_what=f"the number of {noun} {pron} gives away",
        )
    else:
        rest = total_q
        facts.append(f"{_cap(pron)} shares them equally among {p} {sharers}.")
    each = _Q("/", [rest, _n(p)], what=f"the number of {noun} each {sharer} gets", unit=f" {noun}")
    if final:
        e = rng.randint(1, each.value - 2)
        facts.append(f"Each {sharer} then uses {e} of them.")
        left_what = f"the number of {noun} each {sharer} has left"
        root = _Q("-", [each, _n(e)], what=left_what, unit=f" {noun}")
        # or: take away what all of them use, then share what remains
        used = _Q("*", [_n(p), _n(e)], what=f"the number of {noun} the {sharers} use together", unit=f" {noun}")
        remain = _Q("-", [rest, used], what=f"the number of {noun} that remain", unit=f" {noun}")
        methods = [root, _Q("/", [remain, _n(p)], what=left_what, unit=f" {noun}")]
        ask = f"How many {noun} does each {sharer} have left?"
    else:
        methods = [each]
        ask = f"How many {noun} does each {sharer} get?"
    return _Problem(facts, ask, methods)


def _split(rng: random.Random, total: int, parts: int) -> list[int]:
    """`total` as `parts` positive integers (random composition)."""
    if parts == 0:
        return []
    cuts = sorted(rng.sample(range(1, total), parts - 1)) if parts > 1 else []
    bounds = [0] + cuts + [total]
    return [bounds[i + 1] - bounds[i] for i in range(parts)]


def _comparison_shape(rng: random.Random, steps: int) -> tuple:
    finals = ["last"] + (["diff"] if steps >= 2 else []) + (["total"] if steps % 2 == 0 else [])
    final = rng.choice(finals)
    r = {"last": steps, "diff": steps - 1, "total": steps // 2}[final]
    rels = tuple(rng.choices("*+-/", weights=(3, 3, 3, 2), k=r))
    return (rels, final)


def _comparison(rng: random.Random, shape: tuple, mag: int, names: list) -> _Problem:
    rels, final = shape
    thing = rng.choice(_THINGS)
    people = names[: len(rels) + 1]
    unit = f" {thing}"

    def node(op, args, who):
        return _Q(
            op,
            args,
            what=f"the number of {thing} {who} has",
            unit=unit,
            phrases=(
                f"{who} has {{e}} = {{v}}{{u}}.",
                "{What} is {e} = {v}.",
                f"So {who} has {{e}} = {{v}}{{u}}.",
                f"{who}: {{e}} = {{v}}{{u}}.",
            ),
        )

    v0 = rng.randint(2, mag)
    chain = [_n(v0)]
    facts = [f"{people[0][0]} has {v0} {thing}."]
    for op, (who, _, _), (prev, _, _) in zip(rels, people[1:], people):
        v = chain[-1].value
        if op == "*":
            k = rng.randint(2, 4 if v <= mag else 3)
            chain.append(node("*", [chain[-1], _n(k)], who))
            facts.append(f"{who} has {k} times as many {thing} as {prev}.")
        elif op == "+":
            c = rng.randint(2, mag)  # "1 more marbles" reads wrong
            chain.append(node("+", [chain[-1], _n(c)], who))
            facts.append(f"{who} has {c} more {thing} than {prev}.")
        elif op == "-":
            if v < 4:
                raise _Retry()
            c = rng.randint(2, min(v - 2, mag))
            chain.append(node("-", [chain[-1], _n(c)], who))
            facts.append(f"{who} has {c} fewer {thing} than {prev}.")
        else:
            divs = [d for d in (2, 3, 4) if v % d == 0 and v // d >= 2]
            if not divs:
                raise _Retry()
            d = rng.choice(divs)
            chain.append(node("/", [chain[-1], _n(d)], who))
            facts.append(f"{who} has {_ORDINAL_DIV[d]} as many {thing} as {prev}.")
    last = people[len(rels)][0]
    if final == "last":
        root = chain[-1]
        ask = f"How many {thing} does {last} have?"
    elif final == "total":
        root = _Q("+", chain, what=f"the total number of {thing}", unit=unit)
        ask = f"How many {thing} do they have altogether?"
    else:
        first = people[0][0]
        a, b = chain[-1], chain[0]
        if abs(a.value - b.value) < 2:
            raise _Retry()
        (big, bq), (small, sq) = ((last, a), (first, b)) if a.value > b.value else ((first, b), (last, a))
        root = _Q(
            "-",
            [bq, sq],
            what="the difference",
            unit=unit,
            phrases=(
                f"{big} has {{e}} = {{v}} more {thing} than {small}.",
                "The difference is {e} = {v}{u}.",
                f"So {big} has {{e}} = {{v}} more.",
            ),
        )
        ask = f"How many more {thing} does {big} have than {small}?"
    return _Problem(facts, ask, [root])


def _group_shape(rng: random.Random, steps: int) -> tuple:
    final = "none" if steps == 1 else rng.choice(("none", "mul", "sub"))
    m = steps + 1 - (final != "none")
    return (m, final)


def _group_totals(rng: random.Random, shape: tuple, mag: int, names: list) -> _Problem:
    m, final = shape
    verb, base, plur, sing = rng.choice(_GROUP_CONTEXTS)
    people = [n for n, _, _ in names[:m]]
    vals = [rng.randint(2, mag) for _ in range(m)]
    unit = f" {plur}"
    parts = [f"{people[0]} {verb} {vals[0]} {plur}"] + [f"{p} {verb} {v}" for p, v in zip(people[1:], vals[1:])]
    facts = [_join(parts) + "."]
    leaves = [_n(v) for v in vals]
    total = _Q("+", leaves, what=f"the total number of {plur}", unit=unit)
    if final == "none":
        methods = [total]
        ask = f"How many {plur} do they {base} altogether?"
    elif final == "mul":
        k = rng.randint(2, min(9, mag))
        kq = _n(k)
        facts.append(f"Each {sing} is worth ${k}.")
        methods = [
            _Q("*", [total, kq], what="the total value", unit=" dollars"),
            # worth of each person's share, then added: the distributive alternative
            _Q(
                "+",
                [
                    _Q("*", [lf, kq], what=f"the value of {p}'s {plur}", unit=" dollars")
                    for p, lf in zip(people, leaves)
                ],
                what="the total value",
                unit=" dollars",
            ),
        ]
        ask = f"How many dollars are all the {plur} worth?"
    else:
        k = rng.randint(1, total.value - 2)
        facts.append(f"They give away {k} {plur}.")
        methods = [_Q("-", [total, _n(k)], what=f"the number of {plur} left", unit=unit)]
        ask = f"How many {plur} do they have left?"
    return _Problem(facts, ask, methods)


@dataclass(frozen=True)
class _Skill:
    name: str
    shape: Callable[[random.Random, int], tuple]
    realize: Callable[[random.Random, tuple, int, list], _Problem]


# registration order is part of the task: a seeded draw picks a skill by its position
SKILLS: Registry[_Skill] = Registry("skill", base=_Skill, ordered=True)
for _s in (
    _Skill("shopping", _shopping_shape, _shopping),
    _Skill("rates", _rates_shape, _rates),
    _Skill("sharing", _sharing_shape, _sharing),
    _Skill("comparison", _comparison_shape, _comparison),
    _Skill("group_totals", _group_shape, _group_totals),
):
    SKILLS.register(_s.name, _s)


def _tuplify(x: Any) -> Any:
    """JSON turns tuples into lists; structures must be hashable again after a round trip."""
    if isinstance(x, (list, tuple)):
        return tuple(_tuplify(v) for v in x)
    return x


# ---------------------------------------------------------------- the task


@dataclass(frozen=True)
class SyntheticTask:
    """A family of synthetic GSM8K-format problems.

    Attributes:
        min_steps: fewest arithmetic operations per problem (>= 1).
        max_steps: most arithmetic operations per problem (<= 10).
        max_operand: largest number drawn for a quantity, price or rate (magnitude; >= 10).
        distractors: irrelevant sentences with numbers added to each question.
        n_traces: valid solution traces made per problem (different orders and phrasings).
        skills: which problem families to draw from (default: all).
    """

    min_steps: int = 2
    max_steps: int = 3
    max_operand: int = 20
    distractors: int = 0
    n_traces: int = 3
    skills: tuple[str, ...] = tuple(SKILLS)

    def __post_init__(self):
        if isinstance(self.skills, str):
            object.__setattr__(self, "skills", tuple(s.strip() for s in self.skills.split(",") if s.strip()))
        else:
            object.__setattr__(self, "skills", tuple(self.skills))
        problems = []
        for name in ("min_steps", "max_steps"):
            if not 1 <= getattr(self, name) <= MAX_STEPS:
                problems.append(f"{name} must be in 1..{MAX_STEPS}, got {getattr(self, name)}")
        if not problems and self.min_steps > self.max_steps:
            problems.append(f"min_steps ({self.min_steps}) must be <= max_steps ({self.max_steps})")
        if self.max_operand < 10:
            problems.append(f"max_operand must be >= 10, got {self.max_operand}")
        if not 0 <= self.distractors <= 5:
            problems.append(f"distractors must be in 0..5, got {self.distractors}")
        if not 1 <= self.n_traces <= 16:
            problems.append(f"n_traces must be in 1..16, got {self.n_traces}")
        unknown = [s for s in self.skills if s not in SKILLS]
        if unknown or not self.skills:
            problems.append(f"unknown skills {unknown or '(none given)'}; choose from {', '.join(SKILLS)}")
        if problems:
            raise ConfigError(problems, source="synthetic task")

    # -- public API

    def generate(self, n: int, seed: int = 0) -> list[Example]:
        """`n` distinct problems, deterministic in (task settings, seed)."""
        if n < 0:
            raise ConfigError(f"n must be >= 0, got {n}", source="synthetic task")
        rng = random.Random(seed)
        out = _distinct(lambda: self._example(rng.getrandbits(63)), n, set())
        if len(out) < n:
            raise DataError(
                f"synthetic task could make only {len(out)} distinct problems of {n}; "
                "raise max_operand or the step range"
            )
        return out

    def similar(self, example: Example, n: int, seed: int = 0) -> list[Example]:
        """`n` new problems with the example's skill and structure, new entities and numbers."""
        meta = example.meta or {}
        structure = meta.get("structure")
        if not structure or structure[0] not in SKILLS:
            raise CuratorError(
                f"example {example.id!r} has no synthetic structure in its meta; "
                "`similar` works on examples made by SyntheticTask"
            )
        structure = _tuplify(structure)
        distractors = int(meta.get("distractors", self.distractors))
        rng = random.Random(f"{seed}:{example.id}")
        out = _distinct(
            lambda: self._example(
                rng.getrandbits(63), structure=structure, distractors=distractors, parent_id=example.id
            ),
            n,
            {example.question},
        )
        if len(out) < n:
            raise DataError(f"could make only {len(out)} problems similar to {example.id!r} of {n}; raise max_operand")
        return out

    def example_from_seed(self, seed: int) -> Example:
        """Rebuild one example from its ``meta['seed']`` (same task settings)."""
        return self._example(seed)

    # -- internals

    def _example(
        self, seed: int, structure: tuple | None = None, distractors: int | None = None, parent_id: str | None = None
    ) -> Example:
        for attempt in range(200):
            rng = random.Random(seed + attempt)
            if structure is None:
                skill = SKILLS[rng.choice(self.skills)]
                shape = skill.shape(rng, rng.randint(self.min_steps, self.max_steps))
            else:
                skill, shape = SKILLS[structure[0]], structure[1]
            names = rng.sample(_NAMES, 14)  # a problem uses at most 11
            try:
                prob = skill.realize(rng, shape, self.max_operand, names)
            except _Retry:
                continue
            break
        else:  # pragma: no cover - every shape is realisable; this would be a generator bug
            raise RuntimeError(f"could not realise {skill.name} shape {shape!r}")
        facts = list(prob.facts)
        nd = self.distractors if distractors is None else distractors
        if nd:
            spare = [nm for nm, _, _ in names[len(names) - 3 :]]  # names the problem does not use
            for tpl in rng.sample(_DISTRACTORS, nd):
                facts.insert(
                    rng.randint(0, len(facts)), tpl.format(d=rng.choice(spare), n=rng.randint(2, self.max_operand))
                )
        question = " ".join(facts + [prob.ask])
        traces = self._traces(rng, prob)
        target = rng.randrange(len(traces))
        meta: dict[str, Any] = {
            "skill": skill.name,
            "steps": _count_ops(prob.methods[0]),
            "traces": traces,
            "target_trace": target,
            "structure": (skill.name, shape),
            "seed": seed,
            "distractors": nd,
        }
        if parent_id is not None:
            meta["parent_id"] = parent_id
        return Example.make(question, traces[target], str(prob.answer), **meta)

    def _traces(self, rng: random.Random, prob: _Problem) -> list[str]:
        """Up to n_traces distinct traces, preferring ones that differ in the arithmetic itself."""
        by_sig: dict[tuple, list[str]] = {}
        texts: set[str] = set()
        for _ in range(4 * self.n_traces + 4):
            t = _Trace(rng)
            t.emit(rng.choice(prob.methods))
            text = "\n".join(t.lines + [f"#### {prob.answer}"])
            if text in texts:
                continue
            texts.add(text)
            by_sig.setdefault(tuple(t.exprs), []).append(text)
            if len(by_sig) >= self.n_traces:
                break
        # round-robin over distinct computations first, then phrasings of them
        chosen: list[str] = []
        pools = list(by_sig.values())
        depth = 0
        while len(chosen) < self.n_traces and any(len(p) > depth for p in pools):
            for p in pools:
                if len(p) > depth and len(chosen) < self.n_traces:
                    chosen.append(p[depth])
            depth += 1
        return chosen


def _count_ops(root: _Q) -> int:
    seen: set[int] = set()

    def walk(q: _Q) -> int:
        if q.op is None or id(q) in seen:
            return 0
        seen.add(id(q))
        return len(q.args) - 1 + sum(walk(a) for a in q.args)

    return walk(root)


# ---------------------------------------------------------------- presets

synthetic_presets: Registry = Registry("synthetic preset")
synthetic_presets.register("easy", SyntheticTask(min_steps=2, max_steps=3, max_operand=20, distractors=0, n_traces=3))
synthetic_presets.register(
    "medium", SyntheticTask(min_steps=3, max_steps=5, max_operand=100, distractors=1, n_traces=4)
)
synthetic_presets.register("hard", SyntheticTask(min_steps=5, max_steps=8, max_operand=1000, distractors=2, n_traces=4))


def synthetic_task(preset: str = "easy", **overrides: Any) -> SyntheticTask:
    """A preset task (``easy``, ``medium``, ``hard``) with some settings overridden."""
    task = synthetic_presets.get(preset)
    if not isinstance(task, SyntheticTask):
        raise CuratorError(f"synthetic preset {preset!r} is not a SyntheticTask")
    known = set(SyntheticTask.__dataclass_fields__)
    bad = [k for k in overrides if k not in known]
    if bad:
        raise ConfigError(
            f"unknown synthetic task settings {bad}; known: {', '.join(sorted(known))}", source="synthetic task"
        )
    return replace(task, **overrides) if overrides else task


def _distinct(make, n: int, seen: set[str]) -> list[Example]:
    """Up to n examples from `make()` with questions not in `seen` (tiny settings repeat problems;
    ids must stay unique). Gives up after a bounded number of draws."""
    out: list[Example] = []
    for _ in range(20 * n + 100):
        if len(out) == n:
            break
        ex = make()
        if ex.question in seen:
            continue
        seen.add(ex.question)
        out.append(ex)
    return out
