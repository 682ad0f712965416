"""Tasks: where problems come from, how to prompt for them, how answers are read and checked."""

from lit_reason.tasks.arithmetic import Arithmetic
from lit_reason.tasks.base import Problem, Task
from lit_reason.tasks.dataset import DatasetTask
from lit_reason.tasks.gsm8k import GSM8K
from lit_reason.tasks.jsonl import JSONLTask
from lit_reason.tasks.records import RecordFields, RecordTask
from lit_reason.tasks.svamp import SVAMP

__all__ = [
    "GSM8K",
    "SVAMP",
    "Arithmetic",
    "DatasetTask",
    "JSONLTask",
    "Problem",
    "RecordFields",
    "RecordTask",
    "Task",
]
