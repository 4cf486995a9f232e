"""The one configuration object: typed dataclasses, each field documented.

It flows CLI -> data -> model -> trainer -> run directory -> reports. Values are resolved
in this order, later winning: the preset's defaults (`cifar-paper`, `imagenet-paper`),
a YAML file (`--config FILE`), then explicit CLI flags. The resolved config is written to
`RUN_DIR/config.yaml`, and that file alone reproduces the run.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import yaml

from .errors import ConfigError
from .io import atomic_write_text, get_dotted

# Field metadata: what a saved run must share with the current one. Each list of such keys is
# derived from these marks (`marked_keys`), so it can only name fields that exist.
CRITICAL = "critical"
"""Resuming with a different value would make another experiment; the checkpoint refuses it."""
REUSE = "reuse"
"""`resnets reproduce` counts a finished run as done only if these match what is asked for."""
REPORT = "report"
"""The run's schedule as reproduce's report.md prints it (and flags it against the paper)."""


def marks(*names: str) -> dict[str, bool]:
    """`field(metadata=marks(CRITICAL, REUSE))`."""
    return {name: True for name in names}


@dataclass
class ModelConfig:
    name: str = field(default="cifar_resnet20", metadata=marks(CRITICAL, REUSE))
    """A name from `resnets models`: resnet18..152, plain18..152, cifar_resnet{6n+2}, cifar_plain{6n+2}."""
    num_classes: int | None = field(default=None, metadata=marks(CRITICAL))
    """Classifier outputs; None takes the data set's class count."""
    shortcut: Literal["A", "B", "C"] | None = field(default=None, metadata=marks(CRITICAL))
    """Table 3's shortcut option; None: the paper's default (B for ImageNet nets, A for CIFAR nets)."""
    stride_in_1x1: bool = field(default=True, metadata=marks(CRITICAL))
    """Bottleneck stride in the first 1x1 as the paper (True) or in the 3x3, "v1.5" (False)."""
    zero_init_residual: bool = field(default=False, metadata=marks(CRITICAL))
    """Start each residual branch's last BN scale at zero (not in the paper; Goyal et al. 2017)."""
    normalization: Literal["per_pixel_mean", "channel_mean_std", "none"] = field(default="per_pixel_mean",
                                                                            metadata=marks(CRITICAL))
    """Input normalisation: the paper's per-pixel mean image (Sec. 3.4, 4.2), torchvision's
    per-channel mean/std (for weights trained that way), or none."""


@dataclass
class DataConfig:
    dataset: Literal["cifar10", "imagenet"] = field(default="cifar10", metadata=marks(CRITICAL))
    """Which data set family the data path holds."""
    path: str | None = None
    """CIFAR-10: a cifar-10-batches-py folder, the cifar-10-python.tar.gz archive, or a class-folder
    tree (ROOT/train/<class>/*.jpg). ImageNet: a tree ROOT/train/<wnid>/*.JPEG, ROOT/val/<wnid>/..."""
    download: bool = False
    """CIFAR-10 only: fetch the official archive into `cache_dir` (md5-checked) when `path` is unset."""
    cache_dir: str | None = None
    """Where downloads and decoded-array / file-index caches go (default ~/.cache/resnets)."""
    val_size: int = field(default=5000, metadata=marks(CRITICAL, REUSE, REPORT))
    """Images held out of the training set for validation (the paper's 45k/5k split, Sec. 4.2)."""
    split_seed: int = field(default=0, metadata=marks(CRITICAL, REUSE))
    """Seed choosing which images are held out; fixed so every run validates on the same ones."""
    train_size: int | None = field(default=None, metadata=marks(CRITICAL, REUSE, REPORT))
    """CIFAR: train on a class-stratified subset of this many images of the training split (None:
    all of it). Validation is unchanged. For experiments sized for small machines, where a
    network's capacity should show within minutes (docs/degradation.md)."""
    augment: Literal["paper", "randomresizedcrop", "none"] = field(default="paper",
                                                                 metadata=marks(CRITICAL, REUSE, REPORT))
    """The paper's augmentation (CIFAR: pad 4, crop 32, flip; ImageNet: scale [256, 480], crop 224,
    flip, PCA colour), the common RandomResizedCrop preset (ImageNet), or none."""
    workers: int = 4
    """DataLoader worker processes for decoding (ImageNet); CIFAR is decoded once, held in memory."""
    skip_bad_images: bool = False
    """Log, count and skip unreadable images instead of stopping (ImageNet)."""


