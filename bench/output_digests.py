#!/usr/bin/env python3
"""What digesting outputs after each success costs (issue 19): before and after, side by side.

Two regular (non-editable) installs, ``--before REV`` (default 3210a48, the last commit
without output digests) and the working tree, each in its own venv; PYTHONDONTWRITEBYTECODE
unset.  For each, alternating A B A B:

- a cold build of the generated 10k ``wide`` build (bench/gen.py), -j2;
- a cold build of one task that writes 2 GiB (``head -c``), then reads nothing: the digest
  is taken while the file is still in the page cache (the task just wrote it);
- the no-op after each.

    python bench/output_digests.py [--rounds 3] [--size-mib 2048] [--tasks 10000]

Prints a Markdown table of medians (seconds) and the ratio after/before.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gen  # noqa: E402


def bench_env() -> dict[str, str]:
    """The environment dagrun is measured in: bytecode written (as users run it), no terminal."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["CI"] = "1"
    return env


def venv(where: str, source: str) -> str:
    """A venv with dagrun installed from ``source`` as users install it; its dagrun script."""
    subprocess.run([sys.executable, "-m", "venv", where], check=True)
    pip = os.path.join(where, "bin", "pip")
    subprocess.run([pip, "install", "-q", source], check=True, env=bench_env())
    return os.path.join(where, "bin", "dagrun")


@contextlib.contextmanager
def before_and_after(work: str, before: str) -> Iterator[dict[str, str]]:
    """Regular installs of the git revision ``before`` and of this tree, each in a venv under
    ``work``: {"before": its dagrun script, "after": ...}; the revision's checkout goes at
    the end."""
    src = os.path.join(work, "before-src")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "-q", "--detach", src, before],
                   check=True)
    try:
        yield {
            "before": venv(os.path.join(work, "venv-before"), src),
            "after": venv(os.path.join(work, "venv-after"), ROOT),
        }
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", src])


# dagrun's own CPU time (its threads, not its tasks'): what the digests add, whatever the load
_SELF_CPU = (
    "import os, resource, sys\n"
    "from dagrun.entry import main\n"
    "code = main(sys.argv[1:])\n"
    "r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "os.write(2, b'CPU %f\\n' % (r.ru_utime + r.ru_stime))\n"
    "sys.stdout.flush()\n"
    "os._exit(code)\n"
)


def timed(cmd: list[str], cwd: str) -> tuple[float, float]:
    """(wall seconds, dagrun's own CPU seconds) of ``dagrun ARGS`` (cmd[0]: its script)."""
    env = bench_env()
    python = os.path.join(os.path.dirname(cmd[0]), "python")
    t = time.perf_counter()
    p = subprocess.run([python, "-c", _SELF_CPU, *cmd[1:]], cwd=cwd, env=env,
                       capture_output=True, text=True)
    took = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{cmd} in {cwd} failed: {p.stdout[-2000:]}{p.stderr[-2000:]}")
    cpu = float(p.stderr.rsplit("CPU ", 1)[1].split()[0])
    return took, cpu


def big_project(where: str, mib: int) -> None:
    os.makedirs(where)
    with open(os.path.join(where, "dagrun.toml"), "w") as f:
        f.write(
            '[tasks.big]\n'
            f'cmd = "head -c {mib}M /dev/urandom > big.bin"\n'
            'outputs = ["big.bin"]\n'
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--before", default="3210a48")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--tasks", type=int, default=10000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="dagrun-digests-")
    try:
        with before_and_after(work, args.before) as tools:
            _measure(args, work, tools)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _measure(args: argparse.Namespace, work: str, tools: dict[str, str]) -> None:
    rows: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for n in range(args.rounds):
        for name, dagrun in tools.items():
            # a new folder for every cold build: nothing is deleted while measuring (ext4's
            # inode allocator is slow for minutes after a mass deletion; bench/RESULTS.md)
            project = os.path.join(work, f"wide-{n}-{name}")
            gen.gen(args.tasks, "wide", project, peers=False)
            big = os.path.join(work, f"big-{n}-{name}")
            big_project(big, args.size_mib)
            r = rows.setdefault(name, {})
            r.setdefault(f"cold {args.tasks // 1000}k", []).append(
                timed([dagrun, "build", "-j2", "-q"], project))
            r.setdefault(f"no-op {args.tasks // 1000}k", []).append(
                timed([dagrun, "build", "-j2", "-q"], project))
            r.setdefault(f"cold, one task writing {args.size_mib} MiB", []).append(
                timed([dagrun, "build", "-q"], big))
            r.setdefault(f"no-op, {args.size_mib} MiB output", []).append(
                timed([dagrun, "build", "-q"], big))
            os.unlink(os.path.join(big, "big.bin"))  # one file: no mass deletion
    print("| figure | before: wall / dagrun CPU (s) | after: wall / dagrun CPU (s) "
          "| after / before (wall, CPU) |")
    print("|---|---|---|---|")
    for figure in rows["before"]:
        bw, bc = (statistics.median(x) for x in zip(*rows["before"][figure], strict=True))
        aw, ac = (statistics.median(x) for x in zip(*rows["after"][figure], strict=True))
        print(f"| {figure} | {bw:.3f} / {bc:.3f} | {aw:.3f} / {ac:.3f} "
              f"| {aw / bw:.2f}, {ac / bc:.2f} |")
    print(f"\n(medians of {args.rounds} alternating rounds, -j2)")


if __name__ == "__main__":
    raise SystemExit(main())
