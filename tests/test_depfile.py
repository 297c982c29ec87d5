"""The depfile parser: Makefile syntax as gcc -MD/-MMD/-MP and clang write it."""

from __future__ import annotations

import pytest

from dagrun import depfile
from dagrun.errors import DepfileError


def test_continuations_escapes_and_phony_rules():
    text = (
        "build/a.o build/a.d: src/a.c src/a.h \\\n"
        " src/with\\ space.h src/cost$$.h src/hash\\#.h \\\n"
        "  /usr/include/stdio.h\n"
        "src/a.h:\n"
        "\n"
        "src/with\\ space.h:\n"
    )
    assert depfile.parse(text) == [
        "src/a.c", "src/a.h", "src/with space.h", "src/cost$.h", "src/hash#.h",
        "/usr/include/stdio.h",
    ]


def test_windows_line_ends_and_a_rule_without_prerequisites():
    assert depfile.parse("a.o: a.c \\\r\n b.h\r\n") == ["a.c", "b.h"]
    assert depfile.parse("a.o:\n") == []


@pytest.mark.parametrize("text", ["", "\n\n", "just words here\n", ": a.c\n"])
def test_malformed(text):
    with pytest.raises(DepfileError):
        depfile.parse(text)


def test_discovered_paths_are_project_relative_without_system_or_declared_files(tmp_path):
    root = str(tmp_path)
    found = depfile.discovered(
        ["a.c", "../include/x.h", "/usr/include/stdio.h", f"{root}/sub/y.h", "./z.h"],
        cwd="sub", root=root, declared=["sub/a.c"],
    )
    assert found == ("include/x.h", "sub/y.h", "sub/z.h")


def test_read_a_missing_file(tmp_path):
    with pytest.raises(DepfileError, match="does not exist"):
        depfile.read(str(tmp_path / "nope.d"))