@dataclass
class OptimConfig:
    lr: float = field(default=0.1, metadata=marks(REUSE, REPORT))
    """Initial learning rate (Sec. 3.4, 4.2)."""
    momentum: float = field(default=0.9, metadata=marks(CRITICAL, REPORT))
    """SGD momentum (Sec. 3.4)."""
    weight_decay: float = field(default=1e-4, metadata=marks(CRITICAL, REPORT))
    """L2 weight decay on every parameter (Sec. 3.4)."""
    batch_size: int = field(default=128, metadata=marks(CRITICAL, REUSE, REPORT))
    """Global mini-batch size (CIFAR 128, ImageNet 256). Split across processes under DDP."""
    iters: int = field(default=64000, metadata=marks(REUSE, REPORT))
    """Training iterations ("terminate training at 64k iterations", Sec. 4.2)."""
    schedule: Literal["step", "plateau"] = field(default="step", metadata=marks(REPORT))
    """"step": divide by 10 at `milestones`; "plateau": divide by 10 when validation error stops
    improving for `plateau_patience` evaluations (ImageNet, Sec. 3.4)."""
    milestones: list[int] = field(default_factory=lambda: [32000, 48000], metadata=marks(REUSE, REPORT))
    """Iterations at which the learning rate is divided by 10 (Sec. 4.2: 32k and 48k)."""
    gamma: float = 0.1
    """Factor applied to the lr at each milestone or plateau ("divided by 10")."""
    plateau_patience: int = 3
    """Evaluations without improvement before the lr is divided (schedule "plateau")."""
    min_lr: float = 1e-5
    """Stop dividing below this (schedule "plateau")."""
    warmup: Literal["auto", "on", "off"] = field(default="auto", metadata=marks(REPORT))
    """The ResNet-110 warm-up of Sec. 4.2: lr `warmup_lr` until the training error falls below
    `warmup_until_error`; "auto" turns it on for CIFAR-10 networks of depth >= 110 (the paper uses it
    there only, not for its ImageNet networks)."""
    warmup_lr: float = 0.01
    """The warm-up learning rate (Sec. 4.2: 0.01)."""
    warmup_until_error: float = 80.0
    """Training error (percent) below which the warm-up ends (Sec. 4.2: 80%, ~400 iterations)."""
    warmup_max_iters: int = 5000
    """Safety net: the warm-up ends here even if the error never drops."""


DEVICE_SPELLINGS = "auto, cpu, cuda or cuda:N"


def is_device_spelling(choice: str) -> bool:
    """Whether `choice` names a device as `device` settings and --device do (`resnets.runtime.resolve_device`)."""
    return choice in ("auto", "cpu", "cuda") or (choice.startswith("cuda:") and choice[5:].isdigit())


@dataclass
class TrainConfig:
    """Everything a training run needs; written resolved to RUN_DIR/config.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The network (see ModelConfig)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The data set and its pipeline (see DataConfig)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The optimiser and learning-rate schedule (see OptimConfig)."""
    preset: Literal["cifar-paper", "imagenet-paper"] = "cifar-paper"
    """Which paper recipe the defaults came from."""
    out: str = "runs/default"
    """The run directory."""
    seed: int = field(default=0, metadata=marks(CRITICAL, REUSE))
    """Seeds initialisation, data order and augmentation; a resumed run continues the same streams."""
    device: str = "auto"
    """"auto": CUDA when available (under torchrun, the process's LOCAL_RANK GPU), else CPU; "cpu";
    "cuda" (the LOCAL_RANK GPU); "cuda:N" (GPU N)."""
    precision: Literal["auto", "fp32", "bf16"] = field(default="auto", metadata=marks(REPORT))
    """"auto": bf16 autocast where the hardware has fast bf16 (the run's GPU natively, compute capability
    8.0+, not the emulation of V100/T4; CPUs with AVX512-BF16 or AMX, as oneDNN reports), else fp32."""
    channels_last: bool = True
    """NHWC memory format: faster convolutions with oneDNN and cuDNN."""
    compile: bool = False
    """torch.compile the model: 10-40 s longer start-up, ~5% faster steps on CPU (docs/performance.md)."""
    fused_bn_relu: bool = True
    """On CPU in bf16, run training-mode BN + ReLU (+ the residual add) as one fused kernel: ~1.14x faster
    ResNet-20 steps. Compiled for this CPU at first use (about a minute, cached by torch in
    TORCH_EXTENSIONS_DIR); without a compiler, ATen runs instead. Unused in fp32, on GPUs and with
    `compile` (docs/performance.md)."""
    eval_every: int = field(default=2000, metadata=marks(REPORT))
    """Validate every N iterations (and at the end)."""
    log_every: int = 100
    """Write a metrics line every N iterations."""
    checkpoint_every: int = 2000
    """Write checkpoints/last.pt every N iterations (and at each evaluation and at the end)."""
    sync_bn: bool = False
    """Under DDP, synchronise BN statistics across processes (the paper's BN is per-GPU)."""
    tensorboard: bool = True
    """Also log to RUN_DIR/tensorboard when the tensorboard package is installed."""


