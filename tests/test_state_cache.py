"""The state cache: a few marshal blobs, the graph's written back as read; damage = no cache."""

from __future__ import annotations

import io
import os

import pytest

from dagrun.state import cache as state_cache


def test_parts_round_trip_and_an_unchanged_graph_is_not_dumped_again():
    data = {"version": 5, "graph": (3, ["a"]), "stats": {"x": (1, 2)}, "keys": {"t": "k"},
            "log": ()}
    f = io.BytesIO()
    state_cache.dump(data, f, None)
    loaded, blob = state_cache.loads(f.getvalue())
    assert loaded == data
    assert blob is not None and blob[0] is loaded["graph"]
    marker = (blob[0], b"\x00not marshal")  # proves the blob is copied, not re-dumped
    out = io.BytesIO()
    state_cache.dump(loaded, out, marker)
    assert b"\x00not marshal" in out.getvalue()


def test_a_graph_in_pieces_round_trips_and_is_written_back_piece_by_piece():
    pieces = [(6, "head"), None, [(), (0,)], {}, ["a", "b"], ["x y", "z"], ("same",)]
    data = {"version": 7, "graph": pieces, "stats": {"p": (1, 2, 3, 4, "d", True)},
            "keys": {"a": "k"}, "log": ()}
    f = io.BytesIO()
    state_cache.dump(data, f, None)
    loaded, blob = state_cache.loads(f.getvalue())
    assert loaded == data
    assert blob is not None and blob[0] is loaded["graph"] and len(blob[1]) == len(pieces)
    again = io.BytesIO()
    state_cache.dump(loaded, again, blob)
    assert again.getvalue() == f.getvalue()
    raw = f.getvalue()
    for pos in range(0, len(raw), 3):
        damaged = bytearray(raw)
        damaged[pos] ^= 0x10
        assert state_cache.loads(bytes(damaged))[0] is None, pos


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -1])
def test_a_damaged_cache_is_no_cache(keep):
    f = io.BytesIO()
    state_cache.dump({"version": 5, "graph": ("g",) * 50, "stats": {}, "keys": {}}, f, None)
    raw = f.getvalue()
    damaged = raw[: int(len(raw) * keep)] if keep > 0 else raw + b"\xff"
    try:
        loaded, _ = state_cache.loads(damaged)
    except (EOFError, ValueError, TypeError):
        loaded = None  # what _load_cache turns into "no cache"
    assert loaded is None


def test_builds_survive_a_damaged_cache_file(project):
    project.manifest('[tasks.a]\ncmd = "echo hi > out.txt"\noutputs = ["out.txt"]\n')
    assert project.run("build").code == 0
    cache = project.root / ".dagrun" / "cache"
    cache.write_bytes(cache.read_bytes()[:-7])
    os.unlink(project.root / ".dagrun" / "fresh")
    run = project.run("build")
    assert (run.code, run.out) == (0, "dagrun: no work to do (1 up to date)\n")
    assert state_cache.loads(cache.read_bytes())[0] is not None  # rewritten whole
