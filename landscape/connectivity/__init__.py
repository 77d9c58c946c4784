"""Linear mode connectivity and landscape geometry: interpolation curves, barriers, planes,
random-direction surfaces and instability analysis. Everything evaluates through the
engine, so it is batched and runs on the GPU when there is one."""

from landscape.connectivity.barriers import BARRIER_KINDS, barrier, barriers
from landscape.connectivity.instability import instability, instability_sweep
from landscape.connectivity.interpolation import interpolate
from landscape.connectivity.planes import plane, plane_basis, random_line, random_plane

__all__ = [
    "BARRIER_KINDS",
    "barrier",
    "barriers",
    "instability",
    "instability_sweep",
    "interpolate",
    "plane",
    "plane_basis",
    "random_line",
    "random_plane",
]
