"""`flask predict`: folders and files classified as the API classifies them; unreadable files skipped, never fatal."""
import csv
import io
import json
import shutil

import pytest

from tests.helpers import upload


def test_predict_a_folder_prints_a_table_writes_csv_and_matches_the_api(runner, client, trained_run, demo_data, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(demo_data / "les_paul", folder / "nested")
    (folder / "notes.jpg").write_text("not a photo")
    table = runner.invoke(args=["predict", "--model", str(trained_run), "--csv", str(tmp_path / "out.csv"), str(folder)])
    assert table.exit_code == 0, table.output
    assert "skipped" in table.output and "notes.jpg" in table.output
    photos = sorted((folder / "nested").glob("*.jpg"))
    assert sum(line.startswith(str(folder / "nested")) for line in table.output.splitlines()) == len(photos)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert [r["file"] for r in rows] == [str(p) for p in photos]

    printed = runner.invoke(args=["predict", "--model", str(trained_run), "--json", str(folder)])
    cli = {r["filename"]: r for r in json.loads(printed.output[printed.output.index("{"):])["results"]}
    api = client.post("/api/v1/predict", data={"file": [upload(p.read_bytes(), str(p)) for p in photos[:8]]},
                      content_type="multipart/form-data").json["results"]
    for answer in api:
        mine = cli[str(folder / "nested" / answer["filename"].rsplit("/", 1)[-1])]
        assert [p["label"] for p in mine["predictions"]] == [p["label"] for p in answer["predictions"]]
        assert mine["predictions"][0]["probability"] == pytest.approx(answer["predictions"][0]["probability"], abs=1e-5)
        assert (mine["uncertain"], mine["in_scope"]) == (answer["uncertain"], answer["in_scope"])
        assert float(rows[[r["file"] for r in rows].index(str(folder / "nested" / answer["filename"].rsplit("/", 1)[-1]))]
                     ["probability_1"]) == pytest.approx(answer["predictions"][0]["probability"], abs=1e-5)
