"""scripts/memorisation.py and load_validation(seen=N): a model scored on held-back images and
on images it trains on, under the validation's protocol."""

import pytest
import torch

from fdn import load_model
from fdn.config import load_config
from fdn.data import DataError, load_validation
from fdn.training import validate
from test_score_heldback import run  # noqa: F401 (a fixture)

from helpers import load_script


@pytest.fixture(scope="module")
def memorisation():
    return load_script("memorisation")


def names(images):
    return [name for name, _, _ in images]


def test_the_seen_images_are_training_images_never_held_back_ones(run):  # noqa: F811
    config = load_config(run[0])
    config.validation.sigmas = [15.0, 50.0]
    held = set(names(load_validation(config)))
    seen = load_validation(config, seen=3)
    # One noisy copy per sigma of 3 images of the 4 the run trains on (img0..img5, 2 held).
    assert len(seen) == 6 and len(set(names(seen))) == 3
    assert not set(names(seen)) & held
    assert set(names(seen)) <= {f"img{i}.png" for i in range(6)}
    # A fixed choice and fixed noise: the training seed does not move them.
    config.training.seed += 1
    again = load_validation(config, seen=3)
    assert names(again) == names(seen)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(again, seen, strict=True))
    with pytest.raises(DataError, match="5 training images asked for, 4 there"):
        load_validation(config, seen=5)


def test_each_row_is_the_validation_of_both_sets_and_their_gap(
    run,  # noqa: F811
    memorisation,
    capsys,
):
    config_path, files = run
    results = memorisation.gaps(config_path, files)
    config = load_config(config_path)
    cpu = torch.device("cpu")
    for file in files:
        model = load_model(file)
        # By default as many training images as held-back ones (2).
        held, training = (
            validate(model, load_validation(config), cpu),
            validate(model, load_validation(config, seen=2), cpu),
        )
        assert results[file] == pytest.approx((held, training))
    assert results[files[0]] != results[files[1]]
    assert memorisation.main([str(config_path), files[0], "--seen", "4"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    held, training, gap = (float(cell) for cell in cells[1:])
    assert cells[0] == files[0] and gap == pytest.approx(training - held, abs=2e-4)
    assert held == pytest.approx(results[files[0]][0], abs=1e-4)


def test_a_run_without_held_back_images_is_an_error(run, memorisation, tmp_path):  # noqa: F811
    config_path, files = run
    plain = tmp_path / "plain.toml"
    plain.write_text(config_path.read_text().replace("holdout = 2", "holdout = 0"))
    with pytest.raises(SystemExit, match="no held-back images"):
        memorisation.gaps(plain, files[:1])
