"""The results page's picture of where the model looked: Grad-CAM blended over the photo as the model saw it."""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image

from training.imaging import square_pad
from training.inference import Predictor

HEAT_MAP_ALPHA = 0.5  # how strongly the colours cover the photo


def heat_map(predictor: Predictor, image: Image.Image, label: str) -> Image.Image:
    """The square-padded photo with its Grad-CAM for `label` blended over it."""
    cam = predictor.grad_cam(image, label)
    base = square_pad(image, predictor.size)
    cam_img = Image.fromarray(np.uint8(cam * 255)).resize(base.size, Image.BICUBIC)
    coloured = colormaps["jet"](np.asarray(cam_img) / 255.0)[..., :3]
    blend = (1 - HEAT_MAP_ALPHA) * np.asarray(base, dtype=np.float32) / 255.0 + HEAT_MAP_ALPHA * coloured
    return Image.fromarray(np.uint8(np.clip(blend, 0, 1) * 255))
