r"""What a model is: its size, its cost, the layout of its latent and, for a bundled model,
how it was trained and how well it does (``fdn info``)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from fdn.model import FDN
from fdn.pretrained import DEFAULT_MODELS, available_models, model_record, resolve_model

__all__ = [
    "PAPER",
    "choose_model",
    "count_parameters",
    "denoise_flops",
    "describe",
    "info_lines",
    "model_info",
    "training_record",
]

PAPER = "FDN() (the paper's configuration, untrained)"


def choose_model(spec: str | None = None, paper: bool = False) -> tuple[FDN, str]:
    """The model that ``fdn info`` and ``fdn bench`` describe, with a label that names it: the
    bundled colour model by default, else a bundled name or model file ``spec``, or with
    ``paper`` the paper's configuration (``FDN()``, untrained)."""
    if paper:
        return FDN(), PAPER
    model = resolve_model(spec, 3)
    if spec is None:
        return model, f"{DEFAULT_MODELS[3]} (bundled, the default)"
    return model, f"{spec} (bundled)" if spec in available_models() else spec


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def denoise_flops(model: FDN, height: int = 256, width: int = 256) -> int:
    """FLOPs of one ``denoise`` of a ``1 x C x height x width`` image, as counted by
    :class:`torch.utils.flop_counter.FlopCounterMode` (2 per multiply-accumulate).

    The count runs on the meta device, so it costs no real compute at any size.
    """
    meta = FDN.from_config(model.config).to("meta").eval()
    image = torch.empty(1, model.config.in_channels, height, width, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta.denoise(image)
    return counter.get_total_flops()


def model_info(model: FDN, height: int = 256, width: int = 256) -> dict:
    """A JSON-ready summary of ``model`` for a ``height x width`` denoise."""
    config = model.config
    flops = denoise_flops(model, height, width)
    multiple = config.size_multiple
    padded = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)
    clean = config.clean_channels
    return {
        "config": config.to_dict(),
        "parameters": count_parameters(model),
        "image_size": [height, width],
        # The paper's Table V "GFLOPs" (76.80 for FDN at 256x256, 73.32 for DnCNN) are
        # multiply-accumulates of a full denoise (encode + decode), so that is what we report
        # as GFLOPs; FlopCounterMode's raw count, at 2 FLOPs per MAC, is kept beside it.
        "denoise_gflops": flops / 2e9,
        "denoise_flops_counted": flops,
        "flops_convention": "GFLOPs as in the paper: multiply-accumulates (counted FLOPs / 2)",
        "latent_shape": [
            1,
            config.latent_channels,
            padded[0] // multiple,
            padded[1] // multiple,
        ],
        "z_c_channels": [0, clean],
        "z_n_channels": [clean, config.latent_channels],
    }


def training_record(name: str) -> dict:
    """How bundled model ``name`` was trained and how well it does (from ``models.json``)."""
    record = model_record(name)
    # What was calibrated for these weights since their release (None: not yet, or never).
    calibrations = {"ood_guard": record.get("ood_guard")}
    if name in DEFAULT_MODELS.values():  # the models the flow noise estimator runs
        calibrations["noise_calibration"] = record.get("noise_calibration")
    return {
        "cumulative": record["cumulative"],  # iterations, patches, CPU and GPU hours
        "last_stage": record["training"],
        "holdout_images": record["holdout"]["images"],
        "holdout_psnr_db": record["holdout"]["psnr_db"],
        "holdout_sigmas": record["holdout"]["sigmas"],
        "test_psnr_db": record.get("psnr_db", {}),  # at strength 1
        # At the default strength, for a model with a strength curve (scripts/fit_strength.py).
        "test_psnr_db_default": record.get("psnr_db_default", {}),
        "strength_curve": record.get("strength_curve"),
        **calibrations,
        # The config each stage is trained with (relative to the source tree, not installed).
        "recipe": record.get("recipe"),
    }


def describe(
    spec: str | None = None, paper: bool = False, height: int = 256, width: int = 256
) -> dict:
    """What ``fdn info`` reports (see :func:`choose_model`): :func:`model_info`, and for a
    bundled model its :func:`training_record`; by default, the other bundled models in brief."""
    model, label = choose_model(spec, paper)
    info = {"model": label, **model_info(model, height, width)}
    name = None if paper else spec or DEFAULT_MODELS[3]
    if name in available_models():
        info["training"] = training_record(name)
    if spec is None and not paper:
        info["also_bundled"] = {
            other: _brief(other) for other in available_models() if other != name
        }
    return info


def _brief(name: str) -> dict:
    model = resolve_model(name, 3)
    return {
        "config": model.config.to_dict(),
        "parameters": count_parameters(model),
        "training": training_record(name),
    }


