"""Representation probes: k-nearest neighbours and linear classifiers on fixed features, at any
named layer of any model, on raw and standardised features (as in Sarnthein et al. 2023)."""

from landscape.probes.layers import features_at, layerwise_probe
from landscape.probes.probes import PROBES, SCALINGS, knn_probe, linear_probe, probe_features, standardize

__all__ = [
    "PROBES",
    "SCALINGS",
    "features_at",
    "knn_probe",
    "layerwise_probe",
    "linear_probe",
    "probe_features",
    "standardize",
]
