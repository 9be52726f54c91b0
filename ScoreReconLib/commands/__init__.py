"""Subcommands of the ``scorerecon`` CLI; each module has ``register(subparsers)``."""
