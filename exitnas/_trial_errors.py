"""A trial's error: its full text in the trial's record, one line in the log.

Optuna marks a trial whose objective raised as FAIL, logs the error *with its traceback* (25–60
lines on stderr) and raises it again. exitnas keeps the traceback where it can be read later,
the trial's user attribute ``error``, and lets the log say one line; an interrupt (Ctrl-C) or a
:class:`~exitnas.UserError` that ends the search is said once, by the command line, not twice.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Callable

import optuna

from exitnas._errors import UserError

__all__ = ["ERROR_ATTR", "one_line_trial_errors", "recording_errors"]

#: The user attribute holding the full text (traceback) of a failed trial's error.
ERROR_ATTR = "error"
#: A record's text is cut to this many characters (the end is kept: it names the error).
_MAX_TEXT = 20_000
#: Optuna's logger of trial outcomes.
_OPTUNA_TRIAL_LOGGER = "optuna.study._optimize"


def recording_errors(objective: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``objective`` that, before its error propagates, stores the error's full text on the trial."""

    def run(trial: Any) -> Any:
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise  # not an error: a pruned trial (e.g. one the study no longer needs)
        except BaseException as e:
            text = "".join(traceback.format_exception(e))[-_MAX_TEXT:]
            try:
                trial.set_user_attr(ERROR_ATTR, text)
            except Exception:  # noqa: BLE001 - the storage may be what failed; keep the first error
                pass
            raise

    return run


class _OneLine(logging.Filter):
    """Optuna's "Trial N failed ..." records, without the traceback and on one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Trial ") or " failed " not in message:
            return True
        if " failed with value " in message:
            return False  # "Trial N failed with value None.": the line before said why
        if record.exc_info is None:
            return True  # an objective value Optuna refused (NaN): already one line
        err = record.exc_info[1]
        if isinstance(err, (KeyboardInterrupt, UserError)):
            return False  # it ends the search; the command line says it in one line
        number = message.split()[1]
        first = " ".join(str(err).split())[:300]
        record.msg = f"trial {number} failed: {type(err).__name__}: {first} (full text in its user attribute " \
                     f"'{ERROR_ATTR}')"
        record.args = None
        record.exc_info = record.exc_text = None
        return True


def one_line_trial_errors() -> None:
    """Install the one-line filter on Optuna's trial logger (once per process; entry points call it)."""
    logger = logging.getLogger(_OPTUNA_TRIAL_LOGGER)
    if not any(isinstance(f, _OneLine) for f in logger.filters):
        logger.addFilter(_OneLine())
