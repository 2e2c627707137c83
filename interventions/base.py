"""Intervention configs and their lifecycle: registry, JSON and CLI forms, handles, and the one cleanup path.

An intervention is a small frozen dataclass of JSON primitives with a registry ``name``. Construction rejects
non-finite numbers, then runs the subclass's ``check()``. ``attach(lvlm)`` runs ``install`` and returns a
``Handle`` whose ``remove()`` undoes exactly that, once. ``apply(lvlm, *configs)`` is the only place that pairs the
two (registering inside ``try``, removing its own handles in ``finally``); the ``@intervene`` decorator,
``Composite`` and ``LVLM.generate(..., intervention=...)`` all go through it. ``to_spec()`` and
``parse_intervention`` convert to and from the CLI form (``"vhr:alpha=2"``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar, ParamSpec, TypeVar, get_type_hints

from transformers import LogitsProcessor

from halluc.errors import ConfigError
from halluc.models import LVLM
from interventions.batching import add_generation_hook
from interventions.firing import FiringMonitor

__all__ = [
    "REGISTRY",
    "Composite",
    "Handle",
    "Intervention",
    "StepForwardProcessor",
    "apply",
    "check_decoding",
    "from_dict",
    "intervene",
    "paper_defaults",
    "parse_intervention",
    "register",
]

REGISTRY: dict[str, type[Intervention]] = {}
COMPOSITE = "composite"
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")

P = ParamSpec("P")
R = TypeVar("R")
I = TypeVar("I", bound="Intervention")  # noqa: E741


def register(name: str) -> Callable[[type[I]], type[I]]:
    """Class decorator adding an Intervention subclass to REGISTRY under ``name``; a second use of a name raises."""

    def decorate(cls: type[I]) -> type[I]:
        if name in REGISTRY or name == COMPOSITE:
            raise ConfigError(f"intervention name {name!r} is already registered (by {REGISTRY.get(name, Composite)})")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return decorate


def paper_defaults() -> dict[str, Intervention]:
    """Every registered method at its default configuration (the paper's and official code's), by registry name:
    the systems a comparison table puts side by side."""
    return {name: cls() for name, cls in sorted(REGISTRY.items())}


def _did_you_mean(given: object, valid: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or nothing when none is close."""
    close = difflib.get_close_matches(given, valid, n=1) if isinstance(given, str) else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def _lookup(name: object) -> type[Intervention]:
    """The registered class for ``name``, or a ConfigError suggesting the closest name and listing the valid ones."""
    if not isinstance(name, str) or name not in REGISTRY:
        valid = sorted(REGISTRY)
        raise ConfigError(
            f"unknown intervention {name!r}{_did_you_mean(name, valid)}; choose one of: {', '.join(valid)}"
        )
    return REGISTRY[name]


class Handle:
    """What ``attach`` returns: the undo steps of one attachment, run newest first by an idempotent ``remove()``."""

    def __init__(self, name: str) -> None:
        """Start an empty handle for the intervention called ``name``."""
        self.name = name
        self._undo: list[Callable[[], None]] = []

    def on_remove(self, undo: Callable[[], None]) -> None:
        """Record one undo step (a hook handle's remove, a registry pop) as soon as the thing exists."""
        self._undo.append(undo)

    @property
    def attached(self) -> bool:
        """Whether anything is still installed."""
        return bool(self._undo)

    def remove(self) -> None:
        """Undo everything this handle installed; calling it again does nothing."""
        while self._undo:
            self._undo.pop()()

    def __repr__(self) -> str:
        """Name and state, for logs."""
        return f"Handle({self.name!r}, attached={self.attached})"


