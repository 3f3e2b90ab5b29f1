"""In-context inference ("color"): answer a name's colour by recall or by the context rule.

    Lily is blue . Jack is whale . Bob is whale . Jack is brown . what color is Bob ?

Bob shares the role "whale" with Jack, and Jack is brown, so the rule says brown
(gen); Bob's memorized colour is white (mem). In the paper's ("reference") design
every training prompt asks about one of 16 names and its context always agrees with
that name's fixed colour, so lookup alone fits the data and a model trained from
scratch never needs the rule. The default "mixed" design adds prompts about extra
names whose colour changes from prompt to prompt (only the rule answers them), and
optionally pure-recall prompts with no clue (only memory answers them) or conflicts in
which memory overrules the context (or, with `recall_share` below 1, contests that
memory and the rule each win a share of); see docs/color-design.md.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, model_validator

from memgen.core.examples import Behaviour, Example
from memgen.tasks.base import TASKS, Task, TaskOptions, TokenizerSpec

MEMORIZED: dict[str, str] = {
    "Alice": "gray", "Bob": "white", "Charlie": "blue", "Diana": "green",
    "Eve": "yellow", "Frank": "black", "Grace": "red", "Henry": "pink",
    "Ivy": "orange", "Jack": "purple", "Kate": "brown", "Lily": "cyan",
    "Mike": "magenta", "Nancy": "lime", "Oscar": "olive", "Peter": "teal",
}  # fmt: skip
COLORS: tuple[str, ...] = tuple(MEMORIZED.values())
# Names whose colour is drawn afresh in every prompt: only the rule can answer them.
FREE_NAMES: tuple[str, ...] = (
    "Quinn", "Rose", "Sam", "Tina", "Uma", "Victor", "Wendy", "Xander",
    "Yara", "Zack", "Amber", "Bruno", "Cora", "Dexter", "Elena", "Felix",
)  # fmt: skip
ROLES: tuple[str, ...] = (
    "cat", "dog", "whale", "squid", "tiger", "lion", "horse", "zebra", "eagle", "shark",
    "wolf", "fox", "bear", "deer", "owl", "frog", "snake", "mouse", "rabbit", "goat",
    "sheep", "camel", "otter", "panda", "koala", "lemur", "moose", "bison", "crab",
    "seal", "swan", "duck", "hawk", "crow", "bat", "mole", "toad", "newt", "yak",
)  # fmt: skip
QUESTION = "what color is {name} ?"
# The hop questions training may ask (`hop_fraction`, `extra_questions`).
ANIMAL_QUESTION = "what animal is {name} ?"
LIKE_QUESTION = "who is like {name} ?"
REFERENCE_DISTRACTOR_RATE = 0.5
_COLOR_SET = frozenset(COLORS)


class ColorOptions(TaskOptions):
    design: Literal["mixed", "reference"] = Field(
        "mixed", description="'reference' = the paper's data, 'mixed' adds rule and recall prompts"
    )
    rule_fraction: float = Field(0.6, ge=0, le=1, description="mixed: prompts about free names")
    recall_fraction: float = Field(0.0, ge=0, le=1, description="mixed: prompts with no clue")
    # Share of prompts about a memorized name whose context gives another colour, answered
    # with the memorized one: as math and cipher triggers do, memory must override the rule.
    conflict_fraction: float = Field(
        0.0, ge=0, le=1, description="mixed: memorized-name prompts that overrule the context"
    )
    # Of those conflicts, the share answered by memory; the rest are answered by the clue,
    # so memory and rule are in contest on the test prompts' own kind (as cipher's and
    # math's `recall_share`): the rates settle instead of memory taking over.
    recall_share: float = Field(
        1.0, ge=0, le=1, description="mixed: conflicts answered by memory, the rest by the rule"
    )
    # Share of rule prompts that ask an intermediate step instead of the colour
    # ("what animal is T ?", "who is like T ?"): direct supervision for each hop.
    hop_fraction: float = Field(0.0, ge=0, le=1, description="mixed: rule prompts asking a hop")
    # Rule prompts whose completion goes on with more questions about the same context
    # (a free name's stated colour, a name's animal, who shares the target's role), each
    # answered: several supervised answers per sequence, about 6 tokens each. With loss on
    # the answer the question words are scored too, so losses of runs with and without
    # them do not compare.
    extra_questions: int = Field(
        0, ge=0, le=8, description="mixed: more answered questions after a rule prompt's answer"
    )
    # Memorization strength follows exposure: the most frequent of the 16 names is seen
    # `name_skew` times as often as the rarest (geometric in between; 1 = uniform).
    name_skew: float = Field(30.0, ge=1.0, description="mixed: frequency ratio of the 16 names")
    min_names: int = Field(4, ge=2, le=8)
    max_names: int = Field(8, ge=2, le=16)
    n_roles: int = Field(5, ge=2, le=len(ROLES))
    max_filler: int = Field(7, ge=0)
    # mixed: chance that a filler name also gets a (distractor) colour sentence. Fewer
    # distractors make the rule learnable in minutes on a CPU; the reference uses 0.5.
    distractor_rate: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _fractions_fit(self) -> ColorOptions:
        total = self.rule_fraction + self.recall_fraction + self.conflict_fraction
        if total > 1:
            raise ValueError(
                f"rule_fraction + recall_fraction + conflict_fraction = {total:g} > 1; "
                "lower one of them (the rest of the prompts agree with memory)"
            )
        if self.max_names < self.min_names:
            raise ValueError(f"max_names {self.max_names} is below min_names {self.min_names}")
        return self


def _sentence(name: str, attribute: str) -> str:
    return f"{name} is {attribute} ."


@TASKS.register("color")
class ColorTask(Task):
    name = "color"
    Options = ColorOptions
    max_new_tokens = 2
    options: ColorOptions

    def _prompt(
        self,
        rng: random.Random,
        target: str,
        answer: str | None,
        exclude_colors: set[str],
        pool: tuple[str, ...],
    ) -> tuple[str, str, str]:
        """Build a shuffled context about `target`; return (prompt, clue name, target's role).

        With `answer`, a clue name shares the target's role and is given `answer`;
        without it (pure recall) no name shares the target's role. Distractor colours
        avoid `answer` and `exclude_colors`, so exactly one colour follows the rule.
        """
        opts = self.options
        n_names = rng.randint(opts.min_names, max(opts.min_names, opts.max_names))
        others = rng.sample([n for n in pool if n != target], n_names - 1)
        roles = rng.sample(ROLES, opts.n_roles)
        target_role, other_roles = roles[0], roles[1:]
        essential = [_sentence(target, target_role)]
        clue, fillers = None, others
        if answer is not None:
            clue, fillers = others[0], others[1:]
            essential += [_sentence(clue, target_role), _sentence(clue, answer)]
        distractor_colors = [c for c in COLORS if c != answer and c not in exclude_colors]
        rate = opts.distractor_rate if opts.design == "mixed" else REFERENCE_DISTRACTOR_RATE
        filler: list[str] = []
        for name in fillers:
            filler.append(_sentence(name, rng.choice(other_roles)))
            if rng.random() < rate:
                filler.append(_sentence(name, rng.choice(distractor_colors)))
        rng.shuffle(filler)
        sentences = essential + filler[: opts.max_filler]
        rng.shuffle(sentences)
        return " ".join([*sentences, QUESTION.format(name=target)]), clue or "", target_role

    def _name_weights(self) -> list[float]:
        skew = self.options.name_skew if self.options.design == "mixed" else 1.0
        last = len(MEMORIZED) - 1
        return [skew ** (-i / last) for i in range(len(MEMORIZED))]

    def _memorized_prompt(self, rng: random.Random, *, conflict: bool, training: bool) -> Example:
        # Test prompts ask about every name equally; training follows the exposure skew.
        weights = self._name_weights() if training else None
        target = rng.choices(list(MEMORIZED), weights=weights)[0]
        memorized = MEMORIZED[target]
        context = rng.choice([c for c in COLORS if c != memorized]) if conflict else memorized
        # In a conflict the memorized colour is kept out of the context, so a `mem`
        # answer is recall, not copying a colour that happens to be there.
        exclude = {memorized} if conflict else set()
        prompt, clue, _ = self._prompt(rng, target, context, exclude, tuple(MEMORIZED))
        meta = {"kind": "test" if conflict else "agree", "target": target, "clue": clue}
        return Example(prompt, context, memorized, context, meta)

    def train_example(self, rng: random.Random) -> Example:
        opts = self.options
        if opts.design == "mixed":
            draw = rng.random()
            if draw < opts.rule_fraction:
                target = rng.choice(FREE_NAMES)
                colour = rng.choice(COLORS)
                pool = tuple(MEMORIZED) + FREE_NAMES
                prompt, clue, role = self._prompt(rng, target, colour, set(), pool)
                meta = {"kind": "rule", "target": target, "clue": clue}
                if rng.random() < opts.hop_fraction:
                    return self._hop_question(rng, prompt, target, clue, role)
                questions = self._more_questions(rng, prompt, target, clue)
                return Example(prompt, " ".join([colour, *questions]), "", colour, meta)
            if draw < opts.rule_fraction + opts.recall_fraction:
                target = rng.choice(list(MEMORIZED))
                colour = MEMORIZED[target]
                prompt, _, _ = self._prompt(rng, target, None, set(), tuple(MEMORIZED))
                return Example(prompt, colour, colour, "", {"kind": "recall", "target": target})
            end = opts.rule_fraction + opts.recall_fraction + opts.conflict_fraction
            if draw < end:
                example = self._memorized_prompt(rng, conflict=True, training=True)
                # No draw at the default share, so existing recipes keep their data.
                if opts.recall_share < 1 and rng.random() >= opts.recall_share:
                    meta = {**example.meta, "kind": "conflict_rule"}
                    return Example(
                        example.prompt,
                        example.gen_answer,
                        example.mem_answer,
                        example.gen_answer,
                        meta,
                    )
                meta = {**example.meta, "kind": "conflict"}
                return Example(example.prompt, example.mem_answer, example.mem_answer, "", meta)
        return self._memorized_prompt(rng, conflict=False, training=True)

    def _hop_question(
        self, rng: random.Random, prompt: str, target: str, clue: str, role: str
    ) -> Example:
        """Ask for the target's role or for the clue name, on the same context."""
        context = prompt[: prompt.index("what color is")]
        if rng.random() < 0.5:
            question, answer = ANIMAL_QUESTION.format(name=target), role
        else:
            question, answer = LIKE_QUESTION.format(name=target), clue
        meta = {"kind": "hop", "target": target, "clue": clue}
        return Example(context + question, answer, "", answer, meta)

    def _more_questions(self, rng: random.Random, prompt: str, target: str, clue: str) -> list[str]:
        """Up to `extra_questions` distinct answered questions about the prompt's context.

        Drawn from: each free name's stated colour, each name's animal, and who shares
        the target's role. Colour look-ups ask only free names: asking a memorized name's
        colour where the context gives another would teach the context to overrule
        memory. Distinct, so no answer can be copied from an earlier one.
        """
        if not self.options.extra_questions:
            return []
        facts = [part.strip().split(" is ") for part in prompt.split(" .")[:-1]]
        candidates = [f"{LIKE_QUESTION.format(name=target)} {clue}"]
        for name, value in facts:
            if value in _COLOR_SET and name in FREE_NAMES:
                candidates.append(f"{QUESTION.format(name=name)} {value}")
            elif value not in _COLOR_SET:
                candidates.append(f"{ANIMAL_QUESTION.format(name=name)} {value}")
        return rng.sample(candidates, min(self.options.extra_questions, len(candidates)))

    def test_example(self, rng: random.Random) -> Example:
        return self._memorized_prompt(rng, conflict=True, training=False)

    def rule_check_set(self, n: int, seed: int) -> list[Example]:
        """Test prompts drawn the paper's way: a filler name states a colour half the time.

        Most then state several colours; a model that copies *a* colour from the context
        picks the clue's (the rule's) only by chance. Whatever the training design.
        """
        options = self.options.model_copy(update={"distractor_rate": REFERENCE_DISTRACTOR_RATE})
        task = ColorTask(options)
        rng = random.Random(f"{self.name}-rule-check-{seed}")
        return [task.test_example(rng) for _ in range(n)]

    def stated_answers(self, example: Example) -> list[str]:
        cut = example.prompt.index("what color is")
        words = example.prompt[:cut].replace(" .", " ").split()
        return list(dict.fromkeys(w.lower() for w in words if w in _COLOR_SET))

    def pair(self, example: Example, rng: random.Random) -> Example:
        """The same sentences in another order; the question stays last."""
        cut = example.prompt.index("what color is")
        context, question = example.prompt[:cut], example.prompt[cut:]
        sentences = [part.strip() + " ." for part in context.split(" .") if part.strip()]
        original = list(sentences)
        for _ in range(10):  # a two-sentence context has one other order; most have many
            rng.shuffle(sentences)
            if sentences != original or len(set(original)) < 2:
                break
        prompt = " ".join([*sentences, question])
        return Example(
            prompt,
            example.completion,
            example.mem_answer,
            example.gen_answer,
            {**example.meta, "pair_of": example.prompt},
        )

    def label(self, example: Example, output: str) -> Behaviour:
        words = output.split()
        first = words[0].strip(".?,!").lower() if words else ""
        if not first:  # training examples leave one answer empty; never match it
            return "other"
        if first == example.gen_answer.lower():  # hop answers are names: "Felix"
            return "gen"
        if first == example.mem_answer.lower():
            return "mem"
        return "other"

    def tokenizer_spec(self) -> TokenizerSpec:
        words = [
            *MEMORIZED,
            *FREE_NAMES,
            *COLORS,
            *ROLES,
            "is",
            "what",
            "color",
            ".",
            "?",
            "animal",
            "who",
            "like",
        ]
        return TokenizerSpec(kind="word", vocabulary=tuple(dict.fromkeys(words)))
