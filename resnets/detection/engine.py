"""Train / evaluate / predict for the detector, with a run directory.

Run directory layout (as `resnets train` writes it, with the same shared pieces)::

    RUN_DIR/config.yaml           resolved DetectionConfig (+ data description), written atomically
    RUN_DIR/config_history.jsonl  the config of each start and resume, with what changed
    RUN_DIR/metrics.jsonl         one JSON object per logged iteration / evaluation
    RUN_DIR/checkpoints/last.pt   model + optimizer + iteration (previous.pt: the one before)
    RUN_DIR/run.lock              held by the one process writing the run

Checkpoints are `resnets.checkpoint`'s: atomic, and only tensors, dicts, lists and
primitives, so they load with ``torch.load(weights_only=True)``. Training progress is an
iteration budget, and a resumed run continues with the same data order as an
uninterrupted one (the sampling order is a pure function of seed and iteration); its
metrics.jsonl reads as the uninterrupted run's would.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from resnets.checkpoint import checkpoint_dir, load_checkpoint, load_resume_checkpoint, save_checkpoint
from resnets.config import load_yaml, save_yaml
from resnets.detection.config import DetectionConfig
from resnets.detection.data import hflip, load_image
from resnets.detection.model import FasterRCNN, build_detector
from resnets.errors import CheckpointError, ConfigError, DataError, TrainingDiverged, TrainingStopped
from resnets.eval.evaluate import eval_mode
from resnets.io import atomic_write_text
from resnets.models.loading import checkpoint_network
from resnets.models.normalize import normalization_state
from resnets.run_dir import RunLock, append_history, config_changes, describe_changes, prepare_run_dir
from resnets.runtime import resolve_device
from resnets.train.metrics_log import MetricsLog, append_metrics
from resnets.train.progress import ProgressBar
from resnets.train.schedule import step_lr
from resnets.train.stop import StopRequest

__all__ = [
    "train",
    "evaluate",
    "predict",
    "checkpoint_state",
    "load_detector",
    "draw_detections",
]

CHECKPOINT_FORMAT = "resnets-detection"
# 2: the input normalisation is stored as `input_norm.*` tensors in "model" (1: a "normalize" entry).
CHECKPOINT_VERSION = 2

# Settings a resumed run may change (how long and how fast it trains, how it logs, how it
# is evaluated); any other change would make it a different experiment and is refused.
RESUME_CHANGEABLE = frozenset({
    "iterations", "lr", "lr_steps", "lr_gamma", "log_every", "checkpoint_every", "num_workers", "device", "precision",
    "backbone_weights",  # read only when a run starts; a resumed run takes its weights from the checkpoint
    # inference only
    "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "score_threshold", "nms", "detections_per_image",
    "box_refinement", "box_voting_iou", "test_scales", "voc07_metric",
})


# -------------------------------------------------------------- checkpoints
def checkpoint_state(model: FasterRCNN, optimizer: torch.optim.Optimizer | None = None,
                     iteration: int = 0) -> dict[str, Any]:
    """What `resnets.checkpoint.save_checkpoint` writes for a detector."""
    network = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.cfg.to_dict(),
        "iteration": int(iteration),
        "model": {**network, **normalization_state(model.normalize)},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
    }


def _check_detection_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a resnets detection checkpoint (written by `resnets detect train`)")


def load_detector(path: str | Path, device: str | torch.device = "cpu",
                  overrides: dict[str, Any] | None = None) -> FasterRCNN:
    """Rebuild a detector from a checkpoint (config + weights + normalisation), in eval mode.
    ``overrides`` may change inference-only options (e.g. ``test_scales``, ``box_refinement``)."""
    state = load_checkpoint(path)
    _check_detection_checkpoint(state, path)
    cfg = DetectionConfig.from_dict({**state["config"], "backbone_weights": None, **(overrides or {})}, source=str(path))
    network, norm = checkpoint_network(state)
    model = build_detector(cfg, input_norm=norm)
    try:
        model.load_state_dict(network)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit its config: {e}") from None
    return model.to(resolve_device(device) if isinstance(device, str) else device).eval()


# ------------------------------------------------------------------- train
def _lr_at(cfg: DetectionConfig, it: int) -> float:
    """The step schedule of `resnets.train.schedule`, after an optional linear warm-up from lr/10."""
    lr = step_lr(cfg.lr, cfg.lr_gamma, cfg.lr_steps, it)
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


def saved_config(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config of the run in `run_dir` (from its checkpoint) and the data it trained on
    (from its config.yaml): what a resume starts from."""
    run = Path(run_dir)
    state, path = load_resume_checkpoint(run)
    _check_detection_checkpoint(state, path)
    data: dict[str, Any] = {}
    if (run / "config.yaml").is_file():
        data = load_yaml(run / "config.yaml").get("data") or {}
    return state["config"], data


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
    from its checkpoint (a run directory without one is refused); settings in
    ``RESUME_CHANGEABLE`` may differ from the checkpoint's (they are printed and appended to
    config_history.jsonl), any other difference is refused, and a finished run is left
    untouched. ``model`` replaces the network built from ``cfg.arch`` (e.g. a custom ResNet;
    its config must be ``cfg``)."""
    run = Path(run_dir)
    if resume and not run.is_dir():
        raise CheckpointError(f"cannot resume: {run} does not exist")
    with RunLock(prepare_run_dir(run)):
        return _train(cfg, dataset, run, resume, data_info, log, model)


def _train(cfg: DetectionConfig, dataset: Dataset, run: Path, resume: bool, data_info: dict[str, Any] | None,
           log: Callable[[str], None] | None, model: FasterRCNN | None) -> FasterRCNN:
    say = log or (lambda _: None)
    ckpt_path = checkpoint_dir(run) / "last.pt"
    start = 0
    state = None
    changes: dict[str, list[Any]] = {}
    if resume:
        state, ckpt_path = load_resume_checkpoint(run)
        _check_detection_checkpoint(state, ckpt_path)
        saved = DetectionConfig.from_dict(state["config"], source=str(ckpt_path))
        changes = config_changes(saved.to_dict(), cfg.to_dict())
        refused = {k: v for k, v in changes.items() if k not in RESUME_CHANGEABLE}
        if refused:
            raise ConfigError(f"refusing to resume {run}: settings differ from the checkpoint's: "
                              f"{describe_changes(refused)}; start a new run directory instead")
        start = int(state["iteration"])
    elif ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path} exists; pass resume to continue it or choose a new run directory")
    if len(dataset) == 0:
        raise DataError("the training data set is empty")

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if state is not None:
        network, norm = checkpoint_network(state)
        model = build_detector(cfg, input_norm=norm) if model is None else model
        model.load_state_dict(network)
        if start >= cfg.iterations:
            say(f"{run} is finished (iteration {start} of {cfg.iterations}); its results are unchanged. "
                "Pass a larger --iters to extend it.")
            return model.to(device).eval()
        say(f"resuming {run} at iteration {start} of {cfg.iterations}"
            + (f"; settings changed from here on: {describe_changes(changes)}" if changes else ""))
    elif model is None:
        model = build_detector(cfg)
    save_yaml({"detection": cfg.to_dict(), "data": data_info or {}}, run / "config.yaml")
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

    # On resume, lines past the checkpoint's iteration are dropped first (they are trained again).
    metrics = MetricsLog(run, True, start if state is not None else None, tensorboard=False,
                         echo=say if log is not None else (lambda _: None))
    t0 = time.perf_counter()
    running: dict[str, Tensor] = {}  # loss sums since the last metrics line, on the device
    count = 0
    batches = DataLoader(_IterationBatches(dataset, cfg), batch_size=None, sampler=range(start, cfg.iterations),
                         num_workers=cfg.num_workers, collate_fn=_identity)
    # A bar on a terminal (images/s, time left, lr, loss) from the first iteration; without one,
    # the metrics lines (the first at iteration 1, then every log_every) are the progress.
    bar = ProgressBar.on_terminal(cfg.iterations, start, cfg.batch_size) if log is not None else None
    if bar is not None:
        metrics.echo = bar.write
    with StopRequest() as stop:
        try:
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
                # One host sync per step on a GPU; on the CPU it costs nothing.
                if not torch.isfinite(loss):
                    raise diverged(f"the loss became {loss.item()} at iteration {it + 1} (lr {lr:g})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for k, v in losses.items():
                    running[k] = running[k] + v.detach() if k in running else v.detach()
                count += 1
                done = it + 1
                if bar is not None:
                    bar.tick(loss.detach(), lr)
                if done % cfg.log_every == 0 or done == cfg.iterations or done == 1:
                    record = {"event": "train", "iteration": done, "lr": lr,
                              **{k: float(v) / count for k, v in running.items()},
                              "elapsed_s": round(time.perf_counter() - t0, 3)}
                    record["loss"] = sum(v for k, v in record.items() if k.startswith("loss_"))
                    metrics.write(record)
                    running, count = {}, 0
                stop_now = stop.signal is not None  # SIGTERM / Ctrl-C: a checkpoint here, then stop
                if done % cfg.checkpoint_every == 0 or done == cfg.iterations or stop_now:
                    try:
                        ckpt_path = save_checkpoint(run, checkpoint_state(model, opt, done))
                    except TrainingDiverged as e:
                        raise diverged(f"at iteration {done} (lr {lr:g}) {e}") from None
                    last_good = done
                if stop_now and done < cfg.iterations:
                    metrics.write({"event": "stopped", "iteration": done, "signal": stop.name})
                    raise TrainingStopped(f"stopped by {stop.name} at iteration {done}, its checkpoint written; "
                                          f"`resnets detect train --resume --out {run}` continues from there",
                                          stop.signal)
            if not ckpt_path.is_file():  # a run of zero iterations still leaves its (initial) model
                save_checkpoint(run, checkpoint_state(model, opt, start))
        finally:
            if bar is not None:
                bar.close()
            metrics.close()
    return model.eval()


def log_evaluation(run_dir: str | Path, split: str, metrics: dict[str, Any]) -> None:
    """Add an evaluation of the run's final model to its metrics.jsonl."""
    iteration = load_checkpoint(checkpoint_dir(run_dir) / "last.pt")["iteration"]
    append_metrics(Path(run_dir), {"event": "eval", "iteration": iteration, "eval": split, **metrics})


