"""fdn.atomic: writes that a reader never sees half of, and read-change-write under a lock."""

import json
import multiprocessing

import pytest

from fdn.atomic import update_json


def _count(path: str, key: str, times: int, start) -> None:
    start.wait()  # both at once, so that their read-change-writes interleave
    for _ in range(times):
        update_json(path, lambda data: data.__setitem__(key, data.get(key, 0) + 1))


def test_update_json_creates_then_changes_only_what_it_is_told(tmp_path):
    path = tmp_path / "table.json"
    assert update_json(path, lambda data: data.update(a=1)) == {"a": 1}
    assert update_json(path, lambda data: data.update(b=2)) == {"a": 1, "b": 2}
    assert json.loads(path.read_text()) == {"a": 1, "b": 2}


def test_two_processes_updating_their_own_keys_both_keep_every_change(tmp_path):
    path = str(tmp_path / "table.json")
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=_count, args=(path, key, 200, start)) for key in "xy"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert json.loads((tmp_path / "table.json").read_text()) == {"x": 200, "y": 200}


def test_a_change_that_fails_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "table.json"
    update_json(path, lambda data: data.update(a=1))

    def fail(data):
        data["a"] = 2
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        update_json(path, fail)
    assert json.loads(path.read_text()) == {"a": 1}
