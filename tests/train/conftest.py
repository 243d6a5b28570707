"""Training tests' fixtures: the tiny model lives in tests/model_fixtures.py (registered in tests/conftest.py)."""

from tests.model_fixtures import TINY_CONFIG  # noqa: F401  (test modules import the recipe from here)
