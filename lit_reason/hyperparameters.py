"""A module's hyperparameters as plain data: what ``hparams.yaml`` shows and a checkpoint stores.

Lightning's ``save_hyperparameters`` keeps the objects an algorithm was built with (dataclasses, an optimizer
factory, a ``peft.LoraConfig``); stored as they are, a checkpoint would no longer load with
``torch.load(weights_only=True)``. ``plain_data`` turns them into what YAML and ``weights_only`` take: numbers,
strings, lists and dicts (a dataclass becomes the dict of its fields, a class or function its import path).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from enum import Enum
from pathlib import PurePath
from typing import Any


def plain_data(value: Any) -> Any:
    """``value`` as None, bool, int, float, str, list or dict (of str keys), recursively."""
    if isinstance(value, Enum):  # first: a str or int Enum would pass for its base type (weights_only refuses it)
        return plain_data(value.value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return {str(key): plain_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_data(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((plain_data(item) for item in value), key=repr)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, functools.partial):
        return {"callable": plain_data(value.func), "args": plain_data(value.args), **plain_data(value.keywords)}
    if inspect.isclass(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)
