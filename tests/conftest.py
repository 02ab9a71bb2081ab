"""Suite-wide options: ``--device`` for the tests that take one, and the ``slow`` marker.

``python -m pytest`` runs everything on the CPU, as CI does; ``-m "not slow"`` leaves out the
slowest tests (the ``slow`` marker is registered in pyproject.toml) for a quick local run, and
``--device cuda`` runs the tests that take the ``device`` fixture on a GPU.
"""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default="cpu",
        help="torch device for the tests that take the `device` fixture (default: cpu)",
    )


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    """The ``--device`` option as a :class:`torch.device`; skips if it is not available."""
    device = torch.device(request.config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"--device {device} given but CUDA is not available")
    return device
