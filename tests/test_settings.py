"""Settings: the generated secret key is whole and shared, whoever creates it first."""
import threading

from webapp.settings import development_secret


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
