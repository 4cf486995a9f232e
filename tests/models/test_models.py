"""Every listed network: shapes, gradients, state-dict round trips, counts (Tables 1 and 6)."""

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference_nets import randomize_bn

import resnets
from resnets import CheckpointError, count_flops, count_params, create_model, list_models, load_state_dict
from resnets.models import (BasicBlock, Bottleneck, Normalize, ResNet, ZeroPadShortcut, feature_map_sizes, model_spec,
                            network_counts, save_weights)

FIXTURES = Path(__file__).parent / "fixtures"
# ResNet-1202 is 19.4M parameters on 1202 layers: its forward/backward alone would take
# most of the test budget, so it is built and counted (below) but not run here.
RUNNABLE = [n for n in list_models() if not n.endswith("1202")]


def small_input(name: str, batch: int = 2) -> torch.Tensor:
    # The ImageNet nets are fully convolutional up to the global pool: 32x32 still runs every
    # stage (conv5_x at 1x1) at 1/49 of the cost of 224x224.
    return torch.randn(batch, 3, 32, 32)


@pytest.mark.parametrize("name", RUNNABLE)
def test_forward_backward_finite(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    x = small_input(name)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # Every parameter takes part in the computation.
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", RUNNABLE)
def test_state_dict_round_trip(name, tmp_path):
    torch.manual_seed(0)
    a = create_model(name, num_classes=5)
    torch.manual_seed(1)
    b = create_model(name, num_classes=5)
    with torch.no_grad():  # make the BN buffers differ too
        for m in a.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
    path = tmp_path / "w.safetensors"
    save_weights(path, a, {"name": name, "num_classes": 5})
    load_state_dict(b, path)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_plain20", "resnet18", "resnet50"])
def test_round_trip_reproduces_outputs(name, tmp_path):
    torch.manual_seed(0)
    a = create_model(name, num_classes=5).eval()
    b = create_model(name, num_classes=5).eval()
    x = small_input(name)
    assert not torch.allclose(a(x), b(x))
    save_weights(tmp_path / "w.safetensors", a, {"name": name, "num_classes": 5})
    load_state_dict(b, tmp_path / "w.safetensors")
    assert torch.equal(a(x), b(x))


def test_list_models_covers_the_paper():
    names = set(list_models())
    for d in (18, 34, 50, 101, 152):
        assert {f"resnet{d}", f"plain{d}"} <= names
    for d in (20, 32, 44, 56, 110, 1202):
        assert {f"cifar_resnet{d}", f"cifar_plain{d}"} <= names


@pytest.mark.parametrize("name, params", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032),
    ("resnet101", 44_549_160), ("resnet152", 60_192_808),
    ("cifar_resnet20", 269_722), ("cifar_resnet32", 464_154), ("cifar_resnet44", 658_586),
    ("cifar_resnet56", 853_018), ("cifar_resnet110", 1_727_962), ("cifar_resnet1202", 19_421_274),
])
def test_param_counts(name, params):
    with torch.device("meta"):
        model = create_model(name)
    assert count_params(model) == params


@pytest.mark.parametrize("name, gflops", [
    ("resnet18", 1.8), ("resnet34", 3.6), ("resnet50", 3.8), ("resnet101", 7.6), ("resnet152", 11.3),
])
def test_multiply_adds_match_table1(name, gflops):
    with torch.device("meta"):
        model = create_model(name)
    assert count_flops(model, 224) / 1e9 == pytest.approx(gflops, rel=0.02)


def test_v15_stride_placement_costs_more():
    with torch.device("meta"):
        paper = create_model("resnet50")
        v15 = create_model("resnet50", stride_in_1x1=False)
    assert count_params(paper) == count_params(v15)
    assert count_flops(v15) / 1e9 == pytest.approx(4.09, rel=0.01)
    assert paper.layer2[0].conv1.stride == (2, 2) and paper.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)


def plain18_with_odd_layers() -> ResNet:
    # Shapes `count_flops` must follow on its own: a 1x1/2 ceil-mode pooling whose last window
    # would start past the input (torch drops it: 112 -> 56, not 57), a 5x5 whose padding
    # shrinks the map (56 -> 54, so every later map is another size) and a grouped, dilated
    # 3x3. Plain, so no shortcut has to match the shrunk map.
    model = create_model("plain18")
    model.maxpool = torch.nn.MaxPool2d(1, stride=2, ceil_mode=True)
    model.layer1[0].conv1 = torch.nn.Conv2d(64, 64, 5, padding=1, bias=False)
    model.layer2[1].conv2 = torch.nn.Conv2d(128, 128, 3, padding=2, dilation=2, groups=4, bias=False)
    return model


