"""Fair-use signals: usage patterns watched for against the documented expectation.

The policy's ``[[fair_use]]`` tables name them (docs/policy.md); :mod:`.tap` counts what
the meter does not record, :mod:`.run` folds the last interval in on a schedule and
records flags, :mod:`.evaluate` reads a signal over a time range and :mod:`.signals`
decides ``ok`` / ``watch`` / ``flagged``. Nothing here refuses a request: flags are
shown, and act only where a rule says ``action = "throttle"``.
"""

from __future__ import annotations

from tollhouse.fairuse.evaluate import evaluate
from tollhouse.fairuse.run import FairUsePass, PassResult, run_pass
from tollhouse.fairuse.signals import SignalResult, Subject, status
from tollhouse.fairuse.tap import FairUseTap, GenerationCapture

__all__ = [
    "FairUsePass",
    "FairUseTap",
    "GenerationCapture",
    "PassResult",
    "SignalResult",
    "Subject",
    "evaluate",
    "run_pass",
    "status",
]
