"""The architecture and the starting points: zoo model from a spec, the student's initialisation."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from torch import Tensor, nn

from landscape.core.data import Splits
from landscape.core.errors import bad_argument
from landscape.core.state import State, as_state, check_compatible

__all__ = ["interpolated_init", "resolve_model", "student_init"]


def resolve_model(
    model_spec: object, data: Splits | None = None, *, function: str = "distill_random_teacher"
) -> nn.Module:
    """A zoo model from a module, a spec dict or a spec string (``"cnn1d:width=64"``).

    Specs get the data's input shape and class count unless they name their own.

    Examples
    --------
    >>> resolve_model("cnn1d:width=8").features[1]
    Conv1d(1, 8, kernel_size=(5,), stride=(2,), padding=(1,))
    """
    from landscape.models import from_spec, parse_spec

    if isinstance(model_spec, nn.Module):
        model = model_spec
    elif isinstance(model_spec, (str, Mapping)):
        spec = parse_spec(model_spec) if isinstance(model_spec, str) else dict(model_spec)
        if "name" not in spec:
            raise bad_argument(function, "model_spec", expected="a spec with a 'name' entry", found=str(spec))
        if data is not None and spec["name"] != "gpt":
            spec.setdefault("input_shape", list(data.input_shape))
            if data.num_classes is not None:
                spec.setdefault("num_classes", data.num_classes)
        model = from_spec(spec)
    else:
        raise bad_argument(
            function,
            "model_spec",
            expected="a zoo model, a spec dict or a spec string such as 'cnn1d:width=32'",
            found=model_spec,
        )
    if not isinstance(getattr(model, "features", None), nn.Module):
        raise bad_argument(
            function,
            "model_spec",
            expected="a model with a `features` submodule (every zoo model is Classifier(features, classifier))",
            found=f"a {type(model).__name__} without one",
            fix="Wrap your network as landscape.models.layers.Classifier(encoder, nn.Linear(...)).",
        )
    return model


def interpolated_init(
    teacher: Mapping[str, Tensor],
    fresh: Mapping[str, Tensor],
    alpha: float,
    *,
    parameters: Iterable[str] | None = None,
    variance_preserving: bool = True,
) -> State:
    """The student's initialisation between the teacher and a fresh random initialisation.

    ``((1 - alpha) * teacher + alpha * fresh) / sqrt(alpha^2 + (1 - alpha)^2)``: for two
    independent zero-mean initialisations with equal variance the result has that variance
    again, for every ``alpha`` (the reference's ``s_init='interpolated'`` with
    ``s_init_var_preserving``). ``alpha = 0`` is the teacher, bit for bit; ``alpha = 1`` the
    fresh draw. The arithmetic is done in float64 and rounded once.

    Parameters
    ----------
    teacher, fresh
        States of the same architecture.
    alpha
        In [0, 1]; the "locality" of the student (small = close to the teacher).
    parameters
        Names of the entries to interpolate (the reference interpolates all parameters, not
        buffers); other entries are copied from ``teacher``. Default: every floating entry.
    variance_preserving
        Divide by ``sqrt(alpha^2 + (1 - alpha)^2)`` (the reference's ``s_init_var_preserving``,
        off by default there).

    Returns
    -------
    State

    Examples
    --------
    >>> import torch
    >>> s = interpolated_init({"w": torch.tensor([1.0])}, {"w": torch.tensor([-1.0])}, 0.5)
    >>> round(float(s["w"]), 6)
    0.0
    """
    a = float(alpha)
    if not 0.0 <= a <= 1.0 or math.isnan(a):
        raise bad_argument(
            "interpolated_init", "alpha", expected="a number in [0, 1] (0 = the teacher)", found=repr(alpha)
        )
    teacher = as_state(teacher, function="interpolated_init", argument="teacher")
    fresh = as_state(fresh, function="interpolated_init", argument="fresh")
    check_compatible(teacher, fresh, function="interpolated_init", names=("teacher", "fresh"))
    names = set(parameters) if parameters is not None else {k for k, t in teacher.items() if t.is_floating_point()}
    factor = 1.0 / math.sqrt(a * a + (1.0 - a) ** 2) if variance_preserving else 1.0
    out = {}
    for k, t in teacher.items():
        if k in names and t.is_floating_point():
            mixed = ((1.0 - a) * t.double() + a * fresh[k].double()) * factor
            out[k] = mixed.to(t.dtype)
        else:
            out[k] = t.clone()
    return State(out, provenance={"derived": "interpolated_init", "alpha": a})


def student_init(
    teacher: Mapping[str, Tensor],
    fresh: Mapping[str, Tensor],
    alpha_init: float | None,
    *,
    parameters: Iterable[str],
) -> State:
    """The student's first state: an exact copy of the teacher (``alpha_init`` None, the
    reference's ``s_init='teacher'``, parameters and buffers) or :func:`interpolated_init`."""
    if alpha_init is None:
        return State({k: v.clone() for k, v in teacher.items()}, provenance={"derived": "copy of the teacher"})
    return interpolated_init(teacher, fresh, alpha_init, parameters=parameters)