@dataclasses.dataclass(frozen=True)
class Intervention:
    """Base of every intervention config: serialisable, comparable, and attachable to an LVLM."""

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        """Reject non-finite numbers (an infinite strength empties every caption), then run ``check()``."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{self.name}: {field.name}={value!r} is not a finite number")
        self.check()

    def check(self) -> None:
        """Validate field values, raising ConfigError naming the bad one; subclasses override it."""

    def follows_one_row_per_sample(self) -> bool:
        """Whether this method needs exactly one generated sequence per prompt (a contrast branch steps with it),
        so beam search cannot run it; subclasses with such a branch override it."""
        return False

    def reads_step_forward(self) -> bool:
        """Whether its logits processor reads what hooks captured in the step's forward (a
        ``StepForwardProcessor``), so a decoding loop with extra forwards per step cannot run it."""
        return False

    def own_decoding_beams(self) -> int | None:
        """The beam count when this method runs its own decoding loop with extra forwards per step (OPERA's
        candidates), else None; such a loop fixes the beams and cannot host the two kinds of methods above."""
        return None

    def install(self, lvlm: LVLM, handle: Handle) -> None:
        """Install this method's machinery on ``lvlm``, recording each undo step on ``handle`` as it goes."""
        raise NotImplementedError(f"{type(self).__name__} must implement install()")

    def attach(self, lvlm: LVLM) -> Handle:
        """Install on ``lvlm`` and return the handle; a failure half-way removes what was already installed."""
        handle = Handle(self.name)
        try:
            self.install(lvlm, handle)
        except BaseException:
            handle.remove()
            raise
        return handle

    def apply(self, lvlm: LVLM) -> AbstractContextManager[list[Handle]]:
        """Context manager attaching this config for the block (what ``generate(..., intervention=)`` calls)."""
        return apply(lvlm, self)

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., field: value, ...}``: what run manifests record."""
        return {"name": self.name, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        """The config as one JSON object."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_spec(self) -> str:
        """The CLI form, inverse of ``parse_intervention``: the name, then each field that differs from its default."""
        items = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value == field.default:
                continue
            text = (
                str(value).lower()
                if isinstance(value, bool)
                else repr(value)
                if isinstance(value, float)
                else str(value)
            )
            if "," in text or text != text.strip():
                raise ConfigError(
                    f"{self.name}: {field.name}={text!r} cannot be written as a spec (comma or edge spaces)"
                )
            items.append(f"{field.name}={text}")
        return self.name + (":" + ",".join(items) if items else "")


@dataclasses.dataclass(frozen=True)
class Composite:
    """Several interventions applied together, in order, as one object with ``apply(lvlm)``."""

    parts: tuple[Intervention, ...]

    name: ClassVar[str] = COMPOSITE

    def __post_init__(self) -> None:
        """Reject anything that is not an Intervention config."""
        for part in self.parts:
            if not isinstance(part, Intervention):
                raise ConfigError(f"Composite parts must be Intervention configs, got {type(part).__name__}")

    def apply(self, lvlm: LVLM) -> AbstractContextManager[list[Handle]]:
        """Context manager attaching every part for the block."""
        return apply(lvlm, *self.parts)

    def to_dict(self) -> dict[str, Any]:
        """``{"name": "composite", "parts": [...]}``."""
        return {"name": COMPOSITE, "parts": [part.to_dict() for part in self.parts]}

    def to_json(self) -> str:
        """The composite as one JSON object."""
        return json.dumps(self.to_dict(), sort_keys=True)


class StepForwardProcessor(LogitsProcessor):
    """A logits processor that reads what hooks captured during the step's forward (DoLa's early exits, VISTA's
    early layers): right only when the model's last forward was the step's own, so decoding loops that run extra
    forwards before the processors (OPERA's candidates) refuse it."""


def check_decoding(config: Intervention | Composite | None, num_beams: int) -> None:
    """Refuse, before any model loads, a decoding the methods cannot follow: a beam search with a contrast branch,
    and an own decoding loop (OPERA) with another loop, another beam count, a contrast branch or a processor that
    reads the step's forward."""
    parts = [] if config is None else _flatten((config,))
    loops = [part for part in parts if part.own_decoding_beams() is not None]
    if len(loops) > 1:
        names = ", ".join(part.to_spec() for part in loops)
        raise ConfigError(f"several methods run their own decoding loop ({names}); choose one of them")
    if loops:
        loop, beams = loops[0].to_spec(), loops[0].own_decoding_beams()
        if num_beams not in (1, beams):
            raise ConfigError(
                f"{loop} runs its own beam search with {beams} beams; got --num-beams {num_beams}: drop "
                f"--num-beams or set the method's num_beams={num_beams}"
            )
        blocked = [p.to_spec() for p in parts if p.follows_one_row_per_sample() or p.reads_step_forward()]
        if blocked:
            raise ConfigError(
                f"{loop} cannot run with {', '.join(blocked)}: its beams roll back and it runs extra forwards each "
                "step, which a contrast branch or a processor reading the step's forward cannot follow; drop them, "
                "or turn their part off (e.g. cfg=false, vista:alpha=0)"
            )
    blocked = [part.to_spec() for part in parts if part.follows_one_row_per_sample()]
    if num_beams > 1 and blocked:
        raise ConfigError(
            f"--num-beams {num_beams} cannot run {', '.join(blocked)}: its contrast branch follows one sequence per "
            "prompt; use greedy decoding (--num-beams 1) or turn the branch off (e.g. cfg=false)"
        )


