"""The engine: states, point families, checkpoints, data, evaluation and results.

It knows nothing of any analysis; every analysis package builds on it.
"""
