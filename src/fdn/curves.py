r"""Training curves: a logged value of runs (validation PSNR by default) against their steps or
training time, drawn from their ``log.jsonl`` as an SVG line plot (text written by hand, so no
plotting library)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from fdn.atomic import atomic_write

__all__ = [
    "AVERAGE_PREFIX",
    "KEPT",
    "X_AXES",
    "Curve",
    "CurveError",
    "average_curves",
    "average_key",
    "kept_path",
    "kept_steps",
    "parse_line",
    "parse_run",
    "plot_curves",
    "ramp_end",
    "ramped_decay",
    "read_curve",
    "read_log",
]

# x name -> (log key, divisor to the axis's unit, axis title)
X_AXES = {
    "step": ("step", 1.0, "training step"),
    "wall": ("wall_s", 3600.0, "training time (hours)"),
    "cpu": ("cpu_s", 3600.0, "training time (CPU hours)"),
}
_Y_TITLES = {
    "val_psnr": "validation PSNR (dB)",
    "loss": "training loss",
    "nll": "NLL (nats/dim)",
    "nll_bits_per_dim": "NLL (bits/dim)",
    "l1": "L1 reconstruction loss",
    "l2": "L2 reconstruction loss (MSE)",
    "psnr": "training batches' PSNR (dB)",
    "mse": "MSE loss",
    "lr": "learning rate",
    "images_per_s": "training images/s",
    "grad_norm": "gradient norm (median over the log window)",
    "grad_norm_max": "gradient norm (largest in the log window)",
}
# Okabe-Ito without its yellow (too pale on white): told apart with colour-blindness too.
_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
_MAX_MARKERS = 200  # more points than this per run, and markers would hide the line
_CHAR_WIDTH = 7.0  # the width of a character at font-size 12, roughly, for the layout


class CurveError(ValueError):
    """A run whose log cannot give the curve asked for; the message names the log."""


@dataclass(frozen=True)
class Curve:
    """One run's points ``(x, y)`` in log order, x in the axis's unit (steps or hours).

    ``noisy_psnr`` is the validation PSNR of the noisy input (the log's ``val_psnr_noisy``),
    when the log has it.
    """

    label: str
    log: Path
    points: tuple[tuple[float, float], ...]
    noisy_psnr: float | None = None


def parse_run(text: str) -> tuple[str, Path]:
    """``[LABEL=]PATH`` as ``(label, path)``; the label defaults to the run folder's name.

    A path that exists is taken whole, even with an ``=`` in it.

    Example:
        >>> parse_run("fdn=runs/faces-fdn")
        ('fdn', PosixPath('runs/faces-fdn'))
        >>> parse_run("runs/faces-dncnn/log.jsonl")
        ('faces-dncnn', PosixPath('runs/faces-dncnn/log.jsonl'))
    """
    label, sep, rest = text.partition("=")
    if sep and label and os.sep not in label and not Path(text).expanduser().exists():
        return label, Path(rest).expanduser()
    path = Path(text).expanduser()
    folder = path.parent if path.name == "log.jsonl" else path
    return folder.resolve().name if folder.name in ("", ".", "..") else folder.name, path


def parse_line(text: str) -> tuple[str, float]:
    """``NAME=VALUE`` as ``(name, value)``: a reference line.

    Example:
        >>> parse_line("BM3D=27.9")
        ('BM3D', 27.9)
    """
    name, sep, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not sep or not name or not math.isfinite(number):
        raise CurveError(f"{text!r}: a reference line is NAME=VALUE, e.g. BM3D=27.9")
    return name, number


def read_log(path: str | os.PathLike) -> list[dict]:
    """The rows of a training log (``log.jsonl``, as ``fdn train`` writes it), in order; a
    line that is not a JSON object (one cut short by a kill) is skipped. Here rather than
    beside ``fdn.runstate.write_log`` so that reading a log does not import torch."""
    rows = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _log_of(path: Path) -> Path:
    if path.is_dir():
        log = path / "log.jsonl"
        if not log.is_file():
            raise CurveError(f"{log}: no training log (is {path} a run folder of fdn train?)")
        return log
    if not path.is_file():
        raise CurveError(f"{path}: no such run folder or log file")
    return path


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def read_curve(
    path: str | os.PathLike,
    y: str = "val_psnr",
    x: str = "step",
    label: str | None = None,
    since: int | None = None,
) -> Curve:
    """The points of log key ``y`` against ``x`` (a name of :data:`X_AXES`) in a run folder's
    ``log.jsonl`` (or that file itself); rows without ``y`` (or without the time that ``x``
    asks for, from a log resumed across versions) are left out. ``since``: only the rows from
    that step on (a fork's own stretch, its parent's history left out), and hours counted
    from the last timed row at or before it, so that forks compare at equal time.

    Lines that are not JSON objects (one cut short by a kill) are skipped, as are rows whose
    ``y`` is null (non-finite when logged). Raises :class:`CurveError` when the log is
    missing, has no ``y`` values, or has no times for ``x="wall"``/``"cpu"``.
    """
    log = _log_of(Path(path))
    name = label if label is not None else parse_run(str(path))[0]
    return _curve(read_log(log), log, y, x, name, since)


def _curve(
    rows: list[dict], log: Path, y: str, x: str, name: str, since: int | None = None
) -> Curve:
    """:func:`read_curve` of a log's rows, already read."""
    if x not in X_AXES:
        raise CurveError(f"unknown x axis {x!r}; known: {', '.join(X_AXES)}")
    key, unit, _ = X_AXES[x]
    noisy = next((v for r in rows if (v := _number(r.get("val_psnr_noisy"))) is not None), None)
    origin = 0.0
    if since is not None:
        before = [row for row in rows if row.get("step", since + 1) <= since]
        times = [t for row in before if (t := _number(row.get(key))) is not None]
        origin = times[-1] if times and x != "step" else 0.0
        rows = [row for row in rows if row.get("step", -1) >= since]
    valued = [row for row in rows if _number(row.get(y)) is not None]
    if not valued:
        logged = ", ".join(sorted({k for row in rows for k in row} - {"step"})) or "nothing"
        where = f" from step {since} on" if since is not None else ""
        raise CurveError(f"{log}: no rows with a value of {y!r}{where} (the log has {logged})")
    timed = [row for row in valued if _number(row.get(key)) is not None]
    if not timed:
        if x == "step":
            raise CurveError(f"{log}: no row with {y!r} has a step")
        raise CurveError(
            f"{log}: no {key} in its rows: the log predates time logging; plot it against steps"
        )
    points = tuple(((row[key] - origin) / unit, float(row[y])) for row in timed)
    return Curve(name, log, points, noisy)


# The log key of a moving average a run keeps beside its own (training.ema_extra) is this
# prefix and its average_key: `val_psnr_ema0.9995`. Here, where logs are read without torch.
AVERAGE_PREFIX = "val_psnr_ema"


def average_key(decay: float) -> str:
    """How a run names its moving average of ``decay`` beside its own (``training.ema_extra``):
    in the checkpoint, the log's ``val_psnr_ema<key>`` and ``ema<key>.safetensors``. The
    shortest text that reads back as the same float, so no two decays share a name
    (``:g`` would name 0.9999999 "1").

    Example:
        >>> average_key(0.9995), average_key(0.9999999)
        ('0.9995', '0.9999999')
    """
    return repr(float(decay))


# training.keep_every's folder in a run: KEPT/step-N.safetensors, the model of step N.
KEPT = "kept"


def kept_path(run_dir: Path, step: int) -> Path:
    """Where a run keeps the model of ``step`` (``training.keep_every``)."""
    return run_dir / KEPT / f"step-{step}.safetensors"


def kept_steps(run_dir: Path) -> tuple[int, ...]:
    """The steps whose models ``run_dir`` keeps (:func:`kept_path`), in order; other files
    in the folder are not steps."""
    names = (
        path.stem.removeprefix("step-") for path in (run_dir / KEPT).glob("step-*.safetensors")
    )
    return tuple(sorted(int(name) for name in names if name.isdigit()))


def ramped_decay(decay: float, updates: int) -> float:
    """The decay a moving average with the warm-up ramp applies at update ``updates``:
    ``min(decay, (1 + n) / (10 + n))`` (:class:`fdn.optim.WeightAverage`; a run's own
    average has it, those beside it do not). Its horizon is about ``1 / (1 - decay)`` steps.

    Example:
        >>> round(ramped_decay(0.999, 2000), 5), ramped_decay(0.999, 10_000)
        (0.99552, 0.999)
    """
    return min(decay, (1 + updates) / (10 + updates))


def ramp_end(decay: float) -> int:
    """The first update at which :func:`ramped_decay` is ``decay`` itself (8,990 for 0.999).

    Example:
        >>> ramp_end(0.999), ramped_decay(0.999, ramp_end(0.999) - 1) < 0.999
        (8990, True)
    """
    return math.ceil((10 * decay - 1) / (1 - decay) - 1e-6)


def average_curves(
    path: str | os.PathLike, x: str = "step", label: str | None = None, since: int | None = None
) -> list[Curve]:
    """The validation PSNR of each moving average a run keeps beside its own
    (``training.ema_extra``: the log's ``val_psnr_ema<decay>``), a curve each, labelled
    ``LABEL, average DECAY``; none for a run without them (``since``: as in :func:`read_curve`)."""
    name = label if label is not None else parse_run(str(path))[0]
    log = _log_of(Path(path))
    rows = read_log(log)
    keys = sorted({k for row in rows for k in row if k.startswith(AVERAGE_PREFIX)})
    # The noisy input's line is the run's own curve's to draw.
    return [
        replace(
            _curve(
                rows, log, key, x, f"{name}, average {key.removeprefix(AVERAGE_PREFIX)}", since
            ),
            noisy_psnr=None,
        )
        for key in keys
    ]


def plot_curves(
    runs: Sequence[tuple[str, str | os.PathLike] | Curve],
    out: str | os.PathLike,
    y: str = "val_psnr",
    x: str = "step",
    title: str | None = None,
    lines: Sequence[tuple[str, float]] = (),
    noisy: bool = True,
    x_title: str | None = None,
    y_title: str | None = None,
) -> Path:
    """Draws ``y`` against ``x`` for each run of ``runs`` (``(label, run folder or log)``, or a
    :class:`Curve` already read with the same ``y`` and ``x``) as one SVG line plot at ``out``
    (written atomically), and returns ``out``.

    One coloured line with markers per run, a legend of the labels, and for ``val_psnr`` the
    noisy input's PSNR as a dashed line when the logs have it (unless ``noisy`` is false).
    ``lines``: ``(name, y)`` reference lines, dotted, e.g. a baseline's PSNR on the same
    validation images. ``x_title``, ``y_title``: the axis titles, for curves that were not
    read from logs (default: those of ``x`` and ``y``). Raises :class:`CurveError` (before
    writing anything) when a run cannot give its curve.
    """
    if not runs:
        raise CurveError("no runs to draw")
    curves = [run if isinstance(run, Curve) else read_curve(run[1], y, x, run[0]) for run in runs]
    noisy_line = noisy and y == "val_psnr"
    x_title = X_AXES[x][2] if x_title is None else x_title
    y_title = _Y_TITLES.get(y, y) if y_title is None else y_title
    text = _svg(curves, x_title, y_title, noisy_line, title, lines)
    return atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _ticks(low: float, high: float, intervals: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering low..high."""
    if high <= low:
        pad = abs(low) * 0.05 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / intervals
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [i * step for i in range(first, last + 1)]


def _tick_labels(ticks: list[float]) -> list[str]:
    step = ticks[1] - ticks[0]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:  # 2.5, 0.25
        decimals += 1
    return [f"{0.0 if abs(t) < step * 1e-6 else t:,.{decimals}f}" for t in ticks]


def _text(x: float, y: float, text: str, **attributes: str) -> str:
    extra = "".join(f" {name.replace('_', '-')}={quoteattr(v)}" for name, v in attributes.items())
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{escape(text)}</text>'


def _svg(
    curves: list[Curve],
    x_title: str,
    y_title: str,
    noisy_line: bool,
    title: str | None,
    lines: Sequence[tuple[str, float]] = (),
) -> str:
    # Reference lines: the noisy input's PSNR, one per distinct value, named by its runs.
    references: dict[float, list[str]] = {}
    for curve in curves:
        if noisy_line and curve.noisy_psnr is not None:
            references.setdefault(round(curve.noisy_psnr, 6), []).append(curve.label)
    xs = [px for curve in curves for px, _ in curve.points]
    ys = [py for curve in curves for _, py in curve.points] + list(references)
    ys += [value for _, value in lines]
    x_ticks = _ticks(min(0.0, *xs), max(xs))
    # A little room above and below, so that no line runs along the frame.
    pad = 0.03 * (max(ys) - min(ys))
    y_ticks = _ticks(min(ys) - pad, max(ys) + pad)
    x_labels, y_labels = _tick_labels(x_ticks), _tick_labels(y_ticks)

    # Layout: the plot area is fixed, the margins grow with the text around it.
    plot_w, plot_h = 560.0, 340.0
    left = 24 + _CHAR_WIDTH * max(map(len, y_labels)) + 10
    top = 40.0 if title else 14.0
    legend_w = 36 + _CHAR_WIDTH * max(len(curve.label) for curve in curves)
    width, height = left + plot_w + 20 + legend_w + 10, top + plot_h + 50

    def at_x(value: float) -> float:
        return left + (value - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * plot_w

    def at_y(value: float) -> float:
        return top + plot_h - (value - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>',
    ]
    if title:
        parts.append(_text(width / 2, 24, title, text_anchor="middle", font_size="15"))

    # Axes: grid lines with their tick labels, the frame, the axis titles.
    bottom = top + plot_h
    parts.append('<g stroke="#dddddd" stroke-width="1">')
    parts += [
        f'<line x1="{at_x(t):.1f}" y1="{top:.1f}" x2="{at_x(t):.1f}" y2="{bottom:.1f}"/>'
        for t in x_ticks
    ]
    parts += [
        f'<line x1="{left:.1f}" y1="{at_y(t):.1f}" x2="{left + plot_w:.1f}" y2="{at_y(t):.1f}"/>'
        for t in y_ticks
    ]
    parts.append("</g>")
    parts.append(
        f'<rect x="{left:.1f}" y="{top:.1f}" width="{plot_w:.1f}" height="{plot_h:.1f}" '
        'fill="none" stroke="#333333"/>'
    )
    parts += [
        _text(at_x(t), bottom + 16, s, text_anchor="middle")
        for t, s in zip(x_ticks, x_labels, strict=True)
    ]
    parts += [
        _text(left - 6, at_y(t) + 4, s, text_anchor="end")
        for t, s in zip(y_ticks, y_labels, strict=True)
    ]
    parts.append(_text(left + plot_w / 2, bottom + 38, x_title, text_anchor="middle"))
    middle = top + plot_h / 2
    parts.append(
        _text(14, middle, y_title, text_anchor="middle", transform=f"rotate(-90 14 {middle:.1f})")
    )

    # The noisy input's PSNR, dashed, named just above its left end.
    for value, labels in references.items():
        name = "noisy input" if len(references) == 1 else f"noisy input ({', '.join(labels)})"
        parts.append(
            f'<line x1="{left:.1f}" y1="{at_y(value):.1f}" x2="{left + plot_w:.1f}" '
            f'y2="{at_y(value):.1f}" stroke="#666666" stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
        parts.append(_text(left + 6, at_y(value) - 5, name, fill="#444444"))
    # Given reference lines (a baseline's score), dotted, named above their left end: training
    # curves rise towards them, so it is their right end that the curves cross.
    for name, value in lines:
        parts.append(
            f'<line x1="{left:.1f}" y1="{at_y(value):.1f}" x2="{left + plot_w:.1f}" '
            f'y2="{at_y(value):.1f}" stroke="#222222" stroke-width="1.5" stroke-dasharray="2 3"/>'
        )
        label = f"{name} {value:g}"
        parts.append(_text(left + 6, at_y(value) - 5, label))

    # One line with markers per run, and its legend entry to the right of the plot.
    for index, curve in enumerate(curves):
        colour = _COLOURS[index % len(_COLOURS)]
        points = [(at_x(px), at_y(py)) for px, py in curve.points]
        parts.append(f"<g><title>{escape(curve.label)}</title>")
        parts.append(
            '<polyline fill="none" stroke-width="2" stroke-linejoin="round" '
            f'stroke="{colour}" points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in points)}"/>'
        )
        if len(points) <= _MAX_MARKERS:
            parts += [
                f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>' for a, b in points
            ]
        parts.append("</g>")
        entry_x, entry_y = left + plot_w + 20, top + 10 + 20 * index
        parts.append(
            f'<line x1="{entry_x:.1f}" y1="{entry_y:.1f}" x2="{entry_x + 24:.1f}" '
            f'y2="{entry_y:.1f}" stroke="{colour}" stroke-width="2"/>'
        )
        parts.append(f'<circle cx="{entry_x + 12:.1f}" cy="{entry_y:.1f}" r="3" fill="{colour}"/>')
        parts.append(_text(entry_x + 30, entry_y + 4, curve.label))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