def _flatten(configs: tuple[Intervention | Composite | str, ...]) -> list[Intervention]:
    """Composites expanded into their parts and spec strings parsed; anything else is rejected before attaching."""
    flat: list[Intervention] = []
    for config in configs:
        if isinstance(config, str):
            flat.append(parse_intervention(config))
        elif isinstance(config, Composite):
            flat.extend(config.parts)
        elif isinstance(config, Intervention):
            flat.append(config)
        else:
            raise ConfigError(f"expected Intervention configs or spec strings, got {type(config).__name__}: {config!r}")
    return flat


@contextmanager
def apply(lvlm: LVLM, *configs: Intervention | Composite | str) -> Iterator[list[Handle]]:
    """Attach ``configs`` for the block, then remove exactly these handles (newest first), even on error.

    Nesting-safe: an inner block never touches an outer block's hooks. The attention implementation is shared and
    reference-counted per model, so it returns to what it was before the first edit once the last one is removed.
    After the parts, a ``FiringMonitor`` measures their first-step effect on every generate call (see firing.py).
    """
    parts = _flatten(configs)
    handles: list[Handle] = []
    remove_monitor = None
    try:
        for part in parts:
            handles.append(part.attach(lvlm))
        if parts:
            remove_monitor = add_generation_hook(lvlm, FiringMonitor([part.name for part in parts]))
        yield handles
    finally:
        if remove_monitor is not None:
            remove_monitor()
        for handle in reversed(handles):
            handle.remove()


def intervene(*configs: Intervention | Composite | str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator running a function whose first argument is the LVLM with ``configs`` applied for the call."""
    _flatten(configs)  # fail at decoration time, not at the first call

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not args or not isinstance(args[0], LVLM):
                raise ConfigError(f"@intervene needs the LVLM as the first argument of {fn.__name__}()")
            with apply(args[0], *configs):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def _field_types(cls: type[Intervention]) -> dict[str, type]:
    """Declared type of each config field (float, int, bool or str)."""
    hints = get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def _from_text(cls: type[Intervention], key: str, text: str, kind: type) -> object:
    """Convert one CLI value to the field's type, naming the key and the expected type on failure."""
    if kind is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
    elif kind is str:
        return text
    else:
        try:
            return kind(text)
        except ValueError:
            pass
    raise ConfigError(f"{cls.name}: {key}={text!r} is not a valid {kind.__name__}")


def _check_key(cls: type[Intervention], key: str, types: dict[str, type]) -> None:
    """A ConfigError suggesting the closest parameter and listing the valid ones when ``key`` is not a field."""
    if key not in types:
        valid = list(types)
        raise ConfigError(
            f"{cls.name}: unknown parameter {key!r}{_did_you_mean(key, valid)}; valid parameters: {', '.join(valid)}"
        )


def _build(cls: type[Intervention], values: dict[str, object]) -> Intervention:
    """Instantiate ``cls`` after checking that every key is a field."""
    types = _field_types(cls)
    for key in values:
        _check_key(cls, key, types)
    return cls(**values)


def parse_intervention(spec: str) -> Intervention:
    """Parse a CLI string such as ``"vhr"`` or ``"vhr:alpha=2,layers=last"`` into a config."""
    name, _, rest = spec.strip().partition(":")
    cls = _lookup(name.strip())
    types = _field_types(cls)
    values: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, text = (s.strip() for s in item.partition("="))
        if not sep:
            raise ConfigError(f"{cls.name}: expected key=value, got {item!r} in {spec!r}")
        _check_key(cls, key, types)
        values[key] = _from_text(cls, key, text, types[key])
    return _build(cls, values)


def _check_json_value(cls: type[Intervention], key: str, value: object, kind: type) -> object:
    """Accept a JSON value for a field of type ``kind`` (ints for floats; never bools for numbers)."""
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(f"{cls.name}: {key}={value!r} is not a valid {kind.__name__}")
    return value


def from_dict(data: dict[str, Any]) -> Intervention | Composite:
    """Rebuild a config (or a composite) from ``to_dict()`` output, e.g. a run manifest entry."""
    if not isinstance(data, dict):
        raise ConfigError(f"an intervention must be a JSON object with a 'name', got {type(data).__name__}")
    values = dict(data)
    name = values.pop("name", None)
    if name == COMPOSITE:
        return Composite(tuple(_expect_single(from_dict(part)) for part in values.get("parts", [])))
    cls = _lookup(name)
    types = _field_types(cls)
    checked = {key: _check_json_value(cls, key, value, types[key]) for key, value in values.items() if key in types}
    return _build(cls, {**values, **checked})


def _expect_single(config: Intervention | Composite) -> Intervention:
    """A composite part must itself be a plain intervention."""
    if isinstance(config, Composite):
        raise ConfigError("a composite cannot contain another composite; list its parts instead")
    return config
