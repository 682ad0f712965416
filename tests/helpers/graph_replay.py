"""CUDA-graph capture and replay, emulated on a CPU: what a captured step may and may not rely on.

A captured graph replays the kernels it recorded, on the tensors that existed at capture, with every value
the host passed in (a Python int, a shape, a branch taken) frozen. ``Recording`` records every ATen operation
of one eager call of a step; ``replay`` runs those operations again: tensors that existed before the call are
used as they are now (in place, as a graph would), tensors the call made are the replay's own, and every other
argument is what it was at recording. A step that rebinds Python state or reads a value on the host during the
recording replays wrong here as it would on a GPU.
"""

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode


class Recording(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.operations: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        self.operations.append((func, args, kwargs, output))
        return output

    def replay(self) -> None:
        made: dict[int, torch.Tensor] = {}  # a recorded output's id -> the replay's tensor

        def now(value):
            return made.get(id(value), value) if isinstance(value, torch.Tensor) else value

        for func, args, kwargs, output in self.operations:
            result = func(*pytree.tree_map(now, args), **pytree.tree_map(now, kwargs))
            for recorded, replayed in zip(pytree.tree_leaves(output), pytree.tree_leaves(result), strict=True):
                if isinstance(recorded, torch.Tensor):
                    made[id(recorded)] = replayed


def emulate_graphs(monkeypatch) -> list[int]:
    """Make ``GraphedSteps`` run each bucket's first step eagerly, record its second and replay that one for
    every later step (of every chunk); returns the list of buckets replayed, step by step."""
    from lit_reason import static_decoding

    recordings: dict[tuple[int, int], Recording | None] = {}
    replayed: list[int] = []

    def run(self, bucket, step):
        key = (id(self), bucket)
        if key not in recordings:
            recordings[key] = None  # the warm-up
            step()
        elif recordings[key] is None:
            with Recording() as recording:
                step()
            recordings[key] = recording
        else:
            recordings[key].replay()
            replayed.append(bucket)

    monkeypatch.setattr(static_decoding.GraphedSteps, "run", run)
    return replayed
