"""Subcommands of the ``landscape`` command, one module per area (see :mod:`landscape.cli`)."""
