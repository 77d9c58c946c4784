"""Registry of model constructors, so a model can be rebuilt from a JSON-able spec."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from landscape.core.errors import bad_argument
from landscape.core.spec import SPEC_ATTRIBUTE, spec_of

__all__ = ["available", "create", "example_input", "from_spec", "parse_spec", "register", "spec_of"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that makes a model constructor available to :func:`create` under ``name``.

    Examples
    --------
    >>> @register("tiny_linear")
    ... def tiny_linear(input_shape=(4,), num_classes=2):
    ...     return torch.nn.Linear(input_shape[0], num_classes)
    >>> create("tiny_linear").out_features
    2
    """

    def decorate(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = constructor
        return constructor

    return decorate


def available() -> list[str]:
    """Names of the registered models."""
    return sorted(_REGISTRY)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def create(name: str, *, seed: int | None = None, **kwargs: Any) -> nn.Module:
    """Build the zoo model ``name`` with keyword arguments.

    Parameters
    ----------
    name
        One of :func:`available` (``"mlp"``, ``"cnn1d"``, ``"cnn2d"``, ``"resnet"``, ``"vit"``, ``"gpt"``).
    seed
        Seed of the parameter initialisation; None draws from torch's global generator. The
        global generator is left untouched when a seed is given.
    **kwargs
        The constructor's arguments (e.g. ``width``, ``depth``, ``input_shape``, ``num_classes``).

    Returns
    -------
    torch.nn.Module
        The model, in eval mode, with its spec attached (see :func:`spec_of`).

    Examples
    --------
    >>> model = create("mlp", width=16, depth=1, seed=0)
    >>> spec_of(model)["name"], spec_of(model)["width"]
    ('mlp', 16)
    """
    if name not in _REGISTRY:
        raise bad_argument("create", "name", expected=f"one of {available()}", found=repr(name))
    constructor = _REGISTRY[name]
    parameters = inspect.signature(constructor).parameters
    unknown = [k for k in kwargs if k not in parameters]
    if unknown:
        raise bad_argument(
            "create",
            unknown[0],
            expected=f"an argument of model {name!r}: {', '.join(parameters)}",
            found=f"unknown argument {unknown[0]!r}",
        )
    if seed is None:
        model = constructor(**kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = constructor(**kwargs)
    spec = {"name": name, **{k: _jsonable(v) for k, v in kwargs.items()}}
    setattr(model, SPEC_ATTRIBUTE, spec)
    return model.eval()


def example_input(model: nn.Module, *, batch: int = 2, seed: int = 0) -> torch.Tensor | None:
    """Random inputs shaped like real ones for a zoo model (from its spec and the constructor's
    defaults): token ids for ``gpt``, Gaussian inputs otherwise. None for other models.

    Examples
    --------
    >>> example_input(create("cnn2d")).shape
    torch.Size([2, 1, 8, 8])
    """
    spec = spec_of(model)
    constructor = _REGISTRY.get(spec["name"]) if spec else None
    if spec is None or constructor is None:
        return None
    defaults = {k: p.default for k, p in inspect.signature(constructor).parameters.items()}
    generator = torch.Generator().manual_seed(seed)
    if "vocab_size" in defaults:
        vocab = int(spec.get("vocab_size", defaults["vocab_size"]))
        context = int(spec.get("context", defaults["context"]))
        return torch.randint(0, vocab, (batch, context), generator=generator)
    shape = spec.get("input_shape", defaults.get("input_shape"))
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    return torch.randn((batch, *shape), generator=generator)


def from_spec(spec: Mapping[str, Any] | str, *, seed: int | None = None) -> nn.Module:
    """Rebuild a model from a spec dict, a JSON string, or the CLI form ``"mlp:width=128,depth=2"``."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    spec = dict(spec)
    if "name" not in spec:
        raise bad_argument("from_spec", "spec", expected="a spec with a 'name' entry", found=str(spec))
    name = spec.pop("name")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    return create(name, seed=seed, **kwargs)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if "x" in text and all(p.isdigit() for p in text.split("x")):
            return [int(p) for p in text.split("x")]  # 1x8x8 for shapes
        return text


def parse_spec(text: str) -> dict[str, Any]:
    """Parse ``"mlp"``, ``"mlp:width=128,depth=2"`` or a JSON object into a spec dict.

    Values are read as JSON where possible (``128``, ``"batch"``, ``[1,8,8]``) and shapes may
    be written ``1x8x8``.

    Examples
    --------
    >>> parse_spec("resnet:width_multiplier=2,norm=layer,input_shape=1x8x8")
    {'name': 'resnet', 'width_multiplier': 2, 'norm': 'layer', 'input_shape': [1, 8, 8]}
    """
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise bad_argument("parse_spec", "text", expected="valid JSON", found=repr(text), fix=str(err)) from err
        if not isinstance(spec, dict) or "name" not in spec:
            raise bad_argument("parse_spec", "text", expected="a JSON object with a 'name'", found=repr(text))
        return spec
    name, _, rest = text.partition(":")
    spec: dict[str, Any] = {"name": name.strip()}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise bad_argument(
                "parse_spec",
                "text",
                expected="key=value pairs after the model name",
                found=repr(item),
                fix="Write e.g. mlp:width=128,depth=2.",
            )
        spec[key.strip()] = _parse_value(value.strip())
    return spec
