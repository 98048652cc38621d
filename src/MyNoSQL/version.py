"""The version of MyNoSQL (one place: the package, the command line and pyproject.toml's check read it)."""

__version__ = "0.1.0"
