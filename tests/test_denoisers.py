"""The baselines' name table (fdn.denoisers) against the command line's torch-free copy."""

from pathlib import Path

import pytest

from fdn import ModelFileError, choices, evaluation
from fdn.baselines import MissingExtraError
from fdn.denoisers import BASELINE_FACTORIES, BASELINES, Denoiser, build_baseline

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "peer-weights"


def test_cli_baseline_choices_are_the_registry_names():
    assert choices.BASELINES == BASELINES == tuple(BASELINE_FACTORIES)
    assert evaluation.BASELINES == BASELINES  # still importable from its old home


@pytest.mark.parametrize("name", BASELINES)
def test_every_registered_baseline_builds(name):
    # As fdn eval does: a missing optional package or weight file skips with its message.
    try:
        denoiser = build_baseline(name, WEIGHTS)
    except MissingExtraError as error:
        pytest.skip(f"skipping {name}: {error}")
    except ModelFileError as error:
        if Path(error.path).exists():
            raise  # present but unreadable: a real failure
        pytest.skip(f"skipping {name}: {error}")
    assert isinstance(denoiser, Denoiser)
    assert denoiser.name
    assert denoiser.supports(1, 25.0) is None or denoiser.supports(3, 25.0) is None


def test_an_unknown_baseline_names_the_choices():
    with pytest.raises(ValueError, match="choose from bm3d, nlm"):
        build_baseline("wiener")
