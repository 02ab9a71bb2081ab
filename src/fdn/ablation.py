r"""The paper's ablations as grids of config overrides, run one after another into one table.

- ``table1``: 1, 2 or 3 DownScale Flow Blocks x 2, 4 or 8 Steps of Flow per block
  (paper Table I);
- ``table2``: the fraction of latent channels kept as z_C, 1/8 ... 7/8 (paper Table II).

Each cell is an ordinary training run in ``OUT/CELL`` from the base config plus the cell's
``--set`` overrides; a cell that already finished is not trained again and one that was
interrupted resumes, so a long grid survives restarts. The table reports each cell's last
validation PSNR and parameter count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from fdn.config import ConfigError, load_config
from fdn.curves import read_log
from fdn.info import count_parameters
from fdn.training import CHECKPOINT, build_model, train

__all__ = ["GRIDS", "grid_cells", "run_grid"]

GRIDS: dict[str, list[tuple[str, list[str]]]] = {
    "table1": [
        (
            f"blocks{blocks}_steps{steps}",
            [f"model.num_blocks={blocks}", f"model.steps_per_block={steps}"],
        )
        for blocks in (1, 2, 3)
        for steps in (2, 4, 8)
    ],
    "table2": [
        (f"zc{eighths}of8", [f"model.clean_fraction={eighths / 8}"]) for eighths in range(1, 8)
    ],
}


def grid_cells(grid: str) -> list[tuple[str, list[str]]]:
    if grid not in GRIDS:
        raise ConfigError(f"unknown ablation grid {grid!r}; known: {', '.join(GRIDS)}")
    return GRIDS[grid]


def _last_validation(run_dir: Path) -> float | None:
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return None
    scores = [row.get("val_psnr") for row in read_log(log)]
    scores = [s for s in scores if s is not None]
    return scores[-1] if scores else None


def run_grid(
    grid: str,
    base: str | os.PathLike,
    out: str | os.PathLike,
    overrides: Sequence[str] = (),
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Path:
    """Trains every cell of ``grid`` (skipping finished ones) and writes ``OUT/table.md``."""
    out = Path(out)
    cells = grid_cells(grid)
    configs = {name: load_config(base, [*overrides, *sets]) for name, sets in cells}
    rows = []
    for index, (name, sets) in enumerate(cells, 1):
        run_dir = out / name
        config = configs[name]
        finished = (run_dir / "model.safetensors").is_file()
        if not finished:
            say(f"[{index}/{len(cells)}] {name}: {' '.join(sets)}")
            resume = (run_dir / CHECKPOINT).is_file()
            train(None if resume else config, run_dir, resume=resume, progress=progress)
        rows.append((name, sets, count_parameters(build_model(config)), _last_validation(run_dir)))
    lines = [
        f"# Ablation {grid}: {Path(base).name}",
        "",
        "| cell | overrides | parameters | validation PSNR (dB) |",
        "|---|---|---:|---:|",
    ]
    best = max((r[3] for r in rows if r[3] is not None), default=None)
    for name, sets, parameters, score in rows:
        text = "n/a" if score is None else f"{score:.2f}"
        if score is not None and score == best:
            text = f"**{text}**"
        lines.append(f"| {name} | `{' '.join(sets)}` | {parameters:,} | {text} |")
    table = out / "table.md"
    out.mkdir(parents=True, exist_ok=True)
    table.write_text("\n".join(lines) + "\n")
    return table
