"""The run folder: the one place that writes and reads it.

- :mod:`~sane_cli.records.schema`: the layout, the columns of each file, statuses, the config keys the readers
  rely on and those that change nothing a run computes;
- :mod:`~sane_cli.records.writer`: :class:`RunWriter`, a new folder (``create``) or a stopped run's (``reopen``);
- :mod:`~sane_cli.records.reader`: a folder read back and checked (:func:`load_run`, :class:`Run`);
- :mod:`~sane_cli.records.resume`: whether a stopped run can be continued, and from where;
- :mod:`~sane_cli.records.upgrade`: folders of earlier versions in today's layout;
- :mod:`~sane_cli.records.files`: files that are never half-written, and the folder's lock.

Rows are appended and flushed as they are made and summary.json is rewritten atomically, so a run that stops for
any reason keeps everything it had logged; a resumed run cuts the CSVs back to the bytes its checkpoint recorded
and appends from there. The folder is locked (flock) while a run writes it.
"""

from .files import RESERVE, is_locked, json_default
from .reader import Run, find_runs, is_run_dir, load_run, read_checkpoint, read_summary, status_of
from .resume import ResumePoint, checkpoint_config, first_difference, resume_point
from .schema import (
    CHECKPOINT_KINDS,
    ENDED,
    FINAL_COLUMNS,
    FINISHED,
    HESSIAN_COLUMNS,
    LAYER_COLUMNS,
    LAYER_MEASURES,
    LOSS_COLUMNS,
    MAY_DIFFER,
    METRICS_COLUMNS,
    NO_EFFECT,
    REPORT_KEYS,
    SETTING_COLUMNS,
    STATUSES,
    VALUE_COLUMNS,
    config_value,
    no_effect,
)
from .upgrade import ADDED_KEYS, as_it_ran
from .writer import RunWriter

__all__ = [
    "ADDED_KEYS", "CHECKPOINT_KINDS", "ENDED", "FINAL_COLUMNS", "FINISHED", "HESSIAN_COLUMNS", "LAYER_COLUMNS",
    "LAYER_MEASURES",
    "LOSS_COLUMNS", "MAY_DIFFER", "METRICS_COLUMNS", "NO_EFFECT", "REPORT_KEYS", "RESERVE", "SETTING_COLUMNS",
    "STATUSES", "VALUE_COLUMNS", "ResumePoint", "Run", "RunWriter", "as_it_ran", "checkpoint_config",
    "config_value", "find_runs", "first_difference", "is_locked", "is_run_dir", "json_default", "load_run",
    "no_effect", "read_checkpoint", "read_summary", "resume_point", "status_of",
]  # fmt: skip