# ----------------------------------------------------------------- evaluate
@torch.no_grad()
def run_inference(model: FasterRCNN, dataset: Dataset, batch_size: int = 1) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """Detections and ground truths (CPU) for every image of ``dataset``, in order.

    The mAP needs every detection of every image before it can be computed, so this is not
    `resnets.eval.evaluate`'s running top-k count; it shares its evaluation mode (`eval_mode`)."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    dets, gts = [], []
    # A bar on a terminal (the images done, images/s, time left); in a log file, a line at
    # each tenth of the set.
    tty, n, t0 = sys.stderr.isatty(), len(dataset), time.perf_counter()
    every = max(1, n // 10)
    bar = tqdm(total=n, unit="img", desc="evaluating", file=sys.stderr, leave=False, disable=not tty)
    with eval_mode([model]), bar:
        for s in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(s, min(s + batch_size, len(dataset)))]
            out = model([img.to(device) for img, _ in items])
            dets += [{k: v.cpu() for k, v in d.items()} for d in out]
            gts += [t for _, t in items]
            bar.update(len(items))
            done = len(dets)
            if not tty and (done // every > (done - len(items)) // every or done == n):
                print(f"evaluated {done}/{n} images ({done / (time.perf_counter() - t0):.2f} images/s)",
                      file=sys.stderr, flush=True)
    return dets, gts


def evaluate(model: FasterRCNN, dataset: Dataset, metric: str = "voc", batch_size: int = 1,
             use_07_metric: bool | None = None) -> dict[str, Any]:
    """``metric="voc"``: mAP@0.5 (+ per-class AP); ``"coco"``: COCOeval stats (needs a COCODetection)."""
    from resnets.detection.evaluation import evaluate_coco, evaluate_voc

    dets, gts = run_inference(model, dataset, batch_size)
    if metric == "coco":
        if not hasattr(dataset, "coco"):
            raise ConfigError("metric 'coco' needs a COCO-format data set (--format coco)")
        return evaluate_coco(dets, dataset)
    v07 = model.cfg.voc07_metric if use_07_metric is None else use_07_metric
    res = evaluate_voc(dets, gts, model.cfg.num_classes, use_07_metric=v07)
    names = model.cfg.class_names or [str(i) for i in range(1, model.cfg.num_classes + 1)]
    # Beside it: VOC2007's 11-point AP@0.5, and a COCO-style AP averaged over IoU 0.50:0.05:0.95
    # (each the area under the VOC precision/recall curve), for data sets without COCO JSON.
    voc07 = evaluate_voc(dets, gts, model.cfg.num_classes, use_07_metric=True)["mAP"]
    coco_style = [evaluate_voc(dets, gts, model.cfg.num_classes, iou_threshold=0.5 + 0.05 * i)["mAP"] for i in range(10)]
    return {"mAP@0.5": res["mAP"], "AP": dict(zip(names, res["AP"])), "voc07_metric": v07,
            "mAP@0.5 (VOC07 11-point)": voc07, "mAP@[.5:.95]": float(sum(coco_style) / len(coco_style)),
            "images": len(dets)}


# ------------------------------------------------------------------ predict
def draw_detections(image: Tensor, det: dict[str, Tensor], class_names: list[str] | None, path: str | Path) -> None:
    """Draw each box with a ``name score`` caption on a filled label (Pillow) and save as PNG;
    line width and font grow with the image."""
    from PIL import Image, ImageDraw, ImageFont

    im = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    draw = ImageDraw.Draw(im)
    side = min(im.size)
    width = max(2, side // 200)
    font = ImageFont.load_default(size=max(10, side // 30))
    palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
        colour = palette[(label - 1) % len(palette)]
        name = class_names[label - 1] if class_names and label - 1 < len(class_names) else str(label)
        draw.rectangle(box, outline=colour, width=width)
        caption = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), caption, font=font)
        # The label sits on the box's top edge, inside the image.
        shift = max(0.0, box[1] - (bottom - top) - 2) - top
        draw.rectangle((left, top + shift, right + 4, bottom + shift + 2), fill=colour)
        draw.text((box[0] + 2, box[1] + shift), caption, fill=(255, 255, 255), font=font)
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
        atomic_write_text(out / "detections.json", json.dumps(records, indent=1))
    return records
