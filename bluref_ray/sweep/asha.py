"""ASHA whose rungs survive a resumed sweep.

Tune restores an interrupted experiment's trials but not its scheduler's records. Without them,
the trials that run after the interruption are judged only against each other: a diverging
trial that an uninterrupted sweep stops at its first rung runs to the end when the trials it
would have been compared with finished before the kill. :class:`ResumableASHA` replays, when a
trial is added, the reports it made before (its ``result.json`` in the Tune folder): a fresh
trial has none, a restored one gets its place in every rung it reached.
"""

from __future__ import annotations

import json

from ray.air.constants import EXPR_RESULT_FILE
from ray.tune.schedulers import AsyncHyperBandScheduler


class ResumableASHA(AsyncHyperBandScheduler):
    """:class:`~ray.tune.schedulers.AsyncHyperBandScheduler` that relearns restored trials."""

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        for result in earlier_reports(trial):
            super().on_trial_result(tune_controller, trial, result)  # records; decides nothing


def earlier_reports(trial) -> list[dict]:
    """The reports a trial made before (none for a fresh trial), in order."""
    sc = trial.storage
    if sc is None or not sc.trial_dir_name:  # a fresh trial: no folder yet
        return []
    try:
        with sc.storage_filesystem.open_input_stream(
                f"{sc.trial_fs_path}/{EXPR_RESULT_FILE}") as f:
            text = f.read().decode()
    except (FileNotFoundError, OSError):
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
