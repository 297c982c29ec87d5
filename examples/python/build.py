"""The same pipeline through the Python API, printing each result as it finishes.

Run: python build.py   (from this folder; a second run hands back cached results)
"""

from __future__ import annotations

import os

import pipeline

import dagrun

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    g = dagrun.Graph(root=HERE)
    files = {"glob": "data/*.csv"}
    g.add_task("load", fn=pipeline.load, matrix={"f": files}, args=["{f}"], inputs=["{f}"])
    g.task(deps=["load"])(pipeline.clean)  # the decorator form; the task is named "clean"
    g.add_task("summarise", fn=pipeline.summarise, deps=["clean"])
    g.add_task("report", fn=pipeline.report, kwargs={"path": "build/report-api.md"},
               deps=["summarise"], outputs=["build/report-api.md"])
    for task, value in g.iter_build():
        print(f"{task}: {value!r:.70}")


if __name__ == "__main__":
    main()
