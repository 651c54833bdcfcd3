"""The training benchmark's "ours" is the recipe's own pipeline: close-ups, rotation and zoom as a run trains with."""
from bench.train import benchmark_stages, ours_dataloaders
from tests.helpers import demo_frame
from training.recipes import load_recipe
from training.views import CloseUp


def test_ours_has_the_recipes_close_ups_rotation_and_zoom(demo_data):
    frame, classes = demo_frame(demo_data)
    recipe = load_recipe("cpu")
    for stage in benchmark_stages(recipe):
        dls = ours_dataloaders(frame, classes, stage, recipe.seed)
        (close_up,) = [t for t in dls.train.after_item.fs if isinstance(t, CloseUp)]
        assert close_up.p == stage.close_ups > 0
        affine = {f.func.__name__: f.keywords for t in dls.train.after_batch.fs for f in getattr(t, "aff_fs", [])}
        assert affine["rotate_mat"]["max_deg"] == stage.max_rotate > 10  # past fastai's default
        assert affine["zoom_mat"]["max_zoom"] == stage.max_zoom > 1.15
        assert dls.train.bs == stage.bs
