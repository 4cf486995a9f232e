"""`resnets export`: a trained network -> an ONNX file, verified in onnxruntime.

The graph includes the network's input normalisation, so it takes float32 images in
[0, 1] (NCHW, any batch size) and returns logits. The network is a run's file (--checkpoint)
or named pretrained weights (--model NAME --weights TAG), loaded as `eval` and `predict`
load them. It is traced on the CPU, so the file runs anywhere; after writing, the file is
run in onnxruntime beside PyTorch (on --device) on random images, and the command fails if
the two disagree.
"""

from __future__ import annotations

import argparse

from ..errors import CheckpointError
from .options import add_device, add_json, add_model_weights, prepare_out, report

# fp32 logits of the same network through two runtimes differ by summation order only;
# measured 4e-6 on a trained ResNet-20 and 5e-5 on a random-init ResNet-50 at 224.
MAX_ABS_DIFF = 1e-3


def run(args: argparse.Namespace) -> int:
    import torch

    from ..eval.predict import network_from_args
    from ..models import model_spec
    from ..models.onnx_export import check_onnx, export_onnx
    from ..runtime import resolve_device

    device = resolve_device(args.device)
    model, config = network_from_args(args.model, args.weights, args.checkpoint)
    name = config["name"]
    size = args.image_size or model_spec(name).input_size
    prepare_out(args.out, "file")
    path = export_onnx(model, args.out, image_size=size, opset=args.opset)
    result = {"written": str(path), "model": name, "image_size": size, "opset": args.opset}
    if args.check_images > 0:
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(args.check_images, 3, size, size, generator=generator)
        check = check_onnx(path, model.to(device), images)
        result.update(check_images=check.images, max_abs_diff=check.max_abs_diff,
                      top1_agreement=check.top1_agreement)
        if check.max_abs_diff > MAX_ABS_DIFF or check.top1_agreement < 1.0:
            raise CheckpointError(f"{path}: onnxruntime disagrees with PyTorch (max |diff| {check.max_abs_diff:.3g}, "
                                  f"top-1 agreement {check.top1_agreement:.3f}); the file was kept for inspection")
    checked = (f"; onnxruntime matches PyTorch on {result['check_images']} images (max |diff| "
               f"{result['max_abs_diff']:.2g})" if "check_images" in result else "")
    report(args, result, f"wrote {path} ({name}, {size}x{size} input){checked}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a trained network to ONNX (checked in onnxruntime)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", metavar="FILE", help="a run's model.safetensors, a training checkpoint (.pt), "
                                                        "or weights `resnets convert` understands")
    add_model_weights(p)
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="square input size (default: the network's own, 32 for CIFAR, 224 for ImageNet)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default: %(default)s)")
    p.add_argument("--check-images", type=int, default=8, metavar="N",
                   help="random images to compare onnxruntime with PyTorch on; 0 skips the check "
                        "(default: %(default)s)")
    add_device(p)
    add_json(p)
    p.set_defaults(func=run)