def _batches(stage: dict) -> str:
    """``batch 16``, or for a run whose batch changed (a GPU lending carried it on) ``5,500
    at batch 16, then 1,351 at batch 128``."""
    stretches = stage.get("batches") or [[stage["batch_size"], stage["iterations"]]]
    if len(stretches) == 1:
        return f"batch {stretches[0][0]}"
    return ", then ".join(f"{steps:,} at batch {batch}" for batch, steps in stretches)


def _scores(psnr: dict[str, float]) -> str:
    """``{"sigma15": 32.89, ...}`` as ``sigma 15/25/50: 32.89 / 30.44 / 27.33 dB``."""
    sigmas = "/".join(key.removeprefix("sigma") for key in psnr)
    return f"sigma {sigmas}: {' / '.join(f'{value:.2f}' for value in psnr.values())} dB"


def _calibration_lines(record: dict) -> list[str]:
    """Whether the likelihood guard and (for a model the flow estimator runs) the noise
    estimator are calibrated for the weights: a release drops both until measured again."""
    guard = record["ood_guard"]
    lines = [
        f"ood guard        warns above {guard['threshold_bits_per_dim']} bits/dim "
        f"(calibrated on {guard['data']})"
        if guard
        else "ood guard        none (not calibrated for these weights: no warning)"
    ]
    if "noise_calibration" in record:
        curve = record["noise_calibration"]
        lines.append(
            f"noise estimate   flow calibrated on {curve['images']} images of {curve['data']}"
            if curve
            else "noise estimate   flow uncalibrated for these weights (its raw residual)"
        )
    return lines


def info_lines(info: dict) -> list[str]:
    """:func:`describe`'s report as the lines ``fdn info`` prints."""
    config = info["config"]
    height, width = info["image_size"]
    latent = "x".join(str(n) for n in info["latent_shape"])
    lines = [
        f"model            {info['model']}",
        f"architecture     {config['num_blocks']} DownScale Flow Blocks x "
        f"{config['steps_per_block']} Steps of Flow, Dense Blocks gc={config['hidden_channels']}",
        f"image channels   {config['in_channels']}",
        f"parameters       {info['parameters']:,}",
        f"cost             {info['denoise_gflops']:.2f} GFLOPs (MACs) per {height}x{width} "
        "denoise",
        f"latent           {latent}",
        f"z_C (clean)      channels {info['z_c_channels'][0]}-{info['z_c_channels'][1] - 1}",
        f"z_N (noise)      channels {info['z_n_channels'][0]}-{info['z_n_channels'][1] - 1}"
        " (set to 0 to denoise)",
    ]
    if "training" in info:
        record = info["training"]
        total, stage = record["cumulative"], record["last_stage"]
        hours = f"{total['cpu_hours']} CPU hours"
        if total.get("gpu_hours"):
            hours += f" + {total['gpu_hours']} GPU hours"
        lines += [
            f"trained          {total['iterations']:,} iterations, "
            f"{total.get('patches', 0):,} patches, {hours}",
            f"last stage       {stage['iterations']:,} iterations, {_batches(stage)}, "
            f"{stage['patch_size']}x{stage['patch_size']} patches of {stage['data']}",
            f"held back        {record['holdout_psnr_db']:.2f} dB mean PSNR at sigma "
            f"{'/'.join(f'{sigma:g}' for sigma in record['holdout_sigmas'])} "
            f"({record['holdout_images']}, never trained on)",
        ]
        lines += [
            f"test PSNR        {name} {_scores(psnr)}"
            for name, psnr in record["test_psnr_db"].items()
        ]
        if record.get("strength_curve"):
            lines += [
                f"  by default     {name} {_scores(psnr)} (strength curve: docs/model-card.md)"
                for name, psnr in record["test_psnr_db_default"].items()
            ]
        lines += _calibration_lines(record)
        if record["recipe"]:
            lines.append(
                f"recipe           {record['recipe']} (each stage's exact config: "
                "models.json, stage_config)"
            )
    for name, brief in info.get("also_bundled", {}).items():
        config, total = brief["config"], brief["training"]["cumulative"]
        lines += [
            f"also bundled     {name}: {config['in_channels']} channel(s), "
            f"{config['num_blocks']} x {config['steps_per_block']} steps, "
            f"gc={config['hidden_channels']}, {brief['parameters']:,} parameters, "
            f"{total['iterations']:,} iterations, held back "
            f"{brief['training']['holdout_psnr_db']:.2f} dB",
            f"                 recipe {brief['training']['recipe']}; fdn info --model {name}",
        ]
    return lines
