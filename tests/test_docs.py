"""The reference docs keep up with the code: every manifest key, command and option is
documented, links point inside the repository, and the CI recipe's build step works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from dagrun.cli import parser
from dagrun.completion import describe
from dagrun.manifest import DAGRUN_KEYS, EXECUTOR_KEYS, TASK_KEYS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_every_manifest_key_is_documented() -> None:
    text = (DOCS / "manifest.md").read_text()
    for key in [*DAGRUN_KEYS, *TASK_KEYS, *EXECUTOR_KEYS["local"]]:
        assert f"`{key}`" in text, key
    assert "{ range = [1, 41] }" in text


def test_every_command_and_option_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    options, commands = describe(parser())
    for command in commands:
        assert re.search(rf"^  {command.name}\b", text, re.M), command.name
        for option in command.options:
            assert any(flag in text for flag in option.flags), (command.name, option.flags)
    for option in options:
        assert any(flag in text for flag in option.flags), option.flags
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 130 |"):
        assert code in text
    for state in ("`log`", "`cache`", "`runs/<task>/`", "`last-build.jsonl`", "`lock`"):
        assert state in text


def test_readme_and_docs_link_only_inside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "SPEC" not in readme  # no reference to documents outside the repository
    for name in ("cli.md", "manifest.md", "ci.md", "executors.md"):
        assert f"docs/{name}" in readme
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), (page.name, target)


def ci_workflow() -> dict:
    text = (DOCS / "ci.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None
    return yaml.safe_load(block.group(1))


def test_the_ci_workflow_caches_state_and_uploads_the_junit_report() -> None:
    flow = ci_workflow()
    steps = flow["jobs"]["build"]["steps"]
    uses = {s.get("uses", "").split("@")[0]: s for s in steps}
    assert ".dagrun" in uses["actions/cache"]["with"]["path"].split()
    upload = uses["actions/upload-artifact"]
    assert upload["if"] == "${{ !cancelled() }}"  # also when the build failed
    build = next(s for s in steps if s.get("name") == "Build")
    junit = re.search(r"--junit (\S+)", build["run"])
    assert junit is not None and junit.group(1) in upload["with"]["path"].split()


@pytest.mark.slow
def test_the_ci_build_step_works_as_written(tmp_path: Path) -> None:
    """Run the recipe's build command under GITHUB_ACTIONS=true: the files it uploads exist."""
    steps = ci_workflow()["jobs"]["build"]["steps"]
    build = next(s for s in steps if s.get("name") == "Build")
    (tmp_path / "dagrun.toml").write_text(
        '[tasks.ok]\ncmd = "mkdir -p build && echo ok > build/ok.txt"\noutputs = ["build/ok.txt"]\n'
        '[tasks.bad]\ncmd = "echo broken >&2; exit 1"\n'
    )
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dagrun").write_text(f'#!/bin/sh\nexec {sys.executable} -m dagrun "$@"\n')
    (bindir / "dagrun").chmod(0o755)
    env = dict(os.environ, GITHUB_ACTIONS="true", PATH=f"{bindir}:{os.environ['PATH']}")
    done = subprocess.run(["bash", "-e", "-c", build["run"]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1  # the failed task fails the step
    assert "::error title=dagrun%3A bad failed::FAILED: [code=1] bad%0Abroken" in done.stdout
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    for path in upload["with"]["path"].split():
        assert (tmp_path / path).exists(), path
    suite = ET.parse(tmp_path / "dagrun-junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
