"""The offline ImageNet weights really are ImageNet weights; missing ResNet weights fail with instructions."""
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from training.backbones import WeightsUnavailable, get_backbone, load_lite_classifier, pair_state_dicts
from training.imaging import to_batch

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968}  # espresso, cup


def test_lite0_classifies_known_images_as_imagenet_would():
    model = load_lite_classifier(0)
    spec = get_backbone("efficientnet_lite0")
    images = [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]
    with torch.inference_mode():
        probs = model(to_batch(images, 224, spec.mean, spec.std)).softmax(1)
    cat, coffee = probs.argmax(1).tolist()
    assert cat in CATS
    assert coffee in COFFEE
    assert probs[0, sorted(CATS)].sum() > 0.8


def test_pairing_refuses_any_shape_mismatch():
    target = {"a": torch.zeros(3, 3), "b": torch.zeros(3)}
    with pytest.raises(WeightsUnavailable, match="shapes disagree"):
        pair_state_dicts(target, {"x": torch.zeros(3, 3), "y": torch.zeros(4)})
    with pytest.raises(WeightsUnavailable, match="tensors"):
        pair_state_dicts(target, {"x": torch.zeros(3, 3)})
    paired = pair_state_dicts(target, {"x": torch.ones(3, 3), "y": torch.ones(3), "_fc.weight": torch.ones(1)})
    assert list(paired) == ["a", "b"] and float(paired["a"].sum()) == 9


def test_body_outputs_a_feature_map():
    body = get_backbone("efficientnet_lite0").body(pretrained=False)
    assert body(torch.zeros(1, 3, 64, 64)).shape == (1, 1280, 2, 2)


def test_resnet_without_cached_weights_says_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    tried = []

    def offline(url, dst, *args, **kwargs):  # this machine may have internet; the test is about one that has not
        tried.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailable) as caught:
        get_backbone("resnet34").body(pretrained=True)
    message = str(caught.value)
    assert tried == ["https://download.pytorch.org/models/resnet34-b627a593.pth"]  # the cache was empty, so it tried
    assert "resnet34-b627a593.pth" in message and "no route to host" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "efficientnet_lite0" in message and "--no-pretrained" in message


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(KeyError, match="efficientnet_lite0"):
        get_backbone("vgg16")


def test_stats_match_each_backbone():
    assert get_backbone("efficientnet_lite1").mean == (0.5, 0.5, 0.5)
    assert np.allclose(get_backbone("resnet50").std, (0.229, 0.224, 0.225))
