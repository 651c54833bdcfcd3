"""The promotion gate on real runs: a run trained from random weights is refused with the counts, --force promotes
it and is logged, a better run is accepted; and the gate's rule on given counts."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from scipy.stats import binomtest

from tests.helpers import SMOKE_CLASSES
from tests.model_versions import BETTER_RECIPE, add_run, swapped_run
from training.cli import main
from training.demo import make_demo_dataset
from training.gate import ALPHA, Comparison
from training.versions import read_log, read_pointer


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    """A fixed labelled folder none of the runs trained on: 300 fresh drawings of each smoke class."""
    return make_demo_dataset(tmp_path_factory.mktemp("test-set"), per_class=300, size=96, seed=1,
                             classes=SMOKE_CLASSES, progress=False)


def train(data, out, *options):
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(out), "--no-progress", *options])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def better_run(demo_data, tmp_path_factory):
    """A run clearly better than chance on the drawings (the smoke run is not, reliably)."""
    recipe = tmp_path_factory.mktemp("recipe") / "better.toml"
    recipe.write_text(BETTER_RECIPE)
    return train(demo_data, tmp_path_factory.mktemp("runs") / "better", "--recipe", str(recipe))


@pytest.fixture(scope="module")
def untrained_run(demo_data, tmp_path_factory):
    """The smoke recipe from random weights: about chance, a run worse than `better_run` on the same photos."""
    return train(demo_data, tmp_path_factory.mktemp("runs") / "untrained", "--recipe", "smoke", "--no-pretrained")


def models_cli(*args):
    return CliRunner().invoke(main, ["models", *map(str, args)])


@pytest.mark.slow
def test_a_run_trained_from_random_weights_is_refused_with_the_counts(better_run, untrained_run, test_set, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("USER", "alice")  # getpass reads LOGNAME first
    monkeypatch.setenv("LOGNAME", "alice")
    models = tmp_path / "models"
    add_run(models, "better", better_run)
    add_run(models, "untrained", untrained_run)
    first = models_cli("promote", "better", "--models", models)
    assert first.exit_code == 0 and "Promoted better" in first.output, first.output  # nothing served: no gate

    refused = models_cli("promote", "untrained", "--models", models, "--against", test_set)
    assert refused.exit_code == 1, refused.output
    entry = read_log(models)[-1]
    counts = entry["comparison"]
    assert entry["decision"] == "refused" and entry["operator"] == "alice" and entry["serving"] == "better"
    assert (f"both right {counts['both_right']}, only serving right {counts['only_serving_right']}, only candidate "
            f"right {counts['only_candidate_right']}, both wrong {counts['both_wrong']}") in refused.output
    assert counts["n"] == 900 and counts["only_serving_right"] > counts["only_candidate_right"]
    assert counts["p_value"] < ALPHA and f"p = {counts['p_value']:.3g}" in refused.output
    assert any(reason.startswith("worse beyond chance") for reason in entry["refusals"])
    assert read_pointer(models).current.run == "better"  # still served

    forced = models_cli("promote", "untrained", "--models", models, "--against", test_set,
                        "--force", "demo needs the random-weights model today")
    assert forced.exit_code == 0 and "Overridden (--force): worse beyond chance" in forced.output, forced.output
    entry = read_log(models)[-1]
    assert entry["decision"] == "forced" and entry["operator"] == "alice"
    assert entry["forced"]["reason"] == "demo needs the random-weights model today"
    assert entry["forced"]["overrode"] == entry["refusals"] and entry["comparison"]["n"] == 900
    assert read_pointer(models).current.run == "untrained"

    back = models_cli("rollback", "--models", models)
    assert back.exit_code == 0 and "from untrained to better" in back.output
    assert read_pointer(models).current.run == "better"
    assert [e["decision"] for e in read_log(models)] == ["promoted", "refused", "forced", "rolled back"]
    lines = (models / "promotions.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == read_log(models)  # one whole object a line, appended


@pytest.mark.slow
def test_a_better_run_is_accepted_and_the_worse_refused(better_run, test_set, tmp_path):
    models = tmp_path / "models"
    add_run(models, "better", better_run)
    swapped_run(models, "swapped", better_run)  # same detector; right only where `better` answered the previous class
    assert models_cli("promote", "swapped", "--models", models).exit_code == 0

    accepted = models_cli("promote", "better", "--models", models, "--against", test_set)
    assert accepted.exit_code == 0 and "Promoted better (was swapped)" in accepted.output, accepted.output
    entry = read_log(models)[-1]
    counts = entry["comparison"]
    assert entry["decision"] == "promoted" and entry["refusals"] == [] and entry["forced"] is None
    assert counts["both_right"] == 0 and counts["candidate_accuracy"] > counts["serving_accuracy"]
    assert read_pointer(models).current.run == "better"

    refused = models_cli("promote", "swapped", "--models", models, "--against", test_set)
    assert refused.exit_code == 1 and "Refused: worse beyond chance" in refused.output, refused.output
    assert read_pointer(models).current.run == "better"


def comparison(right=(50, 0, 0, 50), rejected=(0, 0, 0)) -> Comparison:
    return Comparison(*right, *rejected, unknown_classes={}, unreadable=0)


def test_the_rule_refuses_worse_beyond_chance_and_far_more_rejected():
    assert comparison((50, 12, 3, 35)).p_value == pytest.approx(binomtest(12, 15, 0.5).pvalue)
    assert comparison((50, 12, 3, 35)).refusals()[0].startswith("worse beyond chance")  # p = 0.035
    assert comparison((50, 10, 4, 36)).refusals() == []  # worse, but within chance (p = 0.18)
    assert comparison((50, 3, 12, 35)).refusals() == []  # better beyond chance
    assert comparison((50, 0, 0, 50)).p_value == 1.0  # no discordant photo
    # 10 of 100 more rejected, beyond chance: refused; within 5 points, or by chance alone: not.
    assert comparison(rejected=(5, 0, 10)).refusals()[0].startswith("rejects far more as out of scope")
    assert comparison(rejected=(5, 0, 4)).refusals() == []  # 4 points more, even if beyond chance
    assert comparison(rejected=(5, 4, 10)).refusals() == []  # 6 points more, but p = 0.18
