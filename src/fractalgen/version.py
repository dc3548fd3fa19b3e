"""The package version (the same as pyproject.toml's; tests/test_package.py checks they agree)."""
__version__ = "0.1.0"
