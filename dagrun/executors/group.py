"""An executor group: several executors behind one name, chosen per task by the scheduler.

A group is not an Executor: it runs nothing itself.  Its tasks wait in their
own ready queue; when one can start, the scheduler asks ``choose`` for a
member with room for it (every member keeps its own ``max_jobs``, also
against tasks that name it directly) and submits the job there.  The choice
prefers, among members with room, the one that ran most of the task's
dependencies (its inputs are already there: an ``rsync`` or ``http`` stage
sends less, a shared one is warm), then the one with the most free slots,
then the order of ``members``.

A member that loses a job (connection dropped, workers gone) or refuses one
is *down* for the rest of the build: the lost job runs again on another
member, and no new task goes there, unless every member is down (then all
are tried again rather than none).  A member's ``env`` is added to the
environment of the group's tasks that run on it, outside their key
(placement.py says why).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class Group:
    """The members of one ``type = "group"`` executor (or of a task's ``executor = [...]``)."""

    def __init__(self, name: str, members: Iterable[str],
                 envs: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.name = name
        self.members = tuple(members)
        self.envs = {m: dict((envs or {}).get(m) or {}) for m in self.members}
        self.down: set[str] = set()

    def choose(self, room: Mapping[str, int], need: int, near: Iterable[str | None] = ()
               ) -> str | None:
        """The member to run a task that takes ``need`` slots, or None while none has room.

        ``room``: free slots per member; ``near``: the members its dependencies ran on.
        """
        up = [m for m in self.members if m not in self.down] or list(self.members)
        fits = [m for m in up if room.get(m, 0) >= need]
        if not fits:
            return None
        votes: dict[str | None, int] = {}
        for m in near:
            votes[m] = votes.get(m, 0) + 1
        return max(fits, key=lambda m: (votes.get(m, 0), room.get(m, 0),
                                        -self.members.index(m)))

    def has_room(self, room: Mapping[str, int]) -> bool:
        """Whether some member that is up has a free slot."""
        up = [m for m in self.members if m not in self.down] or self.members
        return any(room.get(m, 0) > 0 for m in up)

    def lost(self, member: str) -> None:
        """``member`` lost or refused a job: no new task of the group goes there."""
        if member in self.members:
            self.down.add(member)
            if len(self.down) == len(self.members):
                self.down.clear()  # every member failed once: try them all again

    def env(self, member: str) -> Mapping[str, str]:
        return self.envs.get(member, {})