PRESETS: dict[str, dict[str, Any]] = {
    # Sec. 4.2: batch 128, lr 0.1, /10 at 32k and 48k, stop at 64k, 45k/5k split.
    "cifar-paper": {"data": {"dataset": "cifar10"},
                    "optim": {"lr": 0.1, "batch_size": 128, "iters": 64000, "schedule": "step",
                              "milestones": [32000, 48000]}},
    # Sec. 3.4: batch 256, lr 0.1, /10 when the error plateaus, up to 60e4 iterations.
    "imagenet-paper": {"data": {"dataset": "imagenet"},
                       "model": {"name": "resnet50"},
                       "optim": {"lr": 0.1, "batch_size": 256, "iters": 600000, "schedule": "plateau",
                                 "milestones": [150000, 300000, 450000]},
                       "eval_every": 5000, "checkpoint_every": 5000, "log_every": 100},
}


# --- typed conversion (every config dataclass of resnets, detection's too) ------------------

def check_value(key: str, tp: Any, value: Any) -> Any:
    """Convert/validate `value` against annotation `tp`; ConfigError names the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(key, arg, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, typing.get_args(tp)))}, got {value!r}")
        return value
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if isinstance(value, str):  # CLI form: "32000,48000"
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {_describe(args[0])}, got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):  # fixed length, e.g. tuple[float, float]
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(check_value(f"{key}[{i}]", t, v) for i, (t, v) in enumerate(zip(args, value)))
        items = [check_value(f"{key}[{i}]", args[0], v) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # YAML writes 64e3 as a float
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def update(obj: Any, values: Mapping[str, Any], prefix: str = "") -> None:
    """Apply a nested mapping onto dataclass `obj` in place, checking keys and types."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}; valid keys here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            update(current, value, prefix=f"{path}.")
        else:
            setattr(obj, key, check_value(path, hints[key], value))


