"""What each config value may be, checked before any data or model work.

The schema is the code's own signatures: every config node with a `_target_` is checked against
the type hints of that class's constructor, where `Annotated[int, POSITIVE]`-style hints carry the
ranges and `Literal[...]` the choices. Lightning's Trainer states types but no ranges, so the few
ranges of its keys that users type live in `TRAINER_RANGES`. A bad value stops the run with one
line naming the key, the value and what is allowed.
"""
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from src.errors import UserInputError


@dataclass(frozen=True)
class Range:
    """Bounds on a number; `None` leaves that side open."""

    above: float | None = None  # strictly greater than
    at_least: float | None = None
    below: float | None = None  # strictly less than
    at_most: float | None = None

    def admits(self, value: float) -> bool:
        return (
            (self.above is None or value > self.above)
            and (self.at_least is None or value >= self.at_least)
            and (self.below is None or value < self.below)
            and (self.at_most is None or value <= self.at_most)
        )

    def describe(self, noun: str) -> str:
        if self == POSITIVE:
            return f"a positive {noun}"
        if self == NON_NEGATIVE:
            return f"a non-negative {noun}"
        bounds = [f"> {self.above:g}" if self.above is not None else None,
                  f">= {self.at_least:g}" if self.at_least is not None else None,
                  f"< {self.below:g}" if self.below is not None else None,
                  f"<= {self.at_most:g}" if self.at_most is not None else None]
        return f"a{'n' if noun[0] in 'aeiou' else ''} {noun} " + " and ".join(b for b in bounds if b)


POSITIVE = Range(above=0)
NON_NEGATIVE = Range(at_least=0)
PositiveInt = Annotated[int, POSITIVE]
PositiveFloat = Annotated[float, POSITIVE]
NonNegativeInt = Annotated[int, NON_NEGATIVE]
NonNegativeFloat = Annotated[float, NON_NEGATIVE]
Fraction = Annotated[float, Range(at_least=0, below=1)]  # a share of something, 1 excluded

# Lightning's Trainer: the ranges of the keys users type (-1: no limit)
TRAINER_RANGES: dict[str, Any] = {
    "max_epochs": Annotated[int, Range(at_least=-1)] | None,
    "max_steps": Annotated[int, Range(at_least=-1)],
    "accumulate_grad_batches": PositiveInt,
    "gradient_clip_val": NonNegativeFloat | None,
    "log_every_n_steps": PositiveInt,
    "num_sanity_val_steps": Annotated[int, Range(at_least=-1)],
    "val_check_interval": PositiveInt | Annotated[float, Range(above=0, at_most=1)] | None,
}
# keys at the top of the training config
TOP_LEVEL: dict[str, Any] = {"seed": int, "ckpt_path": str | None, "optimized_metric": str, "test": bool}


def allows(hint: Any, value: Any) -> bool:
    """Whether `value` (plain config data) fits the type `hint`; hints this does not read pass."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (Any, inspect.Parameter.empty):
        return True
    if origin is Annotated:
        return allows(args[0], value) and all(m.admits(value) for m in args[1:] if isinstance(m, Range))
    if origin in (Union, types.UnionType):
        return any(allows(arg, value) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (dict, Mapping) or origin in (dict, Mapping):
        return isinstance(value, Mapping)
    if hint in (list, tuple, Sequence) or origin in (list, tuple, Sequence):
        return isinstance(value, (list, tuple))
    return True  # a class or generic: configs name or describe such objects; the class checks them


def describe(hint: Any) -> str:
    """What `hint` allows, in words: 'a positive integer, null or 'auto''."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        noun = "integer" if args[0] is int else "number"
        return next((m.describe(noun) for m in args[1:] if isinstance(m, Range)), describe(args[0]))
    if origin in (Union, types.UnionType):
        parts = [describe(arg) for arg in args]
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, f"a {getattr(hint, '__name__', hint)}")


def check_value(key: str, value: Any, hint: Any) -> None:
    if allows(hint, value):
        return
    if typing.get_origin(hint) is Literal:
        leaf = key.rsplit(".", 1)[-1]
        raise UserInputError(f"{key}: unknown {leaf} {value!r}; choose one of {', '.join(map(str, typing.get_args(hint)))}")
    raise UserInputError(f"{key}: {value!r} is not {describe(hint)}")


def _constructor_hints(target: str) -> dict[str, Any]:
    constructor = get_object(target)
    hints = typing.get_type_hints(constructor.__init__ if inspect.isclass(constructor) else constructor,
                                  include_extras=True)
    hints.pop("return", None)
    return hints


def check_node(key: str, node: Any) -> None:
    """Check a config node, and every node with a `_target_` below it, against its constructor."""
    if isinstance(node, Mapping):
        target = node.get("_target_")
        hints = _constructor_hints(target) if isinstance(target, str) else {}
        if target == "lightning.pytorch.Trainer":
            hints |= TRAINER_RANGES
        for name, value in node.items():
            path = f"{key}.{name}" if key else str(name)
            if name in hints:
                check_value(path, value, hints[name])
            check_node(path, value)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            check_node(f"{key}[{i}]", item)


def check_config(cfg: DictConfig, sections: Sequence[str] = ("loss", "model", "data", "trainer")) -> None:
    """Check the run's config: the top-level keys and the given sections (resolved)."""
    values = OmegaConf.to_container(cfg, resolve=True)
    for name, hint in TOP_LEVEL.items():
        if name in values:
            check_value(name, values[name], hint)
    for section in sections:
        if section in values:
            check_node(section, values[section])
