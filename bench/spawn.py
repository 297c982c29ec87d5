#!/usr/bin/env python3
"""The physical limit: run commands.txt with N at once and no build logic at all.

usage: python bench/spawn.py [-j N] [--shell] [commands.txt]

Each line is one command, started in file order as soon as a slot is free.
By default the command's words are exec'd directly (as make and dagrun do for
commands without shell syntax); ``--shell`` runs every line as ``sh -c LINE``
(as ninja does).  No dependency order, no up-to-date check, no log: what is
left is the price of starting processes, which no build tool can go below.
"""

from __future__ import annotations

import argparse
import os
import sys


def run(commands: list[str], jobs: int, shell: bool) -> int:
    env = dict(os.environ)
    running = 0
    failed = 0
    for line in commands:
        if running >= jobs:
            _, status = os.wait()
            running -= 1
            failed += status != 0
        argv = ["/bin/sh", "-c", line] if shell else line.split()
        os.posix_spawnp(argv[0], argv, env)
        running += 1
    while running:
        _, status = os.wait()
        running -= 1
        failed += status != 0
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-j", type=int, default=2, dest="jobs")
    ap.add_argument("--shell", action="store_true", help="run each line with sh -c")
    ap.add_argument("file", nargs="?", default="commands.txt")
    a = ap.parse_args(argv)
    with open(a.file, encoding="utf-8") as f:
        commands = [line.rstrip("\n") for line in f if line.strip()]
    failed = run(commands, max(1, a.jobs), a.shell)
    if failed:
        sys.stderr.write(f"spawn: {failed} command(s) failed\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
