"""Build fastai DataLoaders and Learners for a stage, with the project's shared preprocessing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.callback.core import Callback
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.transforms import IndexSplitter, IntToFloatTensor, Normalize
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
from fastai.metrics import accuracy, error_rate
from fastai.torch_core import params
from fastai.vision.augment import aug_transforms
from fastai.vision.learner import create_head
from fastai.vision.models.unet import model_sizes
from torch import nn

from .backbones import get_backbone
from .imaging import SquarePad, load_rgb
from .recipes import Augmentation
from .views import CloseUp


def image_block() -> TransformBlock:
    """Images decoded by the project's `load_rgb` (EXIF, alpha on white) rather than fastai's default opener."""
    return TransformBlock(type_tfms=load_rgb, batch_tfms=IntToFloatTensor)


class LabelOf:
    """fastai's get_y: a photo's class folder, unless the data owner relabelled it (DATA/labels.csv)."""

    def __init__(self, relabels: dict[str, str]):
        self.relabels = relabels

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> LabelOf:
        """From a split frame's `path` and `label` columns: only the rows whose label differs from their folder."""
        if "label" not in frame:  # a frame of paths alone: every photo is labelled by its folder
            return cls({})
        return cls({path: label for path, label in zip(frame["path"], frame["label"]) if Path(path).parent.name != label})

    def __call__(self, path) -> str:
        return self.relabels.get(str(path), Path(path).parent.name)


def make_dataloaders(frame: pd.DataFrame, classes: list[str], backbone: str, size: int, bs: int,
                     augmentation: Augmentation | None = None, seed: int = 42, device=None, num_workers: int = 0):
    """DataLoaders from a frame of `path` (DATA/<class>/<file>), `label` and `is_valid` columns at one image size."""
    spec = get_backbone(backbone)
    augmentation = augmentation or Augmentation()
    item_tfms, batch_tfms = [SquarePad(size)], []
    if augmentation.enabled:
        # Product photos: rotation, zoom and lighting; guitars are not symmetric but mirror images
        # of a model are still that model, so flips are kept.
        batch_tfms += aug_transforms(**dict(augmentation.fastai), max_lighting=0.2, pad_mode="border")
        if augmentation.close_ups:
            item_tfms.insert(0, CloseUp(augmentation.close_ups))
    batch_tfms.append(Normalize.from_stats(spec.mean, spec.std))
    block = DataBlock(
        blocks=(image_block(), CategoryBlock(vocab=classes)),
        get_y=LabelOf.from_frame(frame),
        splitter=IndexSplitter(np.flatnonzero(frame["is_valid"].to_numpy())),
        item_tfms=item_tfms,
        batch_tfms=batch_tfms,
    )
    # Plain paths as items (not frame rows) so that `learn.predict(path)` works on the exported learner.
    return block.dataloaders([Path(p) for p in frame["path"]], bs=bs, num_workers=num_workers, device=device, seed=seed)


class GuitarModel(nn.Sequential):
    """A pretrained body and a fastai head; `body` and `head` are named so CAM code can reach them."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__(body, head)

    @property
    def body(self) -> nn.Module:
        return self[0]

    @property
    def head(self) -> nn.Module:
        return self[1]


def three_groups(model: GuitarModel):
    """Parameter groups for discriminative learning rates: early body, late body, head."""
    layers = list(model.body.children())
    if len(layers) == 1:  # timm models expose their stages one level down
        layers = list(layers[0].children())
    half = len(layers) // 2
    return [params(nn.Sequential(*layers[:half])), params(nn.Sequential(*layers[half:])), params(model.head)]


def _flatten_timm(body: nn.Module) -> nn.Module:
    """timm EfficientNets keep stem, blocks and head conv as attributes; list them in order for splitting."""
    if hasattr(body, "conv_stem") and hasattr(body, "blocks"):
        parts = [body.conv_stem, body.bn1, *body.blocks, body.conv_head, body.bn2]
        return nn.Sequential(*parts)
    return body


def build_model(backbone: str, n_classes: int, pretrained: bool = True) -> GuitarModel:
    """Pretrained body plus a new fastai head for `n_classes`."""
    body = _flatten_timm(get_backbone(backbone).body(pretrained))
    n_features = model_sizes(body, size=(64, 64))[-1][1]
    head = create_head(n_features, n_classes)
    return GuitarModel(body, head)


class CPUAutocast(Callback):
    """bf16 autocast for the forward pass and loss on CPU (fastai's MixedPrecision is CUDA-only)."""

    order = 10

    def before_batch(self):
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_loss(self):
        self.autocast.__exit__(None, None, None)

    def after_cancel_batch(self):
        self.autocast.__exit__(None, None, None)


def build_learner(dls, backbone: str, pretrained: bool = True, label_smoothing: float = 0.0,
                  model: GuitarModel | None = None) -> Learner:
    """A fastai Learner over `dls`; reuses `model` (progressive resizing) or builds a fresh pretrained one."""
    if model is None:
        model = build_model(backbone, len(dls.vocab), pretrained)
    return Learner(dls, model, loss_func=make_loss(label_smoothing), splitter=three_groups,
                   metrics=[error_rate, accuracy])


def set_trainable(learn: Learner, frozen: bool, frozen_groups: int = 0, train_bn: bool = True) -> None:
    """Freeze what a stage keeps frozen (fastai's `freeze_to`), with a fresh optimizer built for `train_bn`."""
    learn.train_bn = train_bn  # fastai reads it when it builds the optimizer, not when it freezes
    learn.create_opt()
    learn.freeze_to(-1 if frozen else frozen_groups)


def make_loss(label_smoothing: float = 0.0):
    """Cross-entropy, with label smoothing when asked for."""
    return LabelSmoothingCrossEntropyFlat(eps=label_smoothing) if label_smoothing else CrossEntropyLossFlat()
