"""The fused CPU BatchNorm + ReLU (+ residual) kernel against ATen and a float64 reference.

The first test to need the kernel compiles it (about a minute on 2 cores, once per session
when TORCH_EXTENSIONS_DIR is unset, since the suite redirects the home's caches).
"""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnets import create_model
from resnets.ops import fused_bn_relu
from resnets.ops.fused_bn_relu import batch_norm_relu, fused_bn_relu_enabled, load_extension
from resnets.runtime import Runtime
from resnets.train.engine import train_step

CL = torch.channels_last


@pytest.fixture(scope="module")
def kernel():
    ext = load_extension()
    assert ext is not None, "the fused BN+ReLU extension did not build (see the log)"
    return ext


def activation(shape, dtype, seed, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale + shift).to(dtype).contiguous(memory_format=CL)


def reference(x, residual, weight, bias, running_mean, running_var, grad):
    """relu(batch_norm(x) + residual) and its gradients, in float64 from the same inputs."""
    leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    r = residual.detach().double().requires_grad_() if residual is not None else None
    rm, rv = running_mean.double(), running_var.double()
    y = F.batch_norm(leaves[0], rm, rv, leaves[1], leaves[2], True, 0.1, 1e-5)
    y = F.relu(y if r is None else y + r)
    grads = torch.autograd.grad(y, leaves + ([r] if r is not None else []), grad.double())
    return y, grads, rm, rv


def relative_error(a, b):
    return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


# The vector path at 1, 2 and 4 channel vectors (C = 16, 32, 64 with AVX512) and at any other
# multiple of the vector width (48, 256), the scalar path for the other channel counts (3, 24),
# and a tensor of several parallel chunks.
SHAPES = [(8, 16, 5, 7), (4, 32, 3, 3), (2, 64, 3, 5), (4, 48, 3, 3), (2, 256, 3, 3), (6, 3, 4, 5), (4, 24, 3, 3),
          (64, 16, 8, 8)]


