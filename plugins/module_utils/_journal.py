# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one rollback journal: a module that must undo what a failed run did records each step
with the function that undoes it, and on failure rolls back, newest first.

A journal lives as long as one run: it puts back what that run changed when the run fails with
an error. What a run killed with ``kill -9`` leaves is the business of each module's crash
contract (scratch names, notes and locks, see ``_lock``), not of a journal.

Standard library only, and no Ansible imports: the host tools import this file beside the others.
"""

from __future__ import annotations


class Journal:
    """The undo steps of one run, newest last."""

    def __init__(self):
        self._steps = []

    def record(self, what, undo):
        """Record that *what* (a sentence for the error message) was done; *undo()* takes it back."""
        self._steps.append((what, undo))

    def __len__(self):
        return len(self._steps)

    def __bool__(self):
        return bool(self._steps)

    def forget(self):
        """The run succeeded: nothing is to be undone."""
        self._steps = []

    def rollback(self, errors=(OSError,)):
        """Undo every step, newest first, going on past a step that fails with one of *errors*;
        returns what could not be undone, as ``"undoing WHAT: ERROR"`` messages."""
        left = []
        while self._steps:
            what, undo = self._steps.pop()
            try:
                undo()
            except errors as exc:
                left.append(f"undoing {what}: {exc}")
        return left
