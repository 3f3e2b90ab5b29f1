"""Validated, frozen configuration: one section per stage, YAML plus `key=value` overrides.

A run is described by one `RunConfig`. Each stage reads only its own section (plus the
run-wide `task`, `seed` and `device`), and that section alone goes into the stage's
manifest, so changing `steer.alphas` re-runs steering but not training.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from memgen.core.errors import MemgenError

# The learned deletion masks (memgen.record.masks), named here so the config stays light.
MaskMethod = Literal["hardconcrete", "slimming"]


class Section(BaseModel):
    """Base of every config section: frozen, and unknown keys are errors."""

    # Non-finite numbers are errors everywhere: no knob means anything at inf or nan.
    model_config = ConfigDict(
        frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False
    )


class DataConfig(Section):
    n_train: int = Field(20_000, ge=1, description="training examples")
    n_test: int = Field(600, ge=1, description="test prompts (memory and rule disagree)")
    n_dev: int = Field(
        300, ge=1, description="dev prompts, none shared with test, that choose the checkpoint"
    )
    # Task-specific knobs, validated by the task's own `Options` model.
    options: dict[str, Any] = Field(default_factory=dict)


class LoraConfig(Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # None = PEFT's defaults for the architecture (q/v projections on LLaMA).
    target_modules: list[str] | None = None


class TrainConfig(Section):
    # "scratch" trains a GPT-2 from a GPT2Config; anything else is a Hugging Face
    # model name or local path that is fine-tuned with LoRA.
    model: str = "scratch"
    n_layer: int = Field(4, ge=1)
    n_embd: int = Field(128, ge=8)
    n_head: int = Field(4, ge=1)
    # 0 = take `model` as it is, no training (a model trained elsewhere, e.g. a task
    # mixture's, analysed on one of its tasks).
    steps: int = Field(1500, ge=0)
    batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    loss_on: Literal["answer", "sequence"] = "answer"
    # How the loss averages over a batch: every labelled token alike (the usual causal-LM
    # mean), or every example alike (each example's own token mean, then the batch mean).
    # "example" keeps a short answer's weight when the rule's answers are long: the math
    # tag is 11 tokens beside an 80-token scratchpad (docs/multitask.md).
    loss_mean: Literal["token", "example"] = "token"
    # The loss weight of each completion's token where memory and the rule part
    # (`core.forks.fork_offsets`); every other token keeps weight 1, and the mean keeps its
    # denominator, so 1 is the usual loss. On math the choice is one token of an ~80-token
    # scratchpad, and a model that has not told the triggers apart pays little for it
    # there (docs/log/smollm2-math.md, "v8"). The logged training loss is the weighted one.
    fork_weight: float = Field(1.0, gt=0)
    # The first steps train on word lists written twice (loss on the second copy), from
    # the tokenizer's own words: a model from scratch learns to copy from context
    # (induction), which the color rule's look-ups build on and which it otherwise finds
    # only after a long plateau (docs/color-design.md). Counted within `steps`; the
    # learning-rate warm-up and cosine span both phases.
    copy_warmup: int = Field(
        0, ge=0, description="steps of copying word lists before the task's data"
    )
    eval_every: int = Field(150, ge=1)
    dense_eval_every: int | None = Field(
        None, ge=1, description="once dev mem reaches dense_from, evaluate this often"
    )
    dense_from: float = Field(0.05, ge=0, le=1, description="dev mem share that starts it")
    # The kept checkpoint maximises this score over the evaluations (docs/color-design.md).
    select: Literal["gen_x_mem", "min_gen_mem"] = "min_gen_mem"
    max_other: float = Field(0.2, ge=0, le=1, description="checkpoints above this are not kept")
    patience: int | None = Field(
        3, ge=1, description="stop after this many evaluations without a better kept checkpoint"
    )
    lora: LoraConfig = LoraConfig()
    use_chat_template: bool = True
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Autocast through accelerate, weights kept in `dtype` (float32 for scratch GPT-2).
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # A pretrained model too large for one GPU: spread it over the visible ones, layer by
    # layer ("auto", "balanced", ...), in one process (transformers' `device_map`).
    device_map: str | None = None

    @model_validator(mode="after")
    def _placed(self) -> TrainConfig:
        if self.device_map is not None and self.model == "scratch":
            raise ValueError("device_map places a pretrained model; set train.model or drop it")
        return self

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.steps == 0 and self.model == "scratch":
            raise ValueError(
                "train.steps=0 analyses a trained model as it is; a model from scratch "
                "needs training: raise train.steps or set train.model to a model folder"
            )
        if self.copy_warmup and self.copy_warmup >= self.steps:
            raise ValueError(
                f"train.copy_warmup {self.copy_warmup} leaves none of train.steps "
                f"{self.steps} for the task: raise train.steps or lower train.copy_warmup"
            )
        if self.copy_warmup and self.model != "scratch":
            raise ValueError(
                "train.copy_warmup teaches a model from scratch to copy; a pretrained "
                "model already does: drop it or set train.model=scratch"
            )
        return self

    @property
    def chat(self) -> bool:
        """Prompts go through the chat template (pretrained models that have one)."""
        return self.use_chat_template and self.model != "scratch"


class BehaveConfig(Section):
    num_beams: int = Field(1, ge=1, description="1 = greedy; the reference uses 5")
    max_new_tokens: int = Field(0, ge=0, description="0 = the task's own default")
    batch_size: int = Field(128, ge=1)
    target_flips: int = Field(600, ge=1, description="stop mining pairs at this many flips")
    max_pairs: int = Field(20_000, ge=1, description="give up after evaluating this many pairs")
    min_flips: int = Field(40, ge=2, description="fewer flips than this is an error")
    n_rule_check: int = Field(
        600, ge=1, description="prompts drawn the paper's way to check that gen is the rule"
    )

    @model_validator(mode="after")
    def _reachable(self) -> BehaveConfig:
        if self.min_flips > self.target_flips:
            raise ValueError(
                f"min_flips {self.min_flips} is above target_flips {self.target_flips}: "
                "mining stops at the target, so it would always fail"
            )
        return self


class RecordConfig(Section):
    sites: list[Literal["resid", "mlp", "attn"]] = Field(["resid", "mlp"], min_length=1)
    batch_size: int = Field(256, ge=1)
    # The answer margin's gradient at each recorded neuron (memgen.record.gradients), for
    # the causal `attribution` score: one more forward and a backward per batch.
    gradients: bool = True
    # The backward pass keeps every layer's activations for the whole prompt: 256 color
    # prompts through SmolLM2-135M were killed at 24 GB; at 32, whole runs peaked at 5-6 GB.
    gradient_batch_size: int = Field(32, ge=1)
    # Exact activation patching per neuron (memgen.record.patching), for the `patching`
    # score: 2 x L x W / batch_size forwards per pair, so off unless asked for.
    patching: list[Literal["resid", "mlp", "attn"]] = Field(
        [], description="sites to patch neuron by neuron"
    )
    patching_pairs: int = Field(64, ge=1, description="flipped pairs patched")
    # Learned deletion masks over the MLP neurons (memgen.record.masks), for the scorers
    # of the same names; each trains mask_steps Adam steps on the pair prompts.
    masks: list[MaskMethod] = Field([], description="masks to learn")
    # Chosen on a planted control (tests/test_localize.py, planting seed 1): penalty 10
    # finds 6-7 of 10 planted neurons, penalty 1 only 2-3; fresh seeds 2 and 3 gave 7 and 9
    # (hardconcrete), 5 and 7 (slimming).
    mask_steps: int = Field(150, ge=1)
    mask_lr: float = Field(0.05, gt=0)
    mask_penalty: float = Field(10.0, ge=0, description="weight of the mean gate (L0 or L1)")

    @model_validator(mode="after")
    def _patching_is_recorded(self) -> RecordConfig:
        missing = [kind for kind in self.patching if kind not in self.sites]
        if self.masks and "mlp" not in self.sites:
            missing.append("mlp")
        if missing:
            raise ValueError(
                f"record.patching or record.masks need {missing}, "
                "which record.sites does not record"
            )
        return self


def set_name(fraction: float) -> str:
    """File stem for a top-N fraction: 0.05 -> 'top5', 0.025 -> 'top2p5' (no dot in stems)."""
    return "top" + f"{100 * fraction:g}".replace(".", "p")


class NeuronsConfig(Section):
    site: Literal["resid", "mlp", "attn"] = "resid"
    scorer: str = "pearson"
    # At most half the neurons: the random control draws as many from the rest.
    top_n: list[Annotated[float, Field(gt=0, le=0.5)]] = Field([0.05, 0.10], min_length=1)
    # Ten split-halves give a stable mean at the cost of ten scorings.
    consistency_splits: int = Field(
        10, ge=1, description="seeded split-halves of the pairs for the consistency check"
    )

    @model_validator(mode="after")
    def _distinct_files(self) -> NeuronsConfig:
        names = [set_name(fraction) for fraction in self.top_n]
        if len(set(names)) < len(names):
            raise ValueError(f"top_n {self.top_n} names one neuron set twice; drop one")
        return self


class ProbeConfig(Section):
    classifier: str = "logreg"
    folds: int = Field(5, ge=2)
    learning_curve: list[Annotated[int, Field(ge=2)]] = Field(
        [10, 20, 50, 100, 200, 400], min_length=1, description="pairs per fit on the curve"
    )


# A positive, finite number: a size, a budget, an alpha.
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class SteerConfig(Section):
    # memgen/steering/methods.py says what each method does and what its sizes mean.
    methods: list[str] = Field(
        ["nmd", "nmd_sd", "fitted", "fitted_layer", "mean_diff", "probe"],
        min_length=1,
        description="steering methods to tune and compare",
    )
    alphas: list[Positive] = Field(
        [1.0, 3.0, 5.0], min_length=1, description="nmd: alpha x NMD (the paper's unit)"
    )
    sd_alphas: list[Positive] = Field(
        [0.25, 0.5, 1.0, 2.0, 4.0],
        min_length=1,
        description="nmd_sd: sds the median selected neuron moves",
    )
    budgets: list[Positive] = Field(
        [2.0, 4.0, 8.0, 16.0, 32.0],
        min_length=1,
        description="fitted: L2 norm of the fitted values, in budget_unit (neuron sds)",
    )
    # sd: a budget counts the fitted values in neuron sds. norm: it counts the shift's norm
    # as a share of each layer's mean activation norm (in quadrature over layers), a push
    # that means the same on every model (one sd budget pushed SmolLM2 math seeds 0.01-0.07;
    # pushed alike, they still steered apart: docs/log/smollm2-math.md).
    budget_unit: Literal["sd", "norm"] = Field("sd", description="fitted: what a budget counts")
    dense_alphas: list[Positive] = Field(
        [2.0, 4.0, 8.0, 16.0, 32.0],
        min_length=1,
        description="mean_diff: x the layer's NMD vector; probe: x the sd along the direction",
    )
    # last: the last position of every forward pass (the paper's); prompt: the prompt's
    # last token only (the decision point).
    positions: list[Literal["last", "prompt"]] = Field(["last", "prompt"], min_length=1)
    n_prompts: int = Field(
        400, ge=4, description="test prompts per direction: half to tune on, half held out"
    )
    draws: int = Field(5, ge=1, description="random draws of each matched control")
    # Every setting is first tried on `screen_prompts` tuning prompts; the best go on to
    # the whole tuning split, `screen_keep` at a time, until one meets `max_other` and
    # `min_retention` (memgen/steering/tuning.py says why).
    screen_prompts: int = Field(
        48, ge=0, description="tuning prompts each setting is screened on; 0: no screening"
    )
    screen_keep: int = Field(
        4, ge=1, description="settings per method measured on the whole tuning split at a time"
    )
    # random: random neurons, shifts of the selected sizes with random signs (the paper's).
    # low_correlation: the least correlated neurons, shifted by those sizes their own way.
    controls: list[Literal["random", "low_correlation"]] = ["random", "low_correlation"]
    max_other: float = Field(0.10, ge=0, le=1, description="a setting above this is not chosen")
    min_retention: float = Field(
        0.95, ge=0, le=1, description="a setting below this retention is not chosen"
    )
    n_side_effect: int = Field(
        200, ge=0, description="training prompts per direction for side effects, halved"
    )
    fit_steps: int = Field(150, ge=1, description="Adam steps per fitted shift")
    batch_size: int = Field(128, ge=1, description="rows per steered generate call")
    fit_lr: float = Field(0.1, gt=0, allow_inf_nan=False, description="in neuron sds per step")
    fit_batch: int = Field(16, ge=1, description="prompts per fitted shift per step")


class SpecificityConfig(Section):
    # Fitted steering on the top-N% neurons against as many random ones per layer, fitted
    # the same way, over set sizes, budgets, sites and scorers.
    sizes: list[Annotated[float, Field(gt=0, le=0.5)]] = Field(
        [0.005, 0.01, 0.02, 0.05, 0.1], min_length=1
    )
    budgets: list[Positive] = Field([4.0, 16.0], min_length=1)
    sites: list[Literal["resid", "mlp", "attn"]] = Field(["resid", "mlp"], min_length=1)
    scorers: list[str] = Field(["pearson"], min_length=1)
    draws: int = Field(5, ge=1)
    position: Literal["last", "prompt"] = "last"
    fit_batch: int = Field(16, ge=1, description="prompts per fitted shift per step")
    # The budget's unit. write: its layer's mean sd over the neuron's write norm relative
    # to the layer's (every neuron of a layer moves the residual stream as far per unit, so
    # neither arm gets more push per unit); layer: the layer's mean sd; neuron: the
    # neuron's own sd (before 2026-12-05: it gives high-variance picks, as attribution's
    # are, 2-4x the push of random neurons: docs/findings.md section 6).
    units: Literal["neuron", "layer", "write"] = "write"


class BoundConfig(Section):
    # `memgen bound`: the best shared shift per layer, fitted on half the prompts.
    site: Literal["resid", "mlp", "attn"] = "resid"
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, description="layers to fit; default all"
    )
    n_prompts: int = Field(300, ge=2, description="test prompts per direction, halved")
    steps: int = Field(150, ge=1, description="Adam steps per fitted shift")
    lr: float = Field(0.1, gt=0)


class AblateConfig(Section):
    # `memgen ablate`: each site at each layer scaled (0 knocks it out) on mem and gen prompts.
    sites: list[Literal["attn", "mlp"]] = Field(["attn", "mlp"], min_length=1)
    scales: list[float] = Field([0.0], min_length=1, description="0 knocks the site out")
    # all: a knockout of the component; last: only its computation at the last position.
    position: Literal["last", "all"] = "all"
    n_prompts: int = Field(150, ge=1, description="test prompts per behaviour")


class LocalizeConfig(Section):
    # `memgen localize`: facts planted in known MLP neurons; can the selectors find them?
    fraction: float = Field(0.01, gt=0, lt=1, description="planted share of each layer's MLP")
    n_facts: int = Field(16, ge=1, description="facts planted")
    steps: int = Field(300, ge=1, description="most Adam steps of planting")
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(32, ge=1, description="replayed training rows per step")
    # Planting runs until every fact is recalled or the steps run out; the tests then use
    # the facts it made (seeds 1 and 3 of the tiny control stall at 7 of 8).
    target: float = Field(0.75, gt=0, le=1, description="share of facts planting must make")
    selectors: list[
        Literal["attribution", "hardconcrete", "slimming", "activation", "nmd", "random"]
    ] = Field(["attribution", "activation", "nmd", "random"], min_length=1)
    sizes: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        [0.01, 0.05], min_length=1, description="selections, as shares of all MLP neurons"
    )
    draws: int = Field(20, ge=1, description="random selections per row, for its p-value")
    n_reference: int = Field(256, ge=1, description="training prompts giving usual values")
    n_ordinary: int = Field(
        300, ge=1, description="training prompts kept out of planting, for the collateral"
    )


class DeleteConfig(Section):
    # `memgen delete`: each scorer's top-N% MLP neurons, chosen on the flipped pairs,
    # deleted on held-out prompts beside random sets with the same per-layer counts.
    scorers: list[str] = Field(["attribution", "pearson"], min_length=1)
    sizes: list[Annotated[float, Field(gt=0, le=0.5)]] = Field(
        [0.001, 0.005, 0.01, 0.05], min_length=1, description="shares of all MLP neurons"
    )
    ablations: list[Literal["mean", "zero"]] = Field(
        ["mean", "zero"], min_length=1, description="mean: the training-prompt mean"
    )
    draws: int = Field(20, ge=1, description="random sets per row, for its rank p-value")
    # The random sets: any neurons of the same layers, or ones of the same layers whose
    # spread (activation sd x write norm: how far deleting one moves the residual stream)
    # is near each selected neuron's, from its `spread_window` nearest in the layer.
    control: Literal["layer", "spread"] = "layer"
    spread_window: int = Field(32, ge=2, description="neurons a spread-matched pick is from")
    n_reference: int = Field(256, ge=1, description="training prompts giving the mean")
    n_prompts: int = Field(400, ge=1, description="held-out prompts per behaviour, at most")
    n_train: int = Field(200, ge=1, description="training prompts measured for damage")
    # Per memory (a trigger of math or cipher): neurons chosen on its own pairs alone.
    matrix: bool = True
    matrix_size: float = Field(0.01, gt=0, le=0.5)
    min_pairs: int = Field(5, ge=2, description="pairs a memory needs to get a matrix row")


class RunConfig(Section):
    task: str = "color"
    seed: int = Field(0, ge=0)
    device: str = "auto"
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    behave: BehaveConfig = BehaveConfig()
    record: RecordConfig = RecordConfig()
    neurons: NeuronsConfig = NeuronsConfig()
    probe: ProbeConfig = ProbeConfig()
    steer: SteerConfig = SteerConfig()
    specificity: SpecificityConfig = SpecificityConfig()
    bound: BoundConfig = BoundConfig()
    ablate: AblateConfig = AblateConfig()
    localize: LocalizeConfig = LocalizeConfig()
    delete: DeleteConfig = DeleteConfig()


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise MemgenError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


# A config is a few hundred values; YAML aliases can make a small file stand for billions
# (each alias of an alias doubles the tree), which validation would walk forever.
MAX_VALUES = 100_000
MAX_CONFIG_BYTES = 1 << 20


def _check_size(tree: Any, source: str) -> None:
    """Refuse a tree of more than MAX_VALUES values, counting every alias as a copy."""
    count, stack = 0, [tree]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise MemgenError(
                f"{source}: expands to more than {MAX_VALUES:,} values (nested YAML "
                "aliases?); write the config out without aliases"
            )
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _shown(value: Any, limit: int = 80) -> str:
    """A value for an error message: its repr, cut short (an input may be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["train.lr=3e-4", "task=math"]` -> nested dict; values are parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise MemgenError(f"override {_shown(item)} is not key=value (e.g. train.lr=3e-4)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise MemgenError(f"override {_shown(item)}: the value is not valid YAML") from None
        _check_size(value, f"override {key.strip()}")
        _set_path(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# Keys renamed since a recipe was published, so an old command names its fix.
_MOVED = {"train.n_eval": "data.n_dev (checkpoints are chosen on dev prompts, not test)"}


def format_validation_error(error: ValidationError, source: str) -> str:
    """The first problem, on one line, naming the dotted key."""
    first = error.errors()[0]
    key = (".".join(str(part) for part in first["loc"]) or "<root>")[:100]
    if first["type"] == "extra_forbidden" and key in _MOVED:
        return f"{source}: {key} is now {_MOVED[key]}; rename it"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key {key!r}; remove it or check the spelling (memgen config)"
    return f"{source}: {key}: {first['msg']} (got {_shown(first.get('input'))})"


def presets() -> dict[str, Path]:
    """The recipes shipped inside the package, by name (`gpt2-cipher-cpu`, ...)."""
    folder = Path(str(resources.files("memgen") / "configs"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_config(path: Path) -> Path:
    """A config file by path, or a shipped preset by name, so a wheel install finds them too."""
    if path.is_file():
        return path
    shipped = presets()
    name = path.name.removesuffix(".yaml")
    if name in shipped and path.parent in (Path(), Path("configs")):
        return shipped[name]
    if path.exists():
        raise MemgenError(f"config {path} is not a file; pass a YAML file or a preset name")
    raise MemgenError(
        f"config file {path} does not exist; pass a YAML file or a preset: {', '.join(shipped)}"
    )


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Read YAML (a path or a preset's name; optional), apply overrides, validate.
    Raises MemgenError on any problem."""
    tree: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = resolve_config(Path(path))
        source = str(path)
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise MemgenError(
                f"{path}: {path.stat().st_size:,} bytes is too large for a config "
                f"(at most {MAX_CONFIG_BYTES:,}); is it a config file?"
            )
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise MemgenError(f"{path}: not UTF-8 text; is it a config file?") from None
        except RecursionError:
            raise MemgenError(f"{path}: nested too deeply for a config; flatten it") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise MemgenError(f"{path}: not valid YAML{where}; fix the syntax") from None
        if not isinstance(loaded, dict):
            raise MemgenError(f"{path}: the top level must be a mapping of sections")
        _check_size(loaded, str(path))
        tree = loaded
    tree = _merge(tree, parse_overrides(overrides or []))
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        where = _override_setting(exc, overrides or []) or source
        raise MemgenError(format_validation_error(exc, where)) from None


def _override_setting(exc: ValidationError, overrides: list[str]) -> str | None:
    """The override that set the first invalid field, if one did: the error names what
    the user typed, not the config file it was applied over."""
    field = ".".join(str(part) for part in exc.errors()[0]["loc"])
    for item in overrides:
        key = item.partition("=")[0].strip()
        if field == key or field.startswith(key + "."):
            return f"override {_shown(item)}"
    return None


def to_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
