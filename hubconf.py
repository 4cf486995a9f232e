"""torch.hub entry points: one per network of `resnets models`, each taking `weights=`.

    model = torch.hub.load("OWNER/resnets", "resnet50", weights="torchvision-imagenet1k-v1")
    model = torch.hub.load("path/to/resnets", "cifar_resnet56", source="local", weights="cifar10-jpeg")

`weights` is a tag of `resnets.models.pretrained`, a weights file, or None (untrained);
the other keywords are those of `resnets.create_model`. The network normalises its own
input (uint8 images, or floats in [0, 1]).
"""

from resnets.models import create_model as _create_model
from resnets.models import list_models as _list_models
from resnets.models.pretrained import tags_for as _tags_for

dependencies = ["torch", "numpy", "PIL", "yaml", "safetensors", "tqdm"]


def _entry(name: str):
    def entry(weights=None, **kwargs):
        return _create_model(name, weights=weights, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    tags = ", ".join(_tags_for(name)) or "none yet"
    entry.__doc__ = f"{name} (resnets); weights= a tag ({tags}), a weights file, or None."
    return entry


# Generated from the model list so the entries and `resnets models` never disagree.
globals().update({_name: _entry(_name) for _name in _list_models()})
