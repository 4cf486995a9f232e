"""Train / evaluate / predict for the detector, with a run directory.

Run directory layout::

    RUN_DIR/config.yaml          resolved DetectionConfig (+ data description)
    RUN_DIR/metrics.jsonl        one JSON object per logged iteration / evaluation
    RUN_DIR/checkpoints/last.pt  model + optimizer + iteration, written atomically

Checkpoints hold only tensors, dicts, lists and primitives, so they load with
``torch.load(weights_only=True)``. Training progress is an iteration budget, and a
resumed run continues with the same data order as an uninterrupted one (the
sampling order is a pure function of seed and iteration).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from resnets.detection.config import DetectionConfig
from resnets.detection.data import hflip, load_image
from resnets.detection.model import FasterRCNN, build_detector
from resnets.errors import CheckpointError, ConfigError, TrainingDiverged
from resnets.models.weights import atomic_write, load_torch_file
from resnets.run_dir import (RunLock, append_history, config_changes, describe_changes, describe_failed_write,
                             non_finite, optimizer_tensors, prepare_run_dir)

__all__ = [
    "train",
    "evaluate",
    "predict",
    "save_checkpoint",
    "load_checkpoint",
    "load_detector",
    "draw_detections",
    "resolve_device",
]

CHECKPOINT_FORMAT = "resnets-detection"
CHECKPOINT_VERSION = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# Settings a resumed run may change (how long and how fast it trains, how it logs, how it
# is evaluated); any other change would make it a different experiment and is refused.
RESUME_CHANGEABLE = frozenset({
    "iterations", "lr", "lr_steps", "lr_gamma", "log_every", "checkpoint_every", "num_workers", "device",
    "backbone_weights",  # read only when a run starts; a resumed run takes its weights from the checkpoint
    # inference only
    "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "score_threshold", "nms", "detections_per_image",
    "box_refinement", "box_voting_iou", "test_scales", "voc07_metric",
})


# -------------------------------------------------------------- checkpoints
def _atomic_torch_save(obj: Any, path: Path) -> None:
    """Temp file in the same folder + fsync + os.replace: a crash never leaves a torn file,
    and a failed write (a full disk) leaves the previous file as it was."""

    def write(tmp: str) -> None:
        try:
            torch.save(obj, tmp)
        except (OSError, RuntimeError) as e:
            raise CheckpointError(describe_failed_write(path, e)) from None

    atomic_write(path, write)


def save_checkpoint(path: str | Path, model: FasterRCNN, optimizer: torch.optim.Optimizer | None = None,
                    iteration: int = 0, extra: dict[str, Any] | None = None) -> None:
    """Write a checkpoint atomically; TrainingDiverged (nothing written) if any weight or
    optimizer state is NaN or inf."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.cfg.to_dict(),
        "iteration": int(iteration),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        # Normalize keeps non-persistent buffers; store them so the model is self-contained.
        "normalize": {"mean": model.normalize.mean.detach().cpu(), "std": model.normalize.std.detach().cpu()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "extra": extra or {},
    }
    bad = non_finite([*state["model"].items(), *optimizer_tensors(state["optimizer"] or {})])
    if bad:
        raise TrainingDiverged(f"{len(bad)} weight or optimizer tensors hold NaN or inf ({', '.join(bad[:3])}); "
                               f"{path} was not written from them")
    _atomic_torch_save(state, Path(path))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a detector checkpoint with ``weights_only=True``; CheckpointError if unusable."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    state = load_torch_file(p, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p} is not a resnets detection checkpoint (written by `resnets detect train`)")
    return state


