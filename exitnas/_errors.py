"""The one error type a user sees.

Anything the user can fix (a bad config key, a missing dataset, an arch outside the
search space, a checkpoint of another space) raises :class:`UserError`. The CLI turns it
into one line on stderr and exit status 2; library callers can catch it like a ValueError.
"""

from __future__ import annotations

__all__ = ["ExitnasWarning", "UserError"]


class UserError(ValueError):
    """An input problem the user can fix; its message is one line: what is wrong, what to do."""


class ExitnasWarning(UserWarning):
    """A setting the user probably did not mean, though the run can go on (the CLI prints one line)."""
