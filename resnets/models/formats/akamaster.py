"""The layout of akamaster/pytorch_resnet_cifar10 checkpoints -> ours (torchvision's names).

That code (the widely used re-implementation of the CIFAR ResNets of Sec. 4.2) names the
classifier `linear` and, for option B, the projection `shortcut`; its option A zero-pads
the new channels of a widening block on *both* sides
(`F.pad(x, (0, 0, 0, 0, planes // 4, planes // 4))`) where ours pads after the identity
channels. Both are option A (Sec. 3.3); permuting each stage's channels makes our network
compute exactly the same function.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import Tensor

from ..resnet import ResNet


def is_akamaster_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """A classifier named `linear` (after wrapper prefixes are stripped) instead of `fc`."""
    return "linear.weight" in state_dict and "fc.weight" not in state_dict


def _cifar_option_a_permutations(model: ResNet) -> list[Tensor]:
    """For each stage: `perm` with our channel k == the akamaster network's channel perm[k].

    akamaster's option A maps input channel i of a widening block to output channel
    i + pad (pad = planes // 4 zeros before, as many after); ours maps i -> i. Later blocks
    of a stage keep positions, so one permutation per stage tensor suffices.
    """
    perms = []
    prev = torch.arange(model.bn1.num_features)
    for name in model.stage_names:
        stage = getattr(model, name)
        c_out = stage[0].bn2.num_features
        if c_out == len(prev):
            perm = prev
        else:
            first = prev + c_out // 4
            taken = set(first.tolist())
            rest = torch.tensor([j for j in range(c_out) if j not in taken], dtype=torch.long)
            perm = torch.cat([first, rest])
        perms.append(perm)
        prev = perm
    return perms


def from_akamaster(state_dict: Mapping[str, Tensor], model: ResNet) -> dict[str, Tensor]:
    """Rename `linear` -> `fc`, `shortcut` -> `downsample`, and undo the symmetric zero padding
    (wrapper prefixes already stripped)."""
    sd = {}
    for key, value in state_dict.items():
        key = re.sub(r"^linear\.", "fc.", key)
        key = key.replace(".shortcut.", ".downsample.")
        sd[key] = value
    if any(".downsample." in k for k in sd):  # option B variant of that code: nothing to permute
        return sd
    prev = torch.arange(model.bn1.num_features)
    for name, perm in zip(model.stage_names, _cifar_option_a_permutations(model)):
        for i in range(len(getattr(model, name))):
            p = f"{name}.{i}."
            if p + "conv1.weight" not in sd:
                continue  # missing keys are reported by load_state_dict
            sd[p + "conv1.weight"] = sd[p + "conv1.weight"][:, prev if i == 0 else perm]
            sd[p + "conv2.weight"] = sd[p + "conv2.weight"][perm]
            for t in ("weight", "bias", "running_mean", "running_var"):
                if p + f"bn2.{t}" in sd:
                    sd[p + f"bn2.{t}"] = sd[p + f"bn2.{t}"][perm]
        prev = perm
    if "fc.weight" in sd:
        sd["fc.weight"] = sd["fc.weight"][:, prev]
    return sd