def load_detector(path: str | Path, device: str | torch.device = "cpu",
                  overrides: dict[str, Any] | None = None) -> FasterRCNN:
    """Rebuild a detector from a checkpoint (config + weights), in eval mode.
    ``overrides`` may change inference-only options (e.g. ``test_scales``, ``box_refinement``)."""
    from resnets.models import Normalize

    state = load_checkpoint(path)
    cfg = DetectionConfig.from_dict({**state["config"], "backbone_weights": None, **(overrides or {})}, source=str(path))
    model = build_detector(cfg)
    model.normalize = Normalize(state["normalize"]["mean"], state["normalize"]["std"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit its config: {e}") from None
    return model.to(device).eval()


# ------------------------------------------------------------------- train
def _lr_at(cfg: DetectionConfig, it: int) -> float:
    lr = cfg.lr * cfg.lr_gamma ** sum(it >= s for s in cfg.lr_steps)
    if it < cfg.warmup_iterations:
        lr *= 0.1 + 0.9 * it / cfg.warmup_iterations
    return lr


def _batch_indices(cfg: DetectionConfig, n: int, it: int) -> list[int]:
    """Images of iteration ``it``: epochs are seeded permutations, so resuming at
    any iteration reproduces exactly the uninterrupted order."""
    out = []
    for pos in range(it * cfg.batch_size, (it + 1) * cfg.batch_size):
        epoch, k = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        out.append(int(perm[k]))
    return out


class _IterationBatches(Dataset):
    """Item ``it`` = the (flipped) images and targets of training iteration ``it``.

    A pure function of (seed, it), so DataLoader workers and resumed runs see exactly
    the same batches. Objects marked difficult (VOC) / crowd (COCO) are not trained on
    (as in py-faster-rcnn)."""

    def __init__(self, dataset: Dataset, cfg: DetectionConfig) -> None:
        self.dataset, self.cfg = dataset, cfg

    def __len__(self) -> int:
        return self.cfg.iterations

    def __getitem__(self, it: int) -> list[tuple[Tensor, dict[str, Tensor]]]:
        cfg = self.cfg
        flip_gen = torch.Generator().manual_seed(cfg.seed * 7_919 + it)
        out = []
        for i in _batch_indices(cfg, len(self.dataset), it):
            img, tgt = self.dataset[i]
            if "difficult" in tgt:
                keep = ~tgt["difficult"]
                tgt = {**tgt, "boxes": tgt["boxes"][keep], "labels": tgt["labels"][keep]}
            if cfg.hflip and bool(torch.rand((), generator=flip_gen) < 0.5):
                img, tgt = hflip(img, tgt)
            out.append((img, {"boxes": tgt["boxes"], "labels": tgt["labels"]}))
        return out


def _identity(x: Any) -> Any:
    return x


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def saved_config(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config of the run in `run_dir` (from its checkpoint) and the data it trained on
    (from its config.yaml): what a resume starts from."""
    run = Path(run_dir)
    ckpt = run / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        raise CheckpointError(f"cannot resume: {ckpt} does not exist")
    data: dict[str, Any] = {}
    if (run / "config.yaml").is_file():
        data = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("data") or {}
    return load_checkpoint(ckpt)["config"], data


def train(
    cfg: DetectionConfig,
    dataset: Dataset,
    run_dir: str | Path,
    *,
    resume: bool = False,
    data_info: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = print,
    model: FasterRCNN | None = None,
) -> FasterRCNN:
    """Train end to end (approximate joint training) for ``cfg.iterations`` iterations.

    Writes config.yaml, metrics.jsonl and checkpoints/last.pt under ``run_dir``, which one
    process at a time may write (``RUN_DIR/run.lock``). With ``resume`` the run continues
    from last.pt; settings in ``RESUME_CHANGEABLE`` may differ from the checkpoint's (they
    are printed and appended to config_history.jsonl), any other difference is refused, and
    a finished run is left untouched. ``model`` replaces the network built from
    ``cfg.arch`` (e.g. a custom ResNet; its config must be ``cfg``)."""
    run = Path(run_dir)
    if resume and not run.is_dir():
        raise CheckpointError(f"cannot resume: {run} does not exist")
    with RunLock(prepare_run_dir(run)):
        return _train(cfg, dataset, run, resume, data_info, log, model)


def _train(cfg: DetectionConfig, dataset: Dataset, run: Path, resume: bool, data_info: dict[str, Any] | None,
           log: Callable[[str], None] | None, model: FasterRCNN | None) -> FasterRCNN:
    say = log or (lambda _: None)
    ckpt_path = run / "checkpoints" / "last.pt"
    start = 0
    state = None
    changes: dict[str, list[Any]] = {}
    if resume:
        if not ckpt_path.is_file():
            raise CheckpointError(f"cannot resume: {ckpt_path} does not exist")
        state = load_checkpoint(ckpt_path)
        saved = DetectionConfig.from_dict(state["config"], source=str(ckpt_path))
        changes = config_changes(saved.to_dict(), cfg.to_dict())
        refused = {k: v for k, v in changes.items() if k not in RESUME_CHANGEABLE}
        if refused:
            raise ConfigError(f"refusing to resume {run}: settings differ from the checkpoint's: "
                              f"{describe_changes(refused)}; start a new run directory instead")
        start = int(state["iteration"])
    elif ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path} exists; pass resume to continue it or choose a new run directory")

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_detector(cfg) if model is None else model
    if state is not None:
        from resnets.models import Normalize

        model.load_state_dict(state["model"])
        model.normalize = Normalize(state["normalize"]["mean"], state["normalize"]["std"])
        if start >= cfg.iterations:
            say(f"{run} is finished (iteration {start} of {cfg.iterations}); its results are unchanged. "
                "Pass a larger --iters to extend it.")
            return model.to(device).eval()
        say(f"resuming {run} at iteration {start} of {cfg.iterations}"
            + (f"; settings changed from here on: {describe_changes(changes)}" if changes else ""))
    text = yaml.safe_dump({"detection": cfg.to_dict(), "data": data_info or {}}, sort_keys=False)
    atomic_write(run / "config.yaml", lambda tmp: Path(tmp).write_text(text))
    append_history(run, "resume" if resume else "start", start, cfg.to_dict(), changes, data=data_info or {})
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if state is not None and state.get("optimizer"):
        opt.load_state_dict(state["optimizer"])
    last_good = start if state is not None else None

    def diverged(what: str) -> TrainingDiverged:
        kept = (f"the last good checkpoint is {ckpt_path} (iteration {last_good})" if last_good is not None
                else "no checkpoint had been written yet")
        return TrainingDiverged(f"{what}; stopping: {kept}")

    metrics_path = run / "metrics.jsonl"
    n = len(dataset)
    if n == 0:
        from resnets.errors import DataError

        raise DataError("the training data set is empty")
    t0 = time.perf_counter()
    running: dict[str, float] = {}  # loss sums since the last metrics line
    count = 0
    batches = DataLoader(_IterationBatches(dataset, cfg), batch_size=None, sampler=range(start, cfg.iterations),
                         num_workers=cfg.num_workers, collate_fn=_identity)
    for it, batch in zip(range(start, cfg.iterations), batches):
        # Per-iteration seed: RPN/RoI sampling depends only on (seed, it), so resume is exact.
        torch.manual_seed(cfg.seed * 1_000_003 + it)
        images = [img.to(device) for img, _ in batch]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for _, t in batch]
        lr = _lr_at(cfg, it)
        for group in opt.param_groups:
            group["lr"] = lr
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise diverged(f"the loss became {loss.item()} at iteration {it + 1} (lr {lr:g})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        count += 1
        done = it + 1
        if done % cfg.log_every == 0 or done == cfg.iterations:
            record = {"iteration": done, "lr": lr, **{k: v / count for k, v in running.items()},
                      "elapsed_s": round(time.perf_counter() - t0, 3)}
            record["loss"] = sum(v for k, v in record.items() if k.startswith("loss_"))
            _append_jsonl(metrics_path, record)
            say(f"iter {done}/{cfg.iterations} loss {record['loss']:.4f} lr {lr:.5f}")
            running, count = {}, 0
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
            try:
                save_checkpoint(ckpt_path, model, opt, done)
            except TrainingDiverged as e:
                raise diverged(f"at iteration {done} (lr {lr:g}) {e}") from None
            last_good = done
    if not ckpt_path.is_file():  # a run of zero iterations still leaves its (initial) model
        save_checkpoint(ckpt_path, model, opt, start)
    return model.eval()


# ----------------------------------------------------------------- evaluate
@torch.no_grad()
def run_inference(model: FasterRCNN, dataset: Dataset, batch_size: int = 1) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """Detections and ground truths (CPU) for every image of ``dataset``, in order."""
    model.eval()
    device = next(model.parameters()).device
    dets, gts = [], []
    for s in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(s, min(s + batch_size, len(dataset)))]
        out = model([img.to(device) for img, _ in items])
        dets += [{k: v.cpu() for k, v in d.items()} for d in out]
        gts += [t for _, t in items]
    return dets, gts


def evaluate(model: FasterRCNN, dataset: Dataset, metric: str = "voc", batch_size: int = 1,
             use_07_metric: bool | None = None) -> dict[str, Any]:
    """``metric="voc"``: mAP@0.5 (+ per-class AP); ``"coco"``: COCOeval stats (needs a COCODetection)."""
    from resnets.detection.evaluation import evaluate_coco, evaluate_voc

    dets, gts = run_inference(model, dataset, batch_size)
    if metric == "coco":
        if not hasattr(dataset, "coco"):
            from resnets.errors import ConfigError

            raise ConfigError("metric 'coco' needs a COCO-format data set (--format coco)")
        return evaluate_coco(dets, dataset)
    v07 = model.cfg.voc07_metric if use_07_metric is None else use_07_metric
    res = evaluate_voc(dets, gts, model.cfg.num_classes, use_07_metric=v07)
    names = model.cfg.class_names or [str(i) for i in range(1, model.cfg.num_classes + 1)]
    return {"mAP@0.5": res["mAP"], "AP": dict(zip(names, res["AP"])), "voc07_metric": v07}


# ------------------------------------------------------------------ predict
def draw_detections(image: Tensor, det: dict[str, Tensor], class_names: list[str] | None, path: str | Path) -> None:
    """Draw boxes with ``label score`` captions onto the image and save it as PNG."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    draw = ImageDraw.Draw(im)
    palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
        colour = palette[(label - 1) % len(palette)]
        name = class_names[label - 1] if class_names and label - 1 < len(class_names) else str(label)
        draw.rectangle(box, outline=colour, width=2)
        draw.text((box[0] + 2, box[1] + 1), f"{name} {score:.2f}", fill=colour)
    im.save(path, format="PNG")


@torch.no_grad()
def predict(model: FasterRCNN, image_paths: list[str | Path], out_dir: str | Path | None = None,
            score_threshold: float = 0.5, draw: bool = True) -> list[dict[str, Any]]:
    """Detect objects in image files. Returns one record per image (boxes in pixels,
    scores, labels, names); with ``out_dir`` also writes ``detections.json`` and, if
    ``draw``, ``<stem>.png`` with the boxes drawn."""
    model.eval()
    device = next(model.parameters()).device
    names = model.cfg.class_names
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    records = []
    for path in image_paths:
        image = load_image(path)
        det = {k: v.cpu() for k, v in model([image.to(device)])[0].items()}
        keep = det["scores"] >= score_threshold
        det = {k: v[keep] for k, v in det.items()}
        records.append({
            "image": str(path),
            "boxes": [[round(c, 2) for c in b] for b in det["boxes"].tolist()],
            "scores": [round(s, 4) for s in det["scores"].tolist()],
            "labels": det["labels"].tolist(),
            "names": [names[l - 1] if names else str(l) for l in det["labels"].tolist()],
        })
        if out is not None and draw:
            draw_detections(image, det, names, out / f"{Path(path).stem}.png")
    if out is not None:
        (out / "detections.json").write_text(json.dumps(records, indent=1))
    return records
