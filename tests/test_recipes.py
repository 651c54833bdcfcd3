"""Recipes are data: the shipped ones parse, the blog's is exact, bad files say what is wrong."""
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import demo_frame
from training.recipes import RecipeError, available_recipes, load_recipe, parse_recipe
from training.stage import stage_dataloaders

GOOD_STAGE = 'backbone = "efficientnet_lite0"\nfrozen = true\nepochs = 1\nlr = 1e-3\n'
FIND_STAGE = GOOD_STAGE.replace("lr = 1e-3", 'lr = "find"')
FAST_STAGE = GOOD_STAGE.replace("lr = 1e-3", 'lr = "fast"')


def test_shipped_recipes_parse():
    assert {"blog", "cpu", "smoke", "demo"} <= set(available_recipes())
    for name in available_recipes():
        assert load_recipe(name).stages


def test_blog_recipe_is_the_blogs_six_stages_and_keeps_its_old_name():
    assert load_recipe("seed") == load_recipe("blog")
    stages = load_recipe("blog").stages
    shape = [(s.backbone, s.size, s.bs, s.frozen, s.epochs, s.lr) for s in stages]
    assert shape == [
        ("resnet34", 224, 64, True, 5, 1e-2),
        ("resnet34", 224, 64, False, 5, (1e-6, 2e-3)),
        ("resnet50", 224, 32, True, 5, 1e-2),
        ("resnet50", 224, 32, False, 5, (1e-6, 1e-2 / 5)),
        ("resnet50", 448, 16, True, 5, 1e-3),
        ("resnet50", 448, 16, False, 5, (1e-6, 1e-3 / 5)),
    ]
    assert isinstance(stages[1].lr_for_fit(), slice)


def test_cpu_recipe_adapts_the_whole_body_small_then_the_later_blocks_large():
    first, whole, *larger = load_recipe("cpu").stages
    assert first.frozen and not first.train_bn
    assert not whole.frozen and whole.frozen_groups == 0 and whole.size == first.size
    assert larger and all(not s.frozen and s.frozen_groups == 1 and not s.train_bn for s in larger)
    assert [s.size for s in larger] == sorted(s.size for s in larger) and larger[0].size > whole.size


def test_cpu_recipe_teaches_close_ups_and_turned_and_zoomed_photos_in_every_stage():
    stages = load_recipe("cpu").stages
    assert all(stage.close_ups == 0.3 and stage.max_rotate == 30 and stage.max_zoom == 1.7 for stage in stages)
    smoke = load_recipe("smoke").stages[0]
    assert (smoke.close_ups, smoke.max_rotate, smoke.max_zoom, smoke.max_warp) == (0, 10, 1.15, 0.1)


def test_cpu_recipe_plans_its_stages_into_the_hour():
    recipe = load_recipe("cpu")
    assert recipe.budget_minutes < 60
    # the head is trained as written; the 160-px epochs and the 224-px stage give way on a slow machine
    assert [s.epochs for s in recipe.stages] == [1, (1, 3), (0, 1), (1, 8)]


def test_an_elastic_last_stage_takes_a_range_of_epochs_within_the_budget():
    text = (f"budget_minutes = 55\n[[stages]]\nname = 'a'\nsize = 160\n{GOOD_STAGE}"
            f"[[stages]]\nsize = 288\n{GOOD_STAGE.replace('epochs = 1', 'epochs = [1, 4]')}")
    recipe = parse_recipe(text, "x")
    assert recipe.budget_minutes == 55
    assert [s.elastic for s in recipe.stages] == [False, True] and recipe.stages[1].epochs == (1, 4)
    assert [s.max_epochs for s in recipe.stages] == [1, 4]
    # Its epoch time is measured when it starts, so it may differ from the stage before in every way, or be alone.
    alone = parse_recipe(f"budget_minutes = 5\n[[stages]]\n{GOOD_STAGE.replace('epochs = 1', 'epochs = [2, 3]')}", "x")
    assert alone.stages[0].elastic and alone.stages[0].epochs == (2, 3)


def test_lr_find_is_accepted():
    recipe = parse_recipe("[[stages]]\n" + FIND_STAGE, "x")
    assert recipe.stages[0].lr == "find" and recipe.stages[0].lr_for_fit(0.01) == 0.01


