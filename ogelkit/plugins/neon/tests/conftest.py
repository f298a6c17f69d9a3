"""Fixtures of the Neon plugin's tests (helpers: neon_helpers.py, the Neon API stand-in:
neon_standin.py; both loaded here, as the tests run with --import-mode=importlib)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _load(name: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


neon_helpers = _load("neon_helpers")
_load("neon_standin")


@pytest.fixture(scope="module")
def neon_gw() -> Iterator:
    from ogelkit_postgres.testing import Tenant, unique
    tenants = [Tenant(unique("neon"), backend="neon"), Tenant(unique("neon"), backend="neon")]
    with neon_helpers.neon_gateway(tenants) as pair:
        yield pair
