"""A computer for the decision of backend, precision and device (models.precision.Hardware)
whose probe gives the answers a test names, and fails the test on any other question."""

from __future__ import annotations

from functools import cached_property

import pytest

from image_search.models.precision import Hardware

PROBES = [name for name, value in vars(Hardware).items() if isinstance(value, cached_property)]


def hardware(**answers: bool) -> Hardware:
    """A computer whose probe gives `answers`; a question not answered here fails the test,
    so each case shows what its decision needed to know."""
    assert set(answers) <= set(PROBES)

    def unasked(name: str) -> property:
        return property(lambda self: pytest.fail(f"the decision asked the probe {name}"))

    fakes = {
        name: property(lambda self, value=answers[name]: value)
        if name in answers
        else unasked(name)
        for name in PROBES
    }
    return type("FakeHardware", (Hardware,), fakes)()
