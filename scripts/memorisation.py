r"""How much of what a model learned is memorised: its mean PSNR on a run's held-back images
and on as many of the images it trains on, under the validation's protocol, and the gap
(maintainers: is a bundled run short of images?).

A model scores higher on images it trained on than on held-back ones for two reasons: the
two sets differ (some images are easier; a constant), and it has memorised some of its
training images (a gap that grows as it trains). Scored in release order, a gap that stays
level says each step's gain carries over to images the run never saw, one that widens says
a share of it does not, and more images (or more augmentation) would be worth that share:

    OMP_NUM_THREADS=1 python scripts/memorisation.py ~/fdn-runs/grey10-b32 OLD.safetensors \
        fdn-grey-blind --data-root ../shared/data

prints a row per model: held-back, training images, and their difference (dB). A model is a
bundled name, a model file or a checkpoint, as for ``scripts/score_heldback.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fdn.config import load_config
from fdn.data import DataError, load_validation
from fdn.training import validate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_heldback import expanded, model_of


def gaps(
    config_path: Path, models: list[str], seen: int = 0, data_root: str | None = None
) -> dict[str, tuple[float, float]]:
    """Per model ``(held_back, training)``: mean PSNR over the held-back images of the run
    config at ``config_path`` and over ``seen`` of its training images (as many as it holds
    back when 0)."""
    config = load_config(config_path)
    if data_root:
        config.data.root = data_root
    config.validation.every = max(config.validation.every, 1)  # 0 would load nothing
    try:
        held = load_validation(config)
        if not held:
            raise DataError("the run has no held-back images to score on")
        count = seen or len({name for name, _, _ in held})
        training = load_validation(config, seen=count)
    except DataError as error:
        raise SystemExit(f"{config_path}: {error}") from None
    cpu = torch.device("cpu")
    return {
        spec: (validate(model, held, cpu), validate(model, training, cpu))
        for spec, model in ((spec, model_of(spec)) for spec in expanded(models))
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder (its config.toml) or a config")
    parser.add_argument("models", nargs="+", help="bundled names, model files or checkpoints")
    parser.add_argument(
        "--seen",
        type=int,
        default=0,
        help="how many training images to score (default: as many as the run holds back)",
    )
    parser.add_argument("--data-root", help="where the run's data is now (default: as trained)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = args.run / "config.toml" if args.run.is_dir() else args.run
    print("| model | held-back | training images | gap |\n|---|---:|---:|---:|")
    for spec, (held, training) in gaps(config, args.models, args.seen, args.data_root).items():
        print(f"| {spec} | {held:.4f} | {training:.4f} | {training - held:+.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
