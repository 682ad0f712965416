"""Operations that make the host wait for the device: what a CUDA graph cannot capture, detectable on a CPU."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Reading a value on the host (.item(), int(), a branch on a tensor) or an output shape that depends on values.
_WAITING = {
    aten._local_scalar_dense,
    aten.is_nonzero,
    aten.equal,
    aten.nonzero,
    aten.masked_select,
    aten.unique_consecutive,
    aten._unique,
    aten._unique2,
    aten.unique_dim,
    aten.bincount,
}


class HostReads(TorchDispatchMode):
    """Records every operation run inside it that waits for the device's values (``seen``): a tensor's value
    read on the host, ``nonzero`` and other value-dependent shapes, boolean-mask indexing. Unseen: ``tolist``
    (another path) and operations that choose a waiting algorithm inside their kernel (``torch.isin`` past a
    few test elements)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in _WAITING:
            self.seen.append(str(func))
        elif func is aten.repeat_interleave.Tensor and (kwargs or {}).get("output_size") is None:
            self.seen.append(f"{func} without output_size")
        elif packet in (aten.index, aten.index_put, aten.index_put_) and any(
            index is not None and index.dtype == torch.bool for index in args[1]
        ):
            self.seen.append(f"{func} with a boolean mask")
        return func(*args, **(kwargs or {}))
