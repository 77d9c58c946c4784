"""The perplexity-normalised effect size (PNES) of von Rütte et al. (2024): the concept
effect of guidance weighed against the loss of fluency, fitted over guidance strengths."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from landscape.core.errors import bad_argument
from landscape.core.io import provenance_attrs

__all__ = ["pnes"]


def _ppl_model(x: np.ndarray, b: float) -> np.ndarray:
    return b * np.abs(x) ** 2


def _pne_model(x: np.ndarray, a: float, c: float, b: float) -> np.ndarray:
    return (np.tanh(a * x) + c) / np.exp(b * np.abs(x) ** 2)


def pnes(
    curve: xr.Dataset,
    *,
    effect: str = "effect",
    perplexity: str = "perplexity",
    ppl_cutoff: float = 2e3,
    min_r2: float = 0.5,
) -> xr.Dataset:
    """Perplexity-normalised effect size of a guidance curve, as released with von Rütte et
    al. (2024, github.com/dvruette/concept-guidance, ``scripts/evaluate.py``).

    With the baseline at the alpha closest to 0, the normalised effect is
    ``(effect - effect_0) / (ppl / ppl_0)``. First ``log(ppl / ppl_0) ~ b * alpha**2`` is
    fit (least squares, points with perplexity below ``ppl_cutoff``); then
    ``(tanh(a * alpha) + c) / exp(b * alpha**2)`` is fit to the normalised effect with ``b``
    fixed. PNES is the range (max - min) of the fitted curve over the alpha range.

    Parameters
    ----------
    curve
        A Dataset with dim ``alpha`` and the variables named by ``effect`` and ``perplexity``
        (e.g. from :func:`guidance_curve`).
    ppl_cutoff
        Perplexities at or above this are left out of the ``b`` fit (as in the reference).
    min_r2
        Warn when the fit's r^2 is below this; a warning is also given when ``b <= 0``
        (perplexity not growing with |alpha| makes the normalisation meaningless).

    Returns
    -------
    xarray.Dataset
        Scalars ``pnes``, ``a``, ``b``, ``c``, ``r_squared``, ``x_min``, ``x_max`` (alphas of
        the fitted curve's minimum and maximum), ``y_min``, ``y_max``; over ``alpha``:
        ``normalized_effect`` and ``fitted``; over ``grid`` (200 alphas, coordinate
        ``grid_alpha``): ``fit_curve``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> x = np.linspace(-1, 1, 9)
    >>> curve = xr.Dataset({"effect": ("alpha", np.tanh(2 * x)), "perplexity": ("alpha", 10 * np.exp(x**2))},
    ...                    coords={"alpha": x})
    >>> round(float(pnes(curve).b), 3)
    1.0
    """
    from scipy.optimize import curve_fit

    function = "pnes"
    for name in (effect, perplexity):
        if name not in curve or curve[name].dims != ("alpha",):
            raise bad_argument(
                function, "curve", expected=f"a Dataset with a variable {name!r} over dim 'alpha'", found=curve
            )
    curve = curve.sortby("alpha")
    xs = np.asarray(curve["alpha"].values, dtype=np.float64)
    effects = np.asarray(curve[effect].values, dtype=np.float64)
    ppls = np.asarray(curve[perplexity].values, dtype=np.float64)
    if len(xs) < 3 or not (np.isfinite(effects).all() and np.isfinite(ppls).all() and (ppls > 0).all()):
        raise bad_argument(
            function,
            "curve",
            expected="at least 3 alphas with finite effects and positive finite perplexities",
            found=f"{len(xs)} alphas",
        )
    base = int(np.argmin(np.abs(xs)))
    if xs[base] != 0:
        warnings.warn(f"pnes: no alpha = 0 in the curve; the baseline is alpha = {xs[base]:g}.", stacklevel=2)
    ys = (effects - effects[base]) / (ppls / ppls[base])
    keep = ppls < ppl_cutoff
    if not (keep & (xs != 0)).any():
        raise bad_argument(
            function, "curve", expected=f"a nonzero alpha with perplexity below {ppl_cutoff:g}", found="none"
        )
    # Least squares of a one-parameter linear model; the closed form is what curve_fit converges to.
    log_ratio = np.log(ppls / ppls[base])
    b = float(np.sum(xs[keep] ** 2 * log_ratio[keep]) / np.sum(xs[keep] ** 4))
    try:
        (a, c), _ = curve_fit(lambda x, a, c: _pne_model(x, a, c, b), xs, ys, p0=[0.0, 0.0], maxfev=20000)
    except (RuntimeError, ValueError) as err:
        warnings.warn(f"pnes: the effect fit did not converge ({err}); PNES is NaN.", stacklevel=2)
        a = c = float("nan")
    fitted = _pne_model(xs, a, c, b)
    ss_tot = float(np.sum((ys - ys.mean()) ** 2))
    grid = np.linspace(xs.min(), xs.max(), 200)
    curve_values = _pne_model(grid, a, c, b)
    if ss_tot > 0 and np.isfinite(a):
        r_squared = 1 - float(np.sum((ys - fitted) ** 2)) / ss_tot
        x_min, x_max = float(grid[np.argmin(curve_values)]), float(grid[np.argmax(curve_values)])
        y_min, y_max = float(curve_values.min()), float(curve_values.max())
    elif np.isfinite(a):  # a flat normalised effect: no effect at all (as in the reference)
        r_squared = x_min = x_max = float("nan")
        y_min = y_max = 0.0
    else:
        r_squared = x_min = x_max = y_min = y_max = float("nan")
    if b <= 0:
        warnings.warn(
            f"pnes: perplexity does not grow with |alpha| (b = {b:.3g} <= 0); PNES is not meaningful here.",
            stacklevel=2,
        )
    if not r_squared >= min_r2:
        warnings.warn(f"pnes: the fit explains little of the curve (r^2 = {r_squared:.3f} < {min_r2}).", stacklevel=2)
    return xr.Dataset(
        {
            "pnes": ((), y_max - y_min),
            "a": ((), float(a)),
            "b": ((), b),
            "c": ((), float(c)),
            "r_squared": ((), r_squared),
            "x_min": ((), x_min),
            "x_max": ((), x_max),
            "y_min": ((), y_min),
            "y_max": ((), y_max),
            "normalized_effect": ("alpha", ys),
            "fitted": ("alpha", fitted),
            "log_perplexity_ratio": ("alpha", log_ratio),
            "fit_curve": ("grid", curve_values),
        },
        coords={"alpha": xs, "grid_alpha": ("grid", grid)},
        attrs=provenance_attrs(
            function=function, effect=effect, perplexity=perplexity, ppl_cutoff=ppl_cutoff, source=dict(curve.attrs)
        ),
    )
