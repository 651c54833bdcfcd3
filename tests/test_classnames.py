"""Human class names: derived from the folder ids, overridable by DATA/classes.toml, shown on pages and in the API."""
import shutil

import pytest

from tests.helpers import upload
from training.classnames import ClassNamesError, class_names, default_name
from training.dataset import scan_dataset


@pytest.mark.parametrize("class_id, name", [
    ("gibson_Flying_V", "Gibson Flying V"), ("fender_stratocaster", "Fender Stratocaster"), ("gibson_ES", "Gibson ES"),
    ("les-paul", "Les Paul"), ("SG", "SG"),
])
def test_a_folder_id_reads_as_words(class_id, name):
    assert default_name(class_id) == name


def test_classes_toml_overrides_some_names_and_refuses_unknown_ids(tmp_path, demo_data):
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    (data / "classes.toml").write_text('les_paul = "Gibson Les Paul"\n')
    assert scan_dataset(data, progress=False).names == {
        "flying_v": "Flying V", "les_paul": "Gibson Les Paul", "stratocaster": "Stratocaster"}
    (data / "classes.toml").write_text('banjo = "Banjo"\n')
    with pytest.raises(ClassNamesError, match="banjo"):
        class_names(data, ["les_paul"])
    (data / "classes.toml").write_text('les_paul = \n')
    with pytest.raises(ClassNamesError, match="not valid TOML"):
        class_names(data, ["les_paul"])


def test_the_api_and_pages_show_names_and_keep_ids(client, demo_data):
    photo = next((demo_data / "flying_v").glob("*.jpg")).read_bytes()
    body = client.post("/api/v1/predict", data={"file": upload(photo, "v.jpg")}, content_type="multipart/form-data").json
    for prediction in body["results"][0]["predictions"]:
        assert prediction["name"] == default_name(prediction["label"])
    assert client.get("/api/v1/model").json["names"]["flying_v"] == "Flying V"
    page = client.post("/predict", data={"file": upload(photo, "v.jpg")}, content_type="multipart/form-data")
    assert b"Flying V" in page.data and b"<th title=\"flying_v\">" in page.data
    assert b"Flying V" in client.get("/model").data