def set_dotted(config: Any, dotted: Mapping[str, Any]) -> None:
    """Apply {"optim.lr": 0.05, ...} (CLI overrides) onto `config`."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    update(config, nested)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping (safe_load: no Python objects); ConfigError names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys at the top level")
    return data


def resolve_config(file: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                   preset: str | None = None, base: Mapping[str, Any] | None = None) -> TrainConfig:
    """Preset defaults, then `base` (a run's own config, when resuming), then a YAML file,
    then dotted CLI overrides."""
    file_values = load_yaml(file) if file else {}
    base = dict(base or {})
    overrides = dict(overrides or {})
    preset = overrides.pop("preset", None) or preset or file_values.get("preset") or base.get("preset")
    if preset is None:
        dataset = overrides.get("data.dataset") or file_values.get("data", {}).get("dataset", "cifar10")
        preset = "imagenet-paper" if dataset == "imagenet" else "cifar-paper"
    if preset not in PRESETS:
        raise ConfigError(f"preset: expected one of {', '.join(map(repr, PRESETS))}, got {preset!r}")
    config = TrainConfig()
    config.preset = preset
    update(config, PRESETS[preset])
    try:
        update(config, base)
    except ConfigError as e:
        raise ConfigError(f"the run's own config.yaml: {e}") from None
    try:
        update(config, file_values)
    except ConfigError as e:
        raise ConfigError(f"{file}: {e}") from None
    set_dotted(config, overrides)
    return config


def validate(config: TrainConfig) -> None:
    """Refuse values that would crash deep inside a run or silently train something else.

    Checked when a run starts or resumes, not when a config is read back: an old run's
    config.yaml or checkpoint stays readable for reports and `eval`.
    """
    positive = (lambda v: v >= 1, "a positive integer")
    rules: dict[str, tuple[Callable[[Any], bool], str]] = {
        "model.num_classes": (lambda v: v is None or v >= 1, "a positive number of classes"),
        "data.val_size": (lambda v: v >= 0, "0 or more held-out images"),
        "data.train_size": (lambda v: v is None or v >= 1, "a positive number of images"),
        "data.workers": (lambda v: v >= 0, "0 or more worker processes"),
        "optim.lr": (lambda v: v > 0, "a positive learning rate"),
        "optim.momentum": (lambda v: 0 <= v < 1, "a momentum in [0, 1)"),
        "optim.weight_decay": (lambda v: v >= 0, "a weight decay of 0 or more"),
        "optim.batch_size": positive,
        "optim.iters": positive,
        "optim.gamma": (lambda v: 0 < v <= 1, "a factor in (0, 1]"),
        "optim.plateau_patience": positive,
        "optim.min_lr": (lambda v: v >= 0, "a learning rate of 0 or more"),
        "optim.warmup_lr": (lambda v: v > 0, "a positive learning rate"),
        "optim.warmup_max_iters": (lambda v: v >= 0, "0 or more iterations"),
        "seed": (lambda v: v >= 0, "a seed of 0 or more"),
        "eval_every": positive,
        "log_every": positive,
        "checkpoint_every": positive,
        "device": (is_device_spelling, DEVICE_SPELLINGS),
    }
    for key, (ok, expected) in rules.items():
        value = get_dotted(to_dict(config), key)
        if not ok(value):
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    o = config.optim
    if o.schedule == "step":
        # The step schedule divides at each milestone it passes; out of order or past the
        # end, the lr would not follow the schedule that was asked for.
        if any(a >= b for a, b in zip(o.milestones, o.milestones[1:])):
            raise ConfigError(f"optim.milestones: expected increasing iterations, got {o.milestones}")
        late = [x for x in o.milestones if not 0 < x < o.iters]
        if late:
            raise ConfigError(f"optim.milestones: {late} not within 1..{o.iters - 1} (optim.iters is {o.iters}); "
                              f"pass --milestones inside the schedule, e.g. {o.iters // 2},{o.iters * 3 // 4}")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from its dict form (config.yaml, a checkpoint)."""
    config = TrainConfig()
    update(config, values)
    return config


def save_yaml(config: Any, path: str | Path) -> None:
    """A config dataclass (or a mapping) as YAML, written atomically."""
    values = to_dict(config) if dataclasses.is_dataclass(config) else config
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))


def marked_keys(cls: type, mark: str, prefix: str = "") -> tuple[str, ...]:
    """Dotted names of the fields of dataclass `cls`, nested ones included, whose metadata has `mark`."""
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += marked_keys(hints[f.name], mark, f"{prefix}{f.name}.")
        elif f.metadata.get(mark):
            keys.append(prefix + f.name)
    return tuple(keys)


def changed_settings(saved: TrainConfig, current: TrainConfig, mark: str) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every field marked `mark` that differs.

    Both sides are whole TrainConfigs: a config written before a field existed was read
    with that field's default (`from_dict`), so every key is present on both sides.
    """
    a, b = to_dict(saved), to_dict(current)
    return [(key, get_dotted(a, key), get_dotted(b, key)) for key in marked_keys(TrainConfig, mark)
            if get_dotted(a, key) != get_dotted(b, key)]


def field_docs(cls: type) -> dict[str, str]:
    """Field docstrings (the string literal after each field), for --help and docs."""
    node = next(n for n in ast.walk(_module_syntax(cls.__module__))
                if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    docs: dict[str, str] = {}
    for field_node, nxt in zip(node.body, node.body[1:]):
        if isinstance(field_node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[field_node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[attr-defined]
    return docs


@functools.cache
def _module_syntax(module: str) -> ast.Module:
    """The module's syntax tree, parsed once for all its classes: `inspect.getsource(cls)`
    parses the whole file again on every call (Python < 3.13), and the four calls for `resnets
    train`'s flags took 80 ms of every command's start, `resnets models` and `--help` too."""
    return ast.parse(inspect.getsource(sys.modules[module]))
