"""Suite-wide options: ``--device`` for the tests that take one, and the ``slow`` marker.

``python -m pytest`` runs everything on the CPU, as CI does, in parallel workers
(pytest-xdist, ``-n auto`` in pyproject.toml; ``-n 0`` for none); ``-m "not slow"`` leaves
out the slowest tests (the ``slow`` marker is registered in pyproject.toml) for a quick local
run, and ``--device cuda`` runs the tests that take the ``device`` fixture on a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch


def _cores() -> int:
    """The cores this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows
        return os.cpu_count() or 1


# pyproject.toml's ``-n auto`` runs the tests in pytest-xdist workers, each its own process:
# left alone, every one would start a thread per core and they would fight over the cores.
# Share the cores out.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, _cores() // _WORKERS))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: a worker per core, at most 4 (each holds its own PyTorch, some 0.5 GB, and
    the suite gains little past 4), and none on one core, where a worker only adds start-up."""
    cores = _cores()
    return 0 if cores < 2 else min(cores, 4)


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
