"""Settings: the generated secret key is whole and shared, whoever creates it first; the "not sure" line's override."""
import threading

import pytest

from webapp.settings import development_secret, load_settings


def start_workers_at_once(folder, count: int = 6) -> list[str]:
    """`count` threads read (or create) the key in `folder` at the same instant; their keys."""
    barrier, keys = threading.Barrier(count), []

    def start_worker():
        barrier.wait()
        keys.append(development_secret(folder))

    threads = [threading.Thread(target=start_worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return keys


def test_workers_starting_at_once_all_read_one_complete_key(tmp_path):
    for round_ in range(100):
        folder = tmp_path / f"instance-{round_}"
        keys = start_workers_at_once(folder)
        assert len(set(keys)) == 1 and len(keys[0]) == 64, keys
        assert [p.name for p in folder.iterdir()] == ["secret_key"]  # no temporary file left behind


def test_the_not_sure_override_is_a_probability_and_zero_means_zero(tmp_path):
    def unsure_below(raw):
        env = {"GUITARS_SECRET_KEY": "k"} | ({} if raw is None else {"GUITARS_UNSURE_BELOW": raw})
        return load_settings(env, tmp_path)["UNSURE_BELOW"]

    assert unsure_below(None) is None and unsure_below("") is None  # unset: the model's own line
    assert unsure_below("0") == 0.0 and unsure_below("0.35") == 0.35 and unsure_below("1") == 1.0
    for raw in ("1.5", "-0.1", "nan", "50%"):
        with pytest.raises(ValueError, match="GUITARS_UNSURE_BELOW must be"):
            unsure_below(raw)