@pytest.mark.parametrize("build, input_size", [
    *[pytest.param(lambda name=name: create_model(name), 224, id=name)
      for name in list_models() if not name.startswith("cifar")],
    pytest.param(lambda: create_model("resnet50", stride_in_1x1=False), (199, 257), id="resnet50-v1.5-199x257"),
    pytest.param(lambda: create_model("resnet18", shortcut="C"), 97, id="resnet18-C-97"),
    pytest.param(lambda: create_model("resnet101", shortcut="A"), 64, id="resnet101-A-64"),
    pytest.param(lambda: ResNet(BasicBlock, (2, 2, 2, 2), stem="imagenet_caffe"), 224, id="caffe-stem-ceil-pool-224"),
    pytest.param(lambda: create_model("cifar_resnet14", shortcut="B"), (33, 45), id="cifar_resnet14-B-33x45"),
    pytest.param(lambda: create_model("cifar_plain8"), 32, id="cifar_plain8"),
    pytest.param(plain18_with_odd_layers, 223, id="plain18-odd-layers-223"),
])
def test_multiply_adds_equal_torch_flop_counter(build, input_size):
    """`count_flops` and `feature_map_sizes` follow the structure by themselves; torch's
    FlopCounterMode on a real (meta) forward is the independent reference (2 FLOPs per
    multiply-add of convolutions and fc), and the shapes that forward produces."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build().eval()
    shapes = {}

    def record(name):
        def hook(module, inputs, output):
            shapes[name] = tuple(output.shape[-2:])
        return hook

    for name, module in {"conv1": model.conv1, "stem": model.maxpool, **{s: getattr(model, s) for s in model.stage_names}}.items():
        module.register_forward_hook(record(name))
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, h, w, device="meta"))
    assert count_flops(model, input_size) == counter.get_total_flops() // 2
    assert feature_map_sizes(model, input_size) == shapes


def test_multiply_adds_refuse_what_they_cannot_follow():
    with torch.device("meta"):
        model = create_model("resnet18")
    model.maxpool = torch.nn.AvgPool2d(3, 2)  # a layer the count does not know would be skipped
    with pytest.raises(TypeError, match="AvgPool2d"):
        count_flops(model)
    with pytest.raises(TypeError, match="Sequential"):
        count_flops(torch.nn.Sequential(model))


def test_network_counts_equal_the_network_built_at_depth():
    """`network_counts` counts from the first network of each kind cut to one block per stage
    and to two in one stage; that equals the network built at its depth (every ImageNet net,
    CIFAR ResNet-56, plain-110 and ResNet-8 here; ResNet-1202 is the paper's 19.4M
    parameters, Sec. 4.2)."""
    names = [n for n in list_models() if model_spec(n).family == "imagenet"]
    for name in names + ["cifar_resnet56", "cifar_plain110", "cifar_resnet8"]:
        with torch.device("meta"):
            model = create_model(name)
        assert network_counts(name) == (count_params(model), count_flops(model, model_spec(name).input_size)), name
    assert round(network_counts("cifar_resnet1202")[0] / 1e6, 1) == 19.4


def test_cifar_flops_grow_linearly_with_depth():
    # Each extra block pair at every stage costs the same: FLOPs are affine in n.
    flops = []
    for n in (1, 2, 3):
        with torch.device("meta"):
            flops.append(count_flops(create_model(f"cifar_resnet{6 * n + 2}"), 32))
    assert flops[2] - flops[1] == flops[1] - flops[0] > 0


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_plain_equals_option_a_params_and_c_b_a_order(depth):
    with torch.device("meta"):
        plain = count_params(create_model(f"plain{depth}"))
        a, b, c = (count_params(create_model(f"resnet{depth}", shortcut=s)) for s in "ABC")
    assert plain == a
    assert c > b > a


@pytest.mark.parametrize("depth", [20, 56])
def test_cifar_plain_and_options(depth):
    with torch.device("meta"):
        plain = count_params(create_model(f"cifar_plain{depth}"))
        a, b, c = (count_params(create_model(f"cifar_resnet{depth}", shortcut=s)) for s in "ABC")
    assert plain == a and c > b > a


def test_shortcut_option_a_is_zero_padded_subsampling():
    shortcut = ZeroPadShortcut(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0
    assert not list(shortcut.parameters())


def reference_forward(model: torch.nn.Module, x: torch.Tensor, option: str, relu_after_add: bool = True) -> torch.Tensor:
    """A CIFAR-stem ResNet in eval mode, written out as functions of its state dict (Sec. 3.2-3.3):
    y = relu(F(x) + shortcut(x)), the shortcut by Table 3's option: A zero-pads the channels of a
    stride-s subsampling where the shape changes, B projects (1x1 conv + BN) there, C everywhere."""
    sd = model.state_dict()

    def bn(h, name):
        return F.batch_norm(h, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], False, 0.0, 1e-5)

    h = F.relu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"))
    blocks = sorted({k.rsplit(".", 2)[0] for k in sd if k.startswith("layer") and ".conv1." in k},
                    key=lambda b: tuple(int(t) for t in b.removeprefix("layer").split(".")))
    for b in blocks:
        stride = 2 if b.endswith(".0") and not b.startswith("layer1.") else 1
        out_channels = sd[f"{b}.conv3.weight" if f"{b}.conv3.weight" in sd else f"{b}.conv2.weight"].shape[0]
        changes = stride != 1 or h.shape[1] != out_channels
        projects = f"{b}.downsample.0.weight" in sd
        assert projects == (option == "C" or (option == "B" and changes)), b
        if projects:
            shortcut = bn(F.conv2d(h, sd[f"{b}.downsample.0.weight"], stride=stride), f"{b}.downsample.1")
        elif changes:  # option A
            sub = h[:, :, ::stride, ::stride]
            shortcut = torch.cat([sub, sub.new_zeros(sub.shape[0], out_channels - sub.shape[1], *sub.shape[2:])], 1)
        else:
            shortcut = h
        if f"{b}.conv3.weight" in sd:  # bottleneck, stride in the first 1x1 (the paper's)
            out = F.relu(bn(F.conv2d(h, sd[f"{b}.conv1.weight"], stride=stride), f"{b}.bn1"))
            out = F.relu(bn(F.conv2d(out, sd[f"{b}.conv2.weight"], padding=1), f"{b}.bn2"))
            out = bn(F.conv2d(out, sd[f"{b}.conv3.weight"]), f"{b}.bn3")
        else:
            out = F.relu(bn(F.conv2d(h, sd[f"{b}.conv1.weight"], stride=stride, padding=1), f"{b}.bn1"))
            out = bn(F.conv2d(out, sd[f"{b}.conv2.weight"], padding=1), f"{b}.bn2")
        h = F.relu(out + shortcut) if relu_after_add else F.relu(out) + shortcut
    return F.linear(h.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


@pytest.mark.parametrize("option", ["A", "B", "C"])
@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
def test_shortcut_options_and_relu_after_the_addition_by_the_numbers(kind, option):
    torch.manual_seed(0)
    if kind == "basic":
        model = create_model("cifar_resnet8", shortcut=option, num_classes=5)  # 16 -> 16, 16 -> 32/2, 32 -> 64/2
    else:
        model = ResNet(Bottleneck, [2, 2], widths=(4, 8), num_classes=5, stem="cifar", shortcut=option)
    randomize_bn(model)  # eval mode, non-trivial statistics: every branch and shortcut matters
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        got = model(x)
        torch.testing.assert_close(got, reference_forward(model, x, option), rtol=1e-4, atol=1e-5)
        # The check can tell the ReLU's place: before the addition the numbers differ.
        assert not torch.allclose(got, reference_forward(model, x, option, relu_after_add=False), atol=1e-3)


def test_plain_blocks_have_no_shortcut():
    plain = create_model("cifar_plain20")
    res = create_model("cifar_resnet20")
    assert all(not b.residual for b in plain.modules() if isinstance(b, BasicBlock))
    assert all(b.residual for b in res.modules() if isinstance(b, BasicBlock))
    # A plain block is relu(F(x)) (Sec. 3.3), nothing added.
    block = randomize_bn(plain.layer1[1])
    x = torch.relu(torch.randn(2, 16, 8, 8))
    with torch.no_grad():
        branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        torch.testing.assert_close(block(x), torch.relu(branch))


def test_plain_is_explicit_and_keeps_the_state_dict_keys():
    # `plain=True`, not `shortcut=None`, builds a plain net; its keys are the residual net's minus projections.
    plain, res = create_model("plain34"), create_model("resnet34")
    assert set(plain.state_dict()) == {k for k in res.state_dict() if ".downsample." not in k}
    assert set(create_model("cifar_plain20").state_dict()) == set(create_model("cifar_resnet20").state_dict())
    assert not any(b.residual for b in ResNet(BasicBlock, [1, 1], widths=(8, 16), plain=True).modules()
                   if isinstance(b, BasicBlock))
    with pytest.raises(ValueError, match="'A', 'B' or 'C'"):
        BasicBlock(8, 16, 2, shortcut=None)


def test_shortcut_defaults_and_placement():
    r50 = create_model("resnet50")
    assert isinstance(r50.layer1[0].downsample, torch.nn.Sequential)  # B: 64 -> 256 projects
    assert r50.layer1[1].downsample is None  # B: identity where the shape is unchanged
    c20 = create_model("cifar_resnet20")
    assert isinstance(c20.layer2[0].downsample, ZeroPadShortcut)  # A by default on CIFAR (Sec. 4.2)
    c_all = create_model("resnet18", shortcut="C")
    assert all(isinstance(b.downsample, torch.nn.Sequential) for b in c_all.modules() if isinstance(b, BasicBlock))


def test_he_init_and_zero_init_residual():
    torch.manual_seed(0)
    model = create_model("resnet50", zero_init_residual=True)
    conv = model.layer3[2].conv2
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in model.modules() if isinstance(b, Bottleneck))
    assert torch.all(create_model("resnet50").layer1[0].bn3.weight == 1)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def test_matches_torchvision_resnet50_keys_and_shapes():
    fixture = json.loads((FIXTURES / "torchvision_resnet50_keys.json").read_text())
    expected = {k: tuple(s) for k, s in fixture["keys"]}
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in create_model("resnet50").state_dict().items()}
    assert ours == expected
    # A torchvision-format state dict with those keys loads strictly.
    model = create_model("resnet50")
    state = {k: torch.zeros(s) if s else torch.tensor(0) for k, s in expected.items()}
    load_state_dict(model, state)


def test_cifar_keys_follow_the_same_scheme():
    keys = create_model("cifar_resnet20").state_dict().keys()
    assert {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer3.2.bn2.running_var", "fc.weight"} <= set(keys)
    assert not any(k.startswith("layer4") for k in keys)
    # Option A adds no keys; option B adds layer2.0.downsample.0/1 as torchvision does.
    assert not any("downsample" in k for k in keys)
    assert "layer2.0.downsample.0.weight" in create_model("cifar_resnet20", shortcut="B").state_dict()


def test_load_state_dict_accepts_wrapper_prefixes_and_names_mismatches(tmp_path):
    src = create_model("cifar_resnet20")
    wrapped = {f"module._orig_mod.{k}": v for k, v in src.state_dict().items()}
    dst = create_model("cifar_resnet20")
    load_state_dict(dst, wrapped)
    assert torch.equal(dst.conv1.weight, src.conv1.weight)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": wrapped}, path)
    load_state_dict(create_model("cifar_resnet20"), path)

    broken = dict(src.state_dict())
    broken.pop("fc.bias")
    broken["classifier.weight"] = broken.pop("fc.weight")  # (`linear` would be read as akamaster's layout)
    with pytest.raises(CheckpointError, match=r"missing keys: fc\.bias, fc\.weight.*unexpected keys: classifier\.weight"):
        load_state_dict(create_model("cifar_resnet20"), broken)
    with pytest.raises(CheckpointError, match=r"shape mismatches: fc\.bias: file \(10,\) vs model \(100,\)"):
        load_state_dict(create_model("cifar_resnet20", num_classes=100), src.state_dict())


def test_corrupt_and_missing_weight_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_state_dict(create_model("cifar_resnet20"), bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(create_model("cifar_resnet20"), tmp_path / "missing.pt")
    pickled = tmp_path / "evil.pt"
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    pickled.write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_state_dict(create_model("cifar_resnet20"), pickled)


def test_weights_file_carries_config_and_normalisation(tmp_path):
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=4)
    model.input_norm = Normalize(torch.rand(3, 32, 32))
    path = tmp_path / "model.safetensors"
    save_weights(path, model, {"name": "cifar_resnet20", "num_classes": 4}, {"val_error": 12.5})
    loaded = create_model("cifar_resnet20", weights=str(path))
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(loaded.eval()(x), model.eval()(x))
    assert resnets.models.read_weights_metadata(path) == {"val_error": 12.5}
    # The normalisation is given to a network when it is built; loading weights never sets it.
    bare = create_model("cifar_resnet20", num_classes=4)
    load_state_dict(bare, path)
    assert bare.input_norm is None and torch.equal(bare.conv1.weight, model.conv1.weight)
    with pytest.raises(CheckpointError, match="cifar_resnet20, not cifar_resnet56"):
        create_model("cifar_resnet56", weights=str(path))


def test_weights_build_their_own_stride_placement_and_warn_when_overridden(tmp_path):
    v15 = create_model("resnet50", stride_in_1x1=False).eval()
    path = tmp_path / "v15.safetensors"
    save_weights(path, v15, {"name": "resnet50", "num_classes": 1000, "stride_in_1x1": False})
    x = torch.rand(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = create_model("resnet50", weights=str(path)).eval()  # builds "v1.5", as recorded
    assert torch.equal(loaded(x), v15(x))
    with pytest.warns(UserWarning, match="computation differs"):
        paper = create_model("resnet50", weights=str(path), stride_in_1x1=True).eval()
    assert not torch.allclose(paper(x), v15(x))


def test_forward_features_returns_stages_and_stops_early():
    model = create_model("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    feats = model.forward_features(x, stages=("stem", "layer3"))
    assert list(feats) == ["stem", "layer3"]
    assert feats["stem"].shape == (1, 64, 16, 16) and feats["layer3"].shape == (1, 256, 4, 4)  # C4: stride 16
    full = model.forward_features(x)
    assert torch.allclose(model.fc(full["layer4"].mean((2, 3))), model(x), atol=1e-5)
    with pytest.raises(ValueError, match="unknown stages"):
        model.forward_features(x, stages=("layer9",))


def test_normalize_resizes_the_mean_image_for_other_scales():
    mean = torch.rand(3, 32, 32)
    norm = Normalize(mean)
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(norm(x), x.float() / 255 - mean)
    assert norm(torch.rand(1, 3, 48, 40)).shape == (1, 3, 48, 40)
    channel = Normalize.channel()
    assert channel.kind == "channel_mean_std"
    assert torch.allclose(channel(torch.ones(1, 3, 2, 2))[0, :, 0, 0],
                          (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))


@pytest.mark.parametrize("bad, message", [
    ("resnet19", "ImageNet depths"), ("cifar_resnet21", "6n\\+2"), ("vgg16", "unknown model"),
])
def test_bad_model_names(bad, message):
    with pytest.raises(ValueError, match=message):
        model_spec(bad)


def test_shortcut_argument_validation():
    with pytest.raises(ValueError, match="plain network"):
        create_model("plain18", shortcut="B")
    with pytest.raises(ValueError, match="'A', 'B' or 'C'"):
        create_model("resnet18", shortcut="D")
    assert create_model("cifar_resnet8").layer1[0].conv1.in_channels == 16  # any 6n+2 depth builds


def test_float_input_outside_unit_range_is_refused_with_what_to_do():
    """Issue 26.3: the networks normalise inside; 0-255 floats and torchvision-normalised tensors
    gave 10% and 30% CIFAR-10 accuracy without a word. In evaluation they are refused."""
    from resnets import DataError
    from resnets.models import Normalize

    model = create_model("cifar_resnet8", input_norm=Normalize(torch.full((3,), 0.5), 0.25)).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    expected = model(images)
    assert torch.allclose(model(images.float() / 255), expected, atol=1e-5)  # [0, 1] floats: the same
    with pytest.raises(DataError, match=r"0-255 pixel values.*normalize_input=False"):
        model(images.float())
    with pytest.raises(DataError, match=r"normalised already.*normalize_input=False"):
        model((images.float() / 255 - 0.485) / 0.229)
    # The switch: the network without its normalisation takes what it is given.
    bare = create_model("cifar_resnet8", weights=None, normalize_input=False).eval()
    assert bare.input_norm is None and bare(torch.randn(1, 3, 32, 32) * 3).shape == (1, 10)
    bare.load_state_dict(model.state_dict())
    normalised = (images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(bare(normalised), expected, atol=1e-5)
    model.train()(images.float())  # training: resnets' own pipelines feed it, nothing checked


def test_the_range_check_costs_no_gpu_sync_per_batch():
    """On a GPU the check reads back only the first evaluation batch (a host sync per batch
    would stall the device); training and meta tensors are never checked."""
    from types import SimpleNamespace

    from resnets.models import Normalize

    norm = Normalize(torch.zeros(3)).eval()
    gpu_batch = SimpleNamespace(is_floating_point=lambda: True, device=torch.device("cuda", 0))
    assert [norm._should_check(gpu_batch) for _ in range(3)] == [True, False, False]
    assert norm._should_check(torch.rand(1, 3, 4, 4)) and norm._should_check(torch.rand(1, 3, 4, 4))
    assert not norm._should_check(torch.rand(1, 3, 4, 4, device="meta"))
    assert not norm.train()._should_check(torch.rand(1, 3, 4, 4))
