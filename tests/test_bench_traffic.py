"""The benchmark's traffic mixes: the blend keeps its stated shares and interleaves them as traffic would arrive."""
from pathlib import Path

from bench.traffic import BLEND, blend, round_robin


def test_the_blend_has_its_shares_spread_through_the_requests():
    mixes = {name: [Path(f"{name}-{k}.jpg") for k in range(10)] for name in BLEND}
    requests = blend(mixes, 40)
    kinds = [path.stem.rsplit("-", 1)[0] for path in requests]
    assert {kind: kinds.count(kind) for kind in BLEND} == {"easy": 24, "hard": 10, "out-of-scope": 6}
    # every quarter of the requests holds some of each kind, not one block after another
    for quarter in range(4):
        assert set(kinds[quarter * 10:(quarter + 1) * 10]) == set(BLEND)


def test_a_missing_mix_is_left_out_of_the_blend():
    requests = blend({"easy": [Path("a.jpg")], "hard": [], "out-of-scope": [Path("o.jpg")]}, 20)
    assert {path.name for path in requests} == {"a.jpg", "o.jpg"} and len(requests) == 15


def test_round_robin_takes_one_photo_per_class_in_turn(tmp_path):
    paths = [tmp_path / cls / f"{k}.jpg" for cls in ("b", "a") for k in range(3)] + [tmp_path / "a" / "3.jpg"]
    order = round_robin(tmp_path, paths)
    assert [p.parent.name for p in order] == ["a", "b", "a", "b", "a", "b", "a"]


def test_serving_measures_both_apps_back_to_back_in_alternating_order():
    from bench.serve import interleaved

    order = interleaved(["easy", "hard"], [1, 16], ("ours", "baseline"))
    assert [(mix, level) for mix, level, _ in order] == [("easy", 1), ("easy", 16), ("hard", 1), ("hard", 16)]
    assert [apps for _, _, apps in order] == [("ours", "baseline"), ("baseline", "ours")] * 2
