"""The one hook mechanism: read activations with `record`, change them with `intervene`.

    with record(model, [Site("resid", 3), Site("mlp", 3)]) as rec:
        model(input_ids=ids, attention_mask=mask)
    rec[Site("resid", 3)]                       # [batch, hidden], last position

    push = Intervention(Site("resid", 3), neurons=(5, 17), op="add", values=(0.4, -1.2))
    with intervene(model, [push]):
        model.generate(...)                     # applied at every forward pass

Every hook on a site (a layer's residual stream, MLP neurons or attention output) is
registered here; `edit` runs any function at a site, for what `Intervention` cannot say.
The package's other hooks are not on sites: a pass counter on the whole model
(`steering.shifts`), a leaf at the token embeddings (`core.modeling.embeddings_as_leaf`)
and, in `localize`, gradient masks on parameters. All three context managers
resolve every site before registering anything, fail with MemgenError when one does
not resolve, and remove every handle in `finally`. Hooks registered later run later,
so a `record` opened inside an `intervene` sees the changed activations.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch.utils.hooks import RemovableHandle

from memgen.core.errors import MemgenError
from memgen.core.sites import Hookpoint, Site, locate, site_width

# Where a hook reads or changes a site: "last" is the last position of every forward pass
# (the prompt's last token, then each generated token), "prompt" only the prompt's last
# token (the decision point: the first pass of a cached `generate`, the only one that sees
# more than one position), "all" every position of every pass.
Position = Literal["last", "prompt", "all"]
Op = Literal["add", "scale", "set", "zero"]
OPS: tuple[Op, ...] = get_args(Op)
POSITIONS: tuple[Position, ...] = get_args(Position)

# Takes the site's activation [batch, seq, width]; changes it in place or returns a new one.
Edit = Callable[[torch.Tensor], torch.Tensor | None]


def _is_index(n: object) -> bool:
    """A whole number: an int (numpy's too) or an integral float, as JSON may give."""
    if isinstance(n, bool):
        return False
    return isinstance(n, numbers.Integral) or (isinstance(n, float) and n.is_integer())


@dataclass(frozen=True)
class Intervention:
    """Change `neurons` of `site` by `op` with `values`, at the last position or at all.

    `values` has one entry per neuron, or one entry for all of them; `zero` takes none.
    `add` adds, `scale` multiplies, `set` overwrites, `zero` sets to 0. `position` is
    one of `Position` ("last", "prompt" or "all").
    """

    site: Site
    neurons: tuple[int, ...]
    op: Op
    values: tuple[float, ...] = ()
    position: Position = "last"

    def __post_init__(self) -> None:
        where = f"intervention at {self.site}"
        # Accept lists (e.g. from JSON) but store tuples, so the value stays hashable;
        # a string or 1.9 as a neuron index is a mistake, not something to round.
        if isinstance(self.neurons, str) or not all(map(_is_index, self.neurons)):
            raise MemgenError(f"{where}: neurons must be whole numbers (got {self.neurons!r})")
        object.__setattr__(self, "neurons", tuple(int(n) for n in self.neurons))
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        if self.op not in OPS:
            raise MemgenError(f"{where}: op {self.op!r} is not one of {', '.join(OPS)}")
        if self.position not in POSITIONS:
            raise MemgenError(
                f"{where}: position {self.position!r} is not one of {', '.join(POSITIONS)}"
            )
        if not self.neurons:
            raise MemgenError(f"{where}: no neurons given")
        if min(self.neurons) < 0:
            raise MemgenError(f"{where}: neuron indices must be >= 0 (got {min(self.neurons)})")
        if len(set(self.neurons)) != len(self.neurons):
            raise MemgenError(f"{where}: neuron indices repeat; give each neuron once")
        if self.op == "zero" and self.values:
            raise MemgenError(f"{where}: op 'zero' takes no values")
        if self.op != "zero" and len(self.values) not in (1, len(self.neurons)):
            raise MemgenError(
                f"{where}: {len(self.values)} values for {len(self.neurons)} neurons; "
                "give one value per neuron, or one for all"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": {"kind": self.site.kind, "layer": self.site.layer},
            "neurons": list(self.neurons),
            "op": self.op,
            "values": list(self.values),
            "position": self.position,
        }

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> Intervention:
        try:
            site = row["site"]
            return cls(
                # "resid.3" is accepted too, for hand-written files.
                site=Site.parse(site)
                if isinstance(site, str)
                else Site(site["kind"], site["layer"]),
                neurons=tuple(row["neurons"]),
                op=row["op"],
                values=tuple(row.get("values", ())),
                position=row.get("position", "last"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MemgenError(
                f"not an intervention (missing or bad {exc}): {dict(row)!r}; expected "
                "{site: {kind, layer}, neurons: [...], op, values: [...], position}"
            ) from None


class NotRecorded(MemgenError, KeyError):
    """A site that `record()` was not asked for: a KeyError, so `rec.get` works."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Recording(Mapping[Site, torch.Tensor]):
    """Captured activations per site, one tensor per forward call.

    `rec[site]` concatenates the calls along the batch dimension: with position
    "last" that is [sum of batch sizes, width]. `rec.calls(site)` keeps them apart
    (during `generate`, one entry per generated token).
    """

    def __init__(self, sites: Sequence[Site]) -> None:
        self._calls: dict[Site, list[torch.Tensor]] = {site: [] for site in sites}

    def calls(self, site: Site | str) -> list[torch.Tensor]:
        key = Site.parse(site) if isinstance(site, str) else site
        if key not in self._calls:
            known = ", ".join(str(s) for s in self._calls)
            raise NotRecorded(f"site {key} was not recorded (recorded: {known})")
        return self._calls[key]

    def __contains__(self, site: object) -> bool:
        try:
            key = Site.parse(site) if isinstance(site, str) else site
        except MemgenError:
            return False
        return key in self._calls

    def __getitem__(self, site: Site | str) -> torch.Tensor:
        calls = self.calls(site)
        if not calls:
            raise MemgenError(f"nothing recorded at {site}: no forward pass ran inside record()")
        if len(calls) == 1:
            return calls[0]
        try:
            return torch.cat(calls, dim=0)
        except RuntimeError:
            raise MemgenError(
                f"calls at {site} differ in shape; use rec.calls(site) for position='all'"
            ) from None

    def __iter__(self) -> Iterator[Site]:
        return iter(self._calls)

    def __len__(self) -> int:
        return len(self._calls)

    def clear(self) -> None:
        """Drop what was captured so far (between batches), keep recording."""
        for calls in self._calls.values():
            calls.clear()


def _activation(value: Any, point: Hookpoint) -> torch.Tensor:
    tensor = value[0] if isinstance(value, tuple | list) else value
    if not isinstance(tensor, torch.Tensor):
        raise MemgenError(
            f"site {point.site}: {point.path} gave {type(tensor).__name__}, not a tensor; "
            "fix its entry in FAMILIES in memgen/core/sites.py"
        )
    return tensor


def _with_activation(value: Any, tensor: torch.Tensor) -> Any:
    """`value` with its activation replaced, keeping tuple structure."""
    if isinstance(value, tuple | list):
        return type(value)((tensor, *value[1:]))
    return tensor


def _attach(point: Hookpoint, edit: Edit) -> RemovableHandle:
    """Run `edit` on the site's activation at every forward call of its module."""
    if point.reads == "input":

        def pre_hook(module: torch.nn.Module, args: tuple[Any, ...]) -> Any:
            if not args:
                raise MemgenError(f"site {point.site}: {point.path} was called without inputs")
            new = edit(_activation(args, point))
            return None if new is None else _with_activation(args, new)

        return point.module.register_forward_pre_hook(pre_hook)

    def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        new = edit(_activation(output, point))
        return None if new is None else _with_activation(output, new)

    return point.module.register_forward_hook(hook)


@contextmanager
def _hooked(model: torch.nn.Module, edits: Mapping[Site, Edit]) -> Iterator[None]:
    points = [locate(model, site) for site in edits]  # every site resolves before any hook
    handles: list[RemovableHandle] = []
    try:
        for point in points:
            handles.append(_attach(point, edits[point.site]))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def edit(model: torch.nn.Module, edits: Mapping[Site, Edit]) -> Iterator[None]:
    """Run a function on each site's activation [batch, seq, width] at every forward pass.

    For what an `Intervention` cannot say, such as a shift that is being trained: the
    function may return a new tensor (autograd flows through it) or change it in place.
    """
    with _hooked(model, edits):
        yield


@contextmanager
def record(
    model: torch.nn.Module, sites: Iterable[Site], position: Position = "last"
) -> Iterator[Recording]:
    """Capture detached copies of each site's activation on every forward call, at
    `position` ("prompt": the last position of passes that see more than one)."""
    if position not in POSITIONS:
        raise MemgenError(f"record position {position!r} is not one of {', '.join(POSITIONS)}")
    recording = Recording(list(dict.fromkeys(sites)))

    def capture(calls: list[torch.Tensor]) -> Edit:
        def keep(activation: torch.Tensor) -> None:
            if position == "prompt" and activation.shape[1] == 1:
                return  # a cached decoding step: past the prompt
            # A copy: a view would keep the whole [batch, seq, width] tensor alive and
            # would see later in-place edits.
            chosen = activation if position == "all" else activation[:, -1]
            calls.append(chosen.detach().clone())

        return keep

    with _hooked(model, {site: capture(recording.calls(site)) for site in recording}):
        yield recording


class _Prepared:
    """One intervention with its index and value tensors, cached per device and dtype."""

    def __init__(self, intervention: Intervention, width: int) -> None:
        self.iv = intervention
        self.width = width
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._cache:
            iv = self.iv
            index = torch.tensor(iv.neurons, dtype=torch.long, device=like.device)
            if iv.op == "scale":
                # A full-width multiplier: one kernel, and x * 1.0 leaves other neurons exact.
                dense = torch.ones(self.width, dtype=like.dtype, device=like.device)
                dense[index] = torch.tensor(iv.values, dtype=like.dtype, device=like.device)
                self._cache[key] = (index, dense)
            else:
                values = torch.tensor(iv.values or (0.0,), dtype=like.dtype, device=like.device)
                self._cache[key] = (index, values.expand(len(iv.neurons)))
        return self._cache[key]

    def apply(self, activation: torch.Tensor) -> None:
        """Change `activation` [batch, seq, width] in place."""
        if self.iv.position == "prompt" and activation.shape[1] == 1:
            return  # a cached decoding step: past the prompt
        target = activation if self.iv.position == "all" else activation[:, -1]
        index, values = self.tensors(activation)
        shape = (*target.shape[:-1], len(self.iv.neurons))
        if self.iv.op == "add":
            target.index_add_(-1, index, values.expand(shape))
        elif self.iv.op == "scale":
            target.mul_(values)
        elif self.iv.op == "set":
            target.index_copy_(-1, index, values.expand(shape))
        else:
            target.index_fill_(-1, index, 0.0)


def _editor(prepared: list[_Prepared]) -> Edit:
    def apply_all(activation: torch.Tensor) -> torch.Tensor | None:
        if activation.shape[-1] != prepared[0].width:
            raise MemgenError(
                f"site {prepared[0].iv.site}: activation width {activation.shape[-1]} "
                f"!= expected {prepared[0].width}; fix FAMILIES in memgen/core/sites.py"
            )
        # Without autograd, editing in place saves a copy per call; with it, a copy
        # keeps the graph valid.
        new = activation.clone() if torch.is_grad_enabled() else activation
        for item in prepared:
            item.apply(new)
        return new if new is not activation else None

    return apply_all


@contextmanager
def intervene(model: torch.nn.Module, interventions: Iterable[Intervention]) -> Iterator[None]:
    """Apply interventions on every forward pass; several at one site apply in order."""
    by_site: dict[Site, list[_Prepared]] = {}
    widths: dict[Site, int] = {}
    for iv in interventions:
        if iv.site not in widths:
            locate(model, iv.site)  # a clear error for a bad layer before the width lookup
            widths[iv.site] = site_width(model, iv.site.kind)
        width = widths[iv.site]
        if max(iv.neurons) >= width:
            raise MemgenError(
                f"intervention at {iv.site}: neuron {max(iv.neurons)} is out of range "
                f"(valid 0..{width - 1})"
            )
        by_site.setdefault(iv.site, []).append(_Prepared(iv, width))
    with _hooked(model, {site: _editor(items) for site, items in by_site.items()}):
        yield
