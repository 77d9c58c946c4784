"""A small zoo of models for demos, tests and analyses, created by name.

Every zoo model has two children, ``features`` (input to representation) and
``classifier`` (representation to logits), and ``forward(x) = classifier(features(x))``, so
probes and distillation can take any of them apart the same way. Models remember the spec
they were built from (``spec_of``), which checkpoints store so that a file can rebuild its
own model.
"""

from landscape.models.registry import available, create, example_input, from_spec, parse_spec, register, spec_of

# Importing the modules registers their models.
from landscape.models import cnn, gpt, mlp, resnet, vit  # noqa: F401  isort: skip

__all__ = ["available", "create", "example_input", "from_spec", "parse_spec", "register", "spec_of"]
