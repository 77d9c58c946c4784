"""Representation probes: k-nearest neighbours and linear classifiers on fixed features, at any
named layer of any model, on standardised (default) or raw features (as in Sarnthein et al. 2023)."""

from landscape.probes._knn import knn_probe
from landscape.probes._layers import features_at, layerwise_probe
from landscape.probes._linear import SOLVERS, linear_probe
from landscape.probes._probe import DEFAULT_SCALINGS, PROBES, check_probe_options, probe_features
from landscape.probes._scaling import SCALINGS, standardize

__all__ = [
    "DEFAULT_SCALINGS",
    "PROBES",
    "SCALINGS",
    "SOLVERS",
    "check_probe_options",
    "features_at",
    "knn_probe",
    "layerwise_probe",
    "linear_probe",
    "probe_features",
    "standardize",
]
