"""The broken-manifest catalogue: each manifests/broken/*.toml, run through the real CLI.

Each file says what it expects in its leading comments:

    # expect: dagrun.toml:7: task 'b', key 'depz': unknown key in [tasks.b] (did you mean 'deps'?)
    # args: build nope        (optional; default: build)
    # schema: invalid         (optional; tests/test_schema.py: the JSON Schema rejects it too)

The file is copied to a fresh folder as dagrun.toml and ``dagrun ARGS`` runs
in-process there: exit status 2 and stderr exactly ``dagrun: error: `` plus the
expected message, with ``dagrun.toml`` standing for the manifest's full path.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest

from dagrun.cli import main

BROKEN = Path(__file__).resolve().parent.parent / "manifests" / "broken"


class Case(NamedTuple):
    path: Path
    expect: str
    args: list[str]
    schema_invalid: bool


def load_case(path: Path) -> Case:
    text = path.read_text()
    expect = re.search(r"^# expect: (.+)$", text, re.M)
    assert expect, f"{path.name} has no '# expect:' line"
    args = re.search(r"^# args: (.+)$", text, re.M)
    return Case(
        path=path,
        expect=expect.group(1),
        args=args.group(1).split() if args else ["build"],
        schema_invalid=re.search(r"^# schema: invalid$", text, re.M) is not None,
    )


CASES = [load_case(p) for p in sorted(BROKEN.glob("*.toml"))]


def test_the_catalogue_covers_every_error_class() -> None:
    names = {c.path.stem for c in CASES}
    for needed in (
        "toml-syntax",
        "unknown-top-level-table",
        "unknown-task-key",
        "wrong-type",
        "missing-cmd",
        "cycle",
        "unknown-dependency",
        "unknown-target",
        "duplicate-output",
        "missing-input",
        "matrix-empty-values",
        "glob-output",
        "unknown-executor",
    ):
        assert needed in names


@pytest.mark.parametrize("case", CASES, ids=[c.path.stem for c in CASES])
def test_broken_manifest_gives_its_message_and_exit_2(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(case.path, tmp_path / "dagrun.toml")
    monkeypatch.chdir(tmp_path)
    code = main(["--progress", "plain", *case.args])
    err = capsys.readouterr().err
    assert err == "dagrun: error: " + case.expect + "\n"  # the file named as the user named it
    assert code == 2
    assert "Traceback" not in err
    assert not (tmp_path / ".dagrun" / "runs").exists()  # nothing ran


@pytest.mark.parametrize("case", CASES, ids=[c.path.stem for c in CASES])
def test_messages_name_the_file_and_a_line_or_the_tasks(case: Case) -> None:
    """Every message starts with the file; a line where TOML gives one, else the tasks involved."""
    assert case.expect.startswith("dagrun.toml")
    with_line = re.match(r"dagrun\.toml:\d+: ", case.expect)
    assert with_line or "cycle" in case.expect or "target" in case.expect, case.expect


def test_the_same_errors_through_load(tmp_path: Path) -> None:
    """The API's load() raises the same message (no CLI prefix) for a manifest-level error."""
    import dagrun

    case = next(c for c in CASES if c.path.stem == "unknown-task-key")
    target = tmp_path / "dagrun.toml"
    shutil.copy(case.path, target)
    with pytest.raises(dagrun.ManifestError) as info:
        dagrun.load(target)
    assert str(info.value) == case.expect.replace("dagrun.toml", str(target), 1)
    assert (info.value.task, info.value.key, info.value.line) == ("b", "depz", 10)
