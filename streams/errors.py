"""livetag's error family: every exception livetag raises for people to read derives from
:class:`LivetagError`, through the one kind that says who has to act.

- :class:`BadInputError`: what was given is wrong (a malformed record, message, token,
  file, setting or argument); the one who gave it fixes it.
- :class:`RefusedError`: understood, and refused by a rule (a withdrawn link, a session
  already over, a take already running, a limit).
- :class:`UnavailableError`: something livetag needs is not there or not answering (the
  broker, a model file, a port, a package registry); trying again later, or providing
  it, may help.
- :class:`InternalError`: livetag itself broke (a bug, or a dependency it no longer fits).

The command line turns the kinds into exit statuses (infra/cli.py, docs/command-line.md).
The concrete classes keep the builtin base their callers catch as well (e.g.
``class RecordError(BadInputError, ValueError)``), so that ``except ValueError`` goes on
catching them.

This module sits at the ground of the import graph: it imports nothing of livetag's, so
that every module, streams/records.py included, can use it.
"""

from __future__ import annotations

__all__ = [
    "BadInputError",
    "InternalError",
    "LivetagError",
    "RefusedError",
    "UnavailableError",
]


class LivetagError(Exception):
    """Base of livetag's errors. Raise one of the kinds' subclasses, not this: a class
    that derives from it directly (``livetag up``'s ServiceFailedError) is a failure that
    cannot say whose it is."""


class BadInputError(LivetagError):
    """What was given is wrong: a malformed record, message, token, file, setting or
    argument."""


class RefusedError(LivetagError):
    """Understood, and refused by a rule: a withdrawn link, a session already over, a take
    already running, a limit."""


class UnavailableError(LivetagError):
    """Something livetag needs is not there or not answering: the broker, a model file, a
    port, a package registry."""


class InternalError(LivetagError):
    """livetag broke: a bug, or a dependency that changed under it."""
