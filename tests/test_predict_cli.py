"""`flask predict`: folders and files classified as the API classifies them; unreadable files skipped, never fatal."""
import csv
import io
import json
import shutil

import pytest

from tests.helpers import upload


def test_predict_a_folder_prints_a_table_writes_csv_and_matches_the_api(runner, client, trained_run, demo_data, tmp_path):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    drawn = sorted(demo_data.rglob("*.jpg"))
    for k in range(100):  # a folder of 100 photos, half of them in a sub-folder
        shutil.copyfile(drawn[k % len(drawn)], (folder / "nested" if k % 2 else folder) / f"{k:03d}.jpg")
    (folder / "notes.jpg").write_text("not a photo")
    table = runner.invoke(args=["predict", "--model", str(trained_run), "--csv", str(tmp_path / "out.csv"), str(folder)])
    assert table.exit_code == 0, table.output
    assert "skipped" in table.output and "notes.jpg" in table.output
    photos = sorted(folder.rglob("[0-9]*.jpg"))
    assert len(photos) == 100
    assert sum(line.startswith(str(folder)) for line in table.output.splitlines()) == 100
    rows = {r["file"]: r for r in csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text()))}
    assert sorted(rows) == sorted(str(p) for p in photos)

    printed = runner.invoke(args=["predict", "--model", str(trained_run), "--json", str(folder)])
    cli = {r["filename"]: r for r in json.loads(printed.output[printed.output.index("{"):])["results"]}
    for start in range(0, 100, 8):  # the API takes 8 photos a request
        batch = photos[start:start + 8]
        api = client.post("/api/v1/predict", data={"file": [upload(p.read_bytes(), p.name) for p in batch]},
                          content_type="multipart/form-data").json["results"]
        for path, answer in zip(batch, api):
            mine = cli[str(path)]
            assert [(p["label"], p["name"]) for p in mine["predictions"]] == \
                [(p["label"], p["name"]) for p in answer["predictions"]]
            assert mine["predictions"][0]["probability"] == pytest.approx(answer["predictions"][0]["probability"],
                                                                          abs=1e-5)
            assert (mine["uncertain"], mine["in_scope"]) == (answer["uncertain"], answer["in_scope"])
            assert mine["scope_score"] == pytest.approx(answer["scope_score"], abs=1e-4)
            assert float(rows[str(path)]["probability_1"]) == pytest.approx(answer["predictions"][0]["probability"],
                                                                             abs=1e-5)
