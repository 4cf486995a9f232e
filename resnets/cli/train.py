"""`resnets train`: the paper's recipes from the command line.

Every flag maps to one config key (see `FLAGS`); its help text is that field's
documentation, or says what the flag does to it. Precedence: preset < --config FILE <
flags; with --resume the run's own config.yaml comes first, so `--resume --out RUN_DIR`
alone continues a run, and flags given with it change the run from there on.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Iterable

from ..config import DataConfig, ModelConfig, OptimConfig, TrainConfig, field_docs, load_yaml, resolve_config
from ..errors import CheckpointError
from .options import DEVICE_METAVAR, add_json, device_option, prepare_out, report

# flag -> (config key, argparse extras). One table: no flag exists without a config field.
# A flag that sets a field to one value carries its own help (the field's documentation
# describes the field, not what "--no-..." does to it); flags sharing a key exclude each other.
FLAGS: dict[str, tuple[str, dict]] = {
    "--model": ("model.name", {"metavar": "NAME"}),
    "--num-classes": ("model.num_classes", {"type": int}),
    "--shortcut": ("model.shortcut", {"choices": ["A", "B", "C"]}),
    "--stride-in-1x1": ("model.stride_in_1x1", {"action": "store_const", "const": True, "help":
                        "bottleneck stride in the first 1x1 conv, as the paper (Table 1) and its Caffe models "
                        "(the default)"}),
    "--stride-in-3x3": ("model.stride_in_1x1", {"action": "store_const", "const": False, "help":
                        'bottleneck stride in the 3x3 conv ("v1.5", as torchvision\'s ResNet-50/101/152)'}),
    "--zero-init-residual": ("model.zero_init_residual", {"action": "store_const", "const": True, "help":
                             "start each residual branch's last BN scale at zero (not in the paper; "
                             "Goyal et al. 2017)"}),
    "--normalization": ("model.normalization", {"choices": ["per_pixel_mean", "channel_mean_std", "none"]}),
    "--dataset": ("data.dataset", {"choices": ["cifar10", "imagenet"]}),
    "--data": ("data.path", {"metavar": "PATH"}),
    "--download": ("data.download", {"action": "store_const", "const": True, "help":
                   "CIFAR-10 without --data: fetch the official archive into --cache-dir (md5-checked)"}),
    "--cache-dir": ("data.cache_dir", {}),
    "--val-size": ("data.val_size", {"type": int}),
    "--split-seed": ("data.split_seed", {"type": int}),
    "--train-size": ("data.train_size", {"type": int}),
    "--augment": ("data.augment", {"choices": ["paper", "randomresizedcrop", "none"]}),
    "--workers": ("data.workers", {"type": int}),
    "--skip-bad-images": ("data.skip_bad_images", {"action": "store_const", "const": True, "help":
                          "ImageNet: log, count and skip unreadable images instead of stopping"}),
    "--iters": ("optim.iters", {"type": int, "metavar": "N"}),
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
    "--device": ("device", {"type": device_option, "metavar": DEVICE_METAVAR}),
    "--precision": ("precision", {"choices": ["auto", "fp32", "bf16"]}),
    "--no-channels-last": ("channels_last", {"action": "store_const", "const": False, "help":
                           "keep NCHW tensors instead of channels-last (NHWC); usually slower, for debugging "
                           "or kernels without NHWC support"}),
    "--compile": ("compile", {"action": "store_const", "const": True, "help":
                  "torch.compile the model: 10-40 s longer start-up, ~5% faster steps on CPU (docs/performance.md)"}),
    "--no-fused-bn-relu": ("fused_bn_relu", {"action": "store_const", "const": False, "help":
                           "run ATen's BatchNorm and ReLU instead of the fused CPU bf16 kernel "
                           "(docs/performance.md)"}),
    "--eval-every": ("eval_every", {"type": int}),
    "--log-every": ("log_every", {"type": int}),
    "--checkpoint-every": ("checkpoint_every", {"type": int}),
    "--sync-bn": ("sync_bn", {"action": "store_const", "const": True, "help":
                  "under DDP, synchronise BN statistics across processes (GPU only; the paper's BN is per GPU)"}),
    "--no-tensorboard": ("tensorboard", {"action": "store_const", "const": False, "help":
                         "do not write RUN_DIR/tensorboard (written by default when tensorboard is installed)"}),
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
    flags = list(flags)
    groups: dict[str, object] = {}
    for flag in flags:
        key, extra = FLAGS[flag]
        extra = dict(extra)
        help_text = extra.pop("help", None) or _DOCS.get(key, "")
        target = parser
        if sum(FLAGS[f][0] == key for f in flags) > 1:  # e.g. --stride-in-1x1 / --stride-in-3x3
            if key not in groups:
                groups[key] = parser.add_mutually_exclusive_group()
            target = groups[key]
        target.add_argument(flag, dest=key, default=None, help=f"[{key}] {help_text}".replace("%", "%%"), **extra)


def overrides_from_args(args: argparse.Namespace, flags: Iterable[str] = FLAGS) -> dict:
    """{config key: value} for the given flags that were set on the command line."""
    keys = {FLAGS[flag][0] for flag in flags}
    return {key: getattr(args, key) for key in keys if getattr(args, key, None) is not None}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = None
    if getattr(args, "resume", False):
        out = getattr(args, "out", None)
        if out is None:
            raise CheckpointError("--resume needs --out RUN_DIR, the run to continue")
        saved = Path(out) / "config.yaml"
        if not saved.is_file():
            raise CheckpointError(f"cannot resume: {saved} does not exist (is {out} a run directory?)")
        base = load_yaml(saved)
    return resolve_config(args.config, overrides_from_args(args), base=base)


def run(args: argparse.Namespace) -> int:
    from ..train.engine import train

    config = config_from_args(args)
    if args.print_config:
        import yaml

        from ..config import to_dict

        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    if not args.resume:  # a resumed run's folder exists, or config_from_args said it does not
        prepare_out(config.out, "run directory")
    summary = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, one process reports
    val = summary.get("val_error")
    report(args, summary, f"resnets train: {summary['model']} finished at iteration {summary['iteration']}: "
                          + (f"validation error {val:.2f}%" if val is not None else "no validation split")
                          + f"; weights in {Path(config.out) / 'model.safetensors'}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a network with the paper's recipe",
        description="Train a network. Defaults are the paper's recipe for the data set: cifar-paper (Sec. 4.2: "
                    "batch 128, lr 0.1 /10 at 32k and 48k, 64k iterations, 45k/5k split) or imagenet-paper "
                    "(Sec. 3.4: batch 256, lr 0.1 /10 on plateau). Also runs under torchrun for DDP.")
    add_config_flags(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly where it stopped, with its own config.yaml as the "
                        "defaults; flags given with it (a longer --iters, new --milestones, --lr) take effect "
                        "from the checkpoint on and are recorded in RUN_DIR/config_history.jsonl")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_json(p)
    p.set_defaults(func=run)
