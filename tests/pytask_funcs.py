"""Module-level functions for tests/test_pytasks.py's API tests (workers import them by name)."""

from __future__ import annotations

import asyncio
import os


def numbers(n: int) -> list[int]:
    return list(range(n))


def evens(numbers: list[int]) -> list[int]:
    return [x for x in numbers if x % 2 == 0]


async def total(evens: list[int], scale: int = 1) -> int:
    await asyncio.sleep(0)
    return sum(evens) * scale


def everything(deps: dict[str, object]) -> list[str]:
    return sorted(deps)


def pinned() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def unpicklable() -> object:
    return lambda: None