@pytest.mark.parametrize("residual", [False, True], ids=["bn_relu", "bn_add_relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward_and_running_stats_match_float64(kernel, shape, dtype, residual):
    c = shape[1]
    # A mean far from zero relative to the spread: E[x^2] - E[x]^2 would lose digits here.
    x = activation(shape, dtype, 0, scale=2.0, shift=8.0).requires_grad_()
    r = activation(shape, dtype, 1).requires_grad_() if residual else None
    grad = activation(shape, dtype, 2)
    weight = (torch.rand(c, generator=torch.Generator().manual_seed(3)) + 0.5).requires_grad_()
    bias = torch.randn(c, generator=torch.Generator().manual_seed(4)).requires_grad_()
    running_mean, running_var = torch.randn(c), torch.rand(c) + 0.5
    ref_y, ref_grads, ref_rm, ref_rv = reference(x, r, weight, bias, running_mean, running_var, grad)

    y = fused_bn_relu._BatchNormReLU.apply(x, r, weight, bias, running_mean, running_var, 0.1, 1e-5)
    grads = torch.autograd.grad(y, [x, weight, bias] + ([r] if residual else []), grad)

    assert y.dtype == dtype and y.is_contiguous(memory_format=CL)
    # fp32: rounding only. bf16: one rounding of the output / input gradient (2^-8 relative),
    # while weight and bias gradients are fp32 sums.
    tol = 2e-6 if dtype == torch.float32 else 8e-3
    assert relative_error(y, ref_y) < tol
    assert relative_error(grads[0], ref_grads[0]) < tol
    assert relative_error(grads[1], ref_grads[1]) < 1e-5
    assert relative_error(grads[2], ref_grads[2]) < 1e-5
    if residual:
        assert relative_error(grads[3], ref_grads[3]) < tol
    # Running statistics: momentum 0.1, the unbiased variance.
    torch.testing.assert_close(running_mean.double(), ref_rm, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(running_var.double(), ref_rv, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("residual", [False, True], ids=["bn_relu", "bn_add_relu"])
def test_bf16_numerics_at_least_as_good_as_aten(kernel, residual):
    shape = (32, 16, 8, 8)
    x = activation(shape, torch.bfloat16, 0, scale=3.0, shift=1.0).requires_grad_()
    r = activation(shape, torch.bfloat16, 1).requires_grad_() if residual else None
    grad = activation(shape, torch.bfloat16, 2)
    errors = {}
    for fused in (False, True):
        bn, relu = nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        with fused_bn_relu_enabled(fused):
            y = batch_norm_relu(bn, relu, x, r)
        gx = torch.autograd.grad(y, x, grad)[0]
        ref_y, ref_grads, _, _ = reference(x, r, bn.weight, bn.bias, torch.zeros(16), torch.ones(16), grad)
        errors[fused] = (relative_error(y, ref_y), relative_error(gx, ref_grads[0]))
    assert errors[True][0] <= errors[False][0] * 1.25 + 1e-6
    assert errors[True][1] <= errors[False][1] * 1.25 + 1e-6


def test_module_bookkeeping_matches_batchnorm2d(kernel):
    """Through batch_norm_relu: num_batches_tracked counts, momentum=None is a cumulative average."""
    shape = (8, 16, 4, 4)
    for momentum in (0.1, None):
        aten, fused = nn.BatchNorm2d(16, momentum=momentum), nn.BatchNorm2d(16, momentum=momentum)
        for step in range(3):
            x = activation(shape, torch.bfloat16, step, shift=step)
            expected = F.relu(aten(x))
            with fused_bn_relu_enabled():
                y = batch_norm_relu(fused, nn.ReLU(), x)
            torch.testing.assert_close(y, expected, rtol=0.02, atol=0.02)
        assert int(fused.num_batches_tracked) == int(aten.num_batches_tracked) == 3
        torch.testing.assert_close(fused.running_mean, aten.running_mean, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(fused.running_var, aten.running_var, rtol=1e-3, atol=1e-3)


def test_results_do_not_depend_on_the_thread_count(kernel):
    shape = (64, 32, 8, 8)  # several parallel chunks
    x = activation(shape, torch.bfloat16, 0).requires_grad_()
    grad = activation(shape, torch.bfloat16, 1)
    w, b = torch.ones(32, requires_grad=True), torch.zeros(32, requires_grad=True)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            rm, rv = torch.zeros(32), torch.ones(32)
            y = fused_bn_relu._BatchNormReLU.apply(x, None, w, b, rm, rv, 0.1, 1e-5)
            results.append([y, *torch.autograd.grad(y, [x, w, b], grad), rm, rv])
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_outside_the_fused_path_the_modules_run_unchanged(kernel):
    """Evaluation, fp32 and NCHW inputs take exactly the ATen modules, and hooks on BN still fire."""
    bn, relu = nn.BatchNorm2d(16), nn.ReLU(inplace=True)
    seen = []
    bn.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    cases = [("eval", torch.bfloat16, CL), ("train", torch.float32, CL), ("train", torch.bfloat16, torch.contiguous_format)]
    for mode, dtype, layout in cases:
        bn.train(mode == "train")
        x = activation((4, 16, 3, 3), dtype, 0).contiguous(memory_format=layout)
        r = activation((4, 16, 3, 3), dtype, 1)
        expected = nn.BatchNorm2d(16).train(bn.training)  # a copy without the hook
        expected.load_state_dict(bn.state_dict())
        want = F.relu(expected(x) + r)
        with fused_bn_relu_enabled():
            got = batch_norm_relu(bn, relu, x, r)
        assert torch.equal(got, want), (mode, dtype, layout)
        assert torch.equal(bn.running_mean, expected.running_mean)
    assert len(seen) == len(cases)


def test_falls_back_to_aten_once_logged_when_the_build_fails(monkeypatch, caplog):
    def no_compiler():
        raise RuntimeError("Error building extension 'resnets_bn_relu': c++: not found")

    monkeypatch.setattr(fused_bn_relu, "_build", no_compiler)
    monkeypatch.setattr(fused_bn_relu, "_extension", None)
    monkeypatch.setattr(fused_bn_relu, "_unavailable", False)
    bn, relu = nn.BatchNorm2d(16), nn.ReLU()
    x = activation((4, 16, 3, 3), torch.bfloat16, 0).requires_grad_()
    expected = copy.deepcopy(bn)
    with caplog.at_level(logging.WARNING, logger="resnets.ops.fused_bn_relu"), fused_bn_relu_enabled():
        for _ in range(2):
            y = batch_norm_relu(bn, relu, x)
            y.sum().backward()
    assert torch.equal(y, F.relu(expected(x)))
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "not found" in warnings[0].getMessage()


def test_training_with_and_without_the_kernel_gives_close_losses(kernel, monkeypatch):
    calls = []
    apply = fused_bn_relu._BatchNormReLU.apply
    monkeypatch.setattr(fused_bn_relu._BatchNormReLU, "apply", lambda *a: calls.append(1) or apply(*a))
    torch.manual_seed(0)
    model0 = create_model("cifar_resnet8", num_classes=4).to(memory_format=CL)
    x = torch.randn(32, 3, 16, 16).contiguous(memory_format=CL)
    y = torch.randint(0, 4, (32,))
    losses = {}
    # The stem and both BNs of each of the 3 blocks: 7 fused calls per step in bf16 with the
    # switch on; none with it off, and none in fp32 (the switch alone does not change fp32).
    for precision, fused, calls_per_step in (("bf16", False, 0), ("bf16", True, 7), ("fp32", True, 0)):
        model = copy.deepcopy(model0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        runtime = Runtime(torch.device("cpu"), precision, fused_bn_relu=fused)
        calls.clear()
        losses[precision, fused] = [float(train_step(model, opt, x, y, runtime)[0]) for _ in range(8)]
        assert len(calls) == 8 * calls_per_step, (precision, fused)
    fused_losses, aten_losses = losses["bf16", True], losses["bf16", False]
    assert fused_losses[-1] < fused_losses[0]
    for a, b in zip(aten_losses, fused_losses):
        assert abs(a - b) < 0.03 * abs(a) + 0.02, (aten_losses, fused_losses)
    assert fused_bn_relu._enabled.get() is False  # train_step leaves the switch as it found it