@pytest.mark.parametrize("text, message", [
    ("[[stages]\n", "not valid TOML"),
    ("description = 'x'\n", "at least one"),
    (f"[[stages]]\n{GOOD_STAGE}colour = 'red'\n", "unknown keys"),
    (f"[[stages]]\n{GOOD_STAGE.replace('efficientnet_lite0', 'vgg')}", "unknown backbone"),
    (f"[[stages]]\n{GOOD_STAGE.replace('lr = 1e-3', 'lr = [1e-3]')}", r"\[low, high\]"),
    (f"[[stages]]\n{GOOD_STAGE.replace('lr = 1e-3', 'lr = [1e-2, 1e-4]')}", "low <= high"),
    ("[[stages]]\n" + FAST_STAGE, "lr must be"),
    (f"[[stages]]\n{GOOD_STAGE.replace('epochs = 1', 'epochs = 0')}", "epochs"),
    (f"[[stages]]\n{GOOD_STAGE.replace('frozen = true', 'frozen = 1')}", "frozen"),
    ("[[stages]]\nbackbone = 'resnet34'\n", "missing keys"),
    (f"[[stages]]\n{GOOD_STAGE}frozen_groups = 1\n", "only applies to unfrozen"),
    (f"[[stages]]\n{GOOD_STAGE.replace('true', 'false')}frozen_groups = 2\n", "frozen_groups"),
    (f"[[stages]]\n{GOOD_STAGE}close_ups = 1.5\n", "close_ups"),
    (f"[[stages]]\n{GOOD_STAGE}max_rotate = -5\n", "max_rotate"),
    (f"[[stages]]\n{GOOD_STAGE}max_zoom = 0.5\n", "max_zoom"),
    (f"[[stages]]\n{GOOD_STAGE}max_warp = 1.5\n", "max_warp"),
    (f"[[stages]]\n{GOOD_STAGE}train_bn = 'no'\n", "train_bn"),
    (f"valid_pct = 2\n[[stages]]\n{GOOD_STAGE}", "valid_pct"),
    (f"[[stages]]\n{GOOD_STAGE.replace('epochs = 1', 'epochs = [3, 2]')}", "low <= high"),
    (f"[[stages]]\n{GOOD_STAGE}[[stages]]\n{GOOD_STAGE.replace('epochs = 1', 'epochs = [1, 3]')}", "budget_minutes"),
    (f"budget_minutes = 30\n[[stages]]\nname = 'a'\n{GOOD_STAGE.replace('epochs = 1', 'epochs = [0, 3]')}"
     f"[[stages]]\n{GOOD_STAGE}", "only a middle stage may be dropped"),
    (f"budget_minutes = 30\n[[stages]]\nname = 'a'\n{GOOD_STAGE}"
     f"[[stages]]\n{GOOD_STAGE.replace('epochs = 1', 'epochs = [0, 3]')}", "only a middle stage may be dropped"),
    (f"budget_minutes = 30\n[[stages]]\nname = 'a'\n{GOOD_STAGE}"
     f"[[stages]]\n{GOOD_STAGE.replace('epochs = 1', 'epochs = [0, 0]')}", "never trains"),
    (f"budget_minutes = 0\n[[stages]]\n{GOOD_STAGE}", "budget_minutes"),
])
def test_bad_recipes_say_what_is_wrong(text, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(text, "bad", "bad.toml")


def test_unknown_recipe_name_lists_the_shipped_ones():
    with pytest.raises(RecipeError, match="smoke"):
        load_recipe("turbo")


def test_a_stages_turn_zoom_and_warp_reach_fastais_transforms(demo_data):
    stage = parse_recipe(f"[[stages]]\n{GOOD_STAGE}max_rotate = 25\nmax_zoom = 1.6\nmax_warp = 0.35\n", "t").stages[0]
    frame, classes = demo_frame(demo_data)
    run = SimpleNamespace(frame=frame, scan=SimpleNamespace(classes=classes), recipe=SimpleNamespace(seed=0),
                          device=torch.device("cpu"))
    affine = next(tfm for tfm in stage_dataloaders(run, stage).after_batch if getattr(tfm, "coord_fs", None))
    assert affine.coord_fs[0].magnitude == 0.35
    drawn = {fn.func.__name__: fn.keywords for fn in affine.aff_fs}
    assert drawn["rotate_mat"]["max_deg"] == 25 and drawn["zoom_mat"]["max_zoom"] == 1.6


def test_every_bounded_key_is_checked_and_every_fastai_key_is_an_aug_transforms_keyword():
    import inspect
    from dataclasses import fields

    from fastai.vision.augment import aug_transforms

    from training.recipes import Stage

    keywords = inspect.signature(aug_transforms).parameters
    bounded = [f for f in fields(Stage) if "bounds" in f.metadata]
    assert {f.name for f in bounded} >= {"bs", "close_ups", "max_rotate", "max_zoom", "max_warp", "frozen_groups"}
    for f in bounded:
        low, high = f.metadata["bounds"]
        with pytest.raises(RecipeError, match=f.name):
            parse_recipe(f"[[stages]]\n{GOOD_STAGE}{f.name} = {high + 1}\n", "t")
        if f.metadata["fastai"]:
            assert f.name in keywords, f"{f.name} is no aug_transforms keyword"
