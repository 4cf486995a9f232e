"""`resnets train`: the paper's recipes from the command line.

Every flag maps to one config key (see `FLAGS`); its help text is that field's
documentation. Precedence: preset < --config FILE < flags.
"""

from __future__ import annotations

import argparse
import json
from typing import Iterable

from ..config import DataConfig, ModelConfig, OptimConfig, TrainConfig, field_docs, resolve_config

# flag -> (config key, argparse extras). One table: no flag exists without a config field.
FLAGS: dict[str, tuple[str, dict]] = {
    "--model": ("model.name", {}),
    "--num-classes": ("model.num_classes", {"type": int}),
    "--shortcut": ("model.shortcut", {"choices": ["A", "B", "C"]}),
    "--stride-in-3x3": ("model.stride_in_1x1", {"action": "store_const", "const": False}),
    "--zero-init-residual": ("model.zero_init_residual", {"action": "store_const", "const": True}),
    "--normalization": ("model.normalization", {"choices": ["per_pixel_mean", "channel_mean_std", "none"]}),
    "--dataset": ("data.dataset", {"choices": ["cifar10", "imagenet"]}),
    "--data": ("data.path", {"metavar": "PATH"}),
    "--download": ("data.download", {"action": "store_const", "const": True}),
    "--cache-dir": ("data.cache_dir", {}),
    "--val-size": ("data.val_size", {"type": int}),
    "--split-seed": ("data.split_seed", {"type": int}),
    "--train-size": ("data.train_size", {"type": int}),
    "--augment": ("data.augment", {"choices": ["paper", "randomresizedcrop", "none"]}),
    "--workers": ("data.workers", {"type": int}),
    "--skip-bad-images": ("data.skip_bad_images", {"action": "store_const", "const": True}),
    "--iters": ("optim.iters", {"type": int}),
    "--batch-size": ("optim.batch_size", {"type": int}),
    "--lr": ("optim.lr", {"type": float}),
    "--weight-decay": ("optim.weight_decay", {"type": float}),
    "--momentum": ("optim.momentum", {"type": float}),
    "--schedule": ("optim.schedule", {"choices": ["step", "plateau"]}),
    "--milestones": ("optim.milestones", {"metavar": "I1,I2,..."}),
    "--plateau-patience": ("optim.plateau_patience", {"type": int}),
    "--warmup": ("optim.warmup", {"choices": ["auto", "on", "off"]}),
    "--preset": ("preset", {"choices": ["cifar-paper", "imagenet-paper"]}),
    "--out": ("out", {"metavar": "RUN_DIR"}),
    "--seed": ("seed", {"type": int}),
    "--device": ("device", {"choices": ["auto", "cpu", "cuda"]}),
    "--precision": ("precision", {"choices": ["auto", "fp32", "bf16"]}),
    "--no-channels-last": ("channels_last", {"action": "store_const", "const": False}),
    "--compile": ("compile", {"action": "store_const", "const": True}),
    "--eval-every": ("eval_every", {"type": int}),
    "--log-every": ("log_every", {"type": int}),
    "--checkpoint-every": ("checkpoint_every", {"type": int}),
    "--sync-bn": ("sync_bn", {"action": "store_const", "const": True}),
    "--no-tensorboard": ("tensorboard", {"action": "store_const", "const": False}),
}

_DOCS = {**{f"model.{k}": v for k, v in field_docs(ModelConfig).items()},
         **{f"data.{k}": v for k, v in field_docs(DataConfig).items()},
         **{f"optim.{k}": v for k, v in field_docs(OptimConfig).items()},
         **field_docs(TrainConfig)}


def add_config_flags(parser, flags: Iterable[str] = FLAGS, config_file: bool = True) -> None:
    """Add `flags` (default: all of FLAGS) to an argparse parser or argument group."""
    if config_file:
        parser.add_argument("--config", metavar="FILE",
                            help="a YAML file of config keys (see config.yaml in any run directory)")
    for flag in flags:
        key, extra = FLAGS[flag]
        help_text = _DOCS.get(key, "").replace("%", "%%")
        parser.add_argument(flag, dest=key, default=None, help=f"[{key}] {help_text}", **extra)


def overrides_from_args(args: argparse.Namespace, flags: Iterable[str] = FLAGS) -> dict:
    """{config key: value} for the given flags that were set on the command line."""
    keys = (FLAGS[flag][0] for flag in flags)
    return {key: getattr(args, key) for key in keys if getattr(args, key, None) is not None}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return resolve_config(args.config, overrides_from_args(args))


def run(args: argparse.Namespace) -> int:
    from ..train.engine import train

    config = config_from_args(args)
    if args.print_config:
        import yaml

        from ..config import to_dict

        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    summary = train(config, resume=args.resume)
    print(json.dumps(summary))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a network with the paper's recipe",
        description="Train a network. Defaults are the paper's recipe for the data set: cifar-paper (Sec. 4.2: "
                    "batch 128, lr 0.1 /10 at 32k and 48k, 64k iterations, 45k/5k split) or imagenet-paper "
                    "(Sec. 3.4: batch 256, lr 0.1 /10 on plateau). Also runs under torchrun for DDP.")
    add_config_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)
