"""The sampler's preallocated decoding state: a static KV cache whose rows are compacted into batch buckets, and
the decode step captured once per bucket as a CUDA graph.

A decode step of a small model on a GPU is bound by the host: launching a few hundred kernels costs more than
running them. Replaying a captured CUDA graph launches them all at once, but a graph replays fixed shapes at
fixed addresses. So everything a step reads and writes lives in room allocated before the first step:

* the KV cache: (slots, kv heads, prompt width + max new tokens, head dim) per layer, every slot's token of
  step s written in column ``width + s`` (every chunk's prompts are left-padded to the longest prompt of the
  call, so one position counter serves every row and layer, and every chunk the same tensors);
* the attention mask (each step marks its own column, so the mask shows exactly the columns written, as
  every attention implementation needs), the next positions, the row seeds and the tokens fed to the model;
* the step counter, a device tensor the step increments itself.

Rows that finish are dropped by copying the live rows to the front of this room and running the next smaller
*bucket*: the first ``n`` slots, ``n`` the largest chunk's row count or a power of two below it (a chunk starts
in the smallest bucket that holds it). Slots of a bucket beyond its live rows compute tokens that are recorded
into a sink row and never kept. Attention reads only the room's first *columns*: those written so far, rounded
up to a block of ``COLUMN_BLOCK`` (the columns past the last one written are masked, so reading them changes
nothing but the time: after a 40-token prompt, the first of 256 new tokens reads 64 of the room's 296). Each
(bucket, columns) step is captured once, the first time it runs (after one eager run of it, which lets
libraries initialise outside the capture), and replayed for every later step of every chunk that runs it; the
host only looks at the rows every few steps (``finished_check_every``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, StaticLayer

from lit_reason.cached_forward import rope_scaled_per_call

# Attention reads the room's columns in blocks of this many: each block more is one graph more per bucket (a
# capture costs about as much as a few steps), each column more than needed is read by every step until the next
# block.
COLUMN_BLOCK = 64


def bucket_for(rows: int, capacity: int) -> int:
    """The batch bucket that holds ``rows`` live rows: the smallest power of two at least ``rows`` (at least 1),
    or ``capacity`` (the largest chunk's row count) when that is not smaller."""
    bucket = 1 << max(0, rows - 1).bit_length()
    return min(bucket, capacity)


def columns_for(written: int, length: int) -> int:
    """The room's first columns a step reads when ``written`` columns hold states: a whole number of
    ``COLUMN_BLOCK`` blocks, at most the room's ``length``."""
    return min(length, -(-written // COLUMN_BLOCK) * COLUMN_BLOCK)


def supports_static_cache(model: torch.nn.Module) -> bool:
    """Whether every layer of the model's KV cache is plain full attention (no sliding window, recurrent or
    linear-attention state), the only kind the static cache lays out, and its RoPE scaling does not depend on
    the batch's longest position (spare slots' positions would change the live rows' scaling)."""
    layers = DynamicCache(config=model.config).layers
    return all(type(layer) is DynamicLayer for layer in layers) and not rope_scaled_per_call(model.config)


class _SlotLayer(StaticLayer):
    """One layer's keys and values in preallocated room, (slots, heads, columns, head dim), seen through the
    first ``slots`` rows and ``columns`` columns of a larger buffer (attention and its mask span these columns).
    Unlike ``StaticLayer`` it does not advance a counter of its own: every layer writes at the column of
    ``position``, one tensor the decoder advances once per step."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor) -> None:
        super().__init__(max_cache_len=keys.shape[2])
        self.keys, self.values, self.cumulative_length = keys, values, position
        self.device, self.batch_size, self.num_heads = keys.device, keys.shape[0], keys.shape[1]
        self.k_head_dim, self.v_head_dim = keys.shape[-1], values.shape[-1]
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("a slot layer is initialised with its room")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        columns = self.cumulative_length + torch.arange(key_states.shape[-2], device=self.device)
        self.keys.index_copy_(2, columns, key_states.to(self.keys.dtype))
        self.values.index_copy_(2, columns, value_states.to(self.values.dtype))
        return self.keys, self.values


class SlotCache:
    """The KV cache of a ``sample`` call's chunks in preallocated room: ``capacity`` slots of ``halves`` model
    rows each (a sampled row and, under guidance, its negative twin), ``length`` columns, with keys and values
    shaped (and typed) as a prefill's.

    Bucket ``n`` runs model rows ``[0, halves * n)``: the n sampled rows, then their n twins in the same order.
    Every chunk's prompts end at column ``width`` (shorter ones further left-padded), so the column the next
    token's keys go to, ``position`` (a 0-d long tensor), is the same for every row and layer.
    """

    def __init__(self, prefill: DynamicCache, capacity: int, halves: int, width: int, length: int) -> None:
        self.capacity, self.halves, self.width = capacity, halves, width
        self.keys = [self._room(layer.keys, length) for layer in prefill.layers]
        self.values = [self._room(layer.values, length) for layer in prefill.layers]
        self.position = torch.tensor(width, dtype=torch.long, device=self.keys[0].device)
        self._caches: dict[tuple[int, int], Cache] = {}

    @property
    def length(self) -> int:
        """Columns of the room: the prompts' width plus the most new tokens."""
        return self.keys[0].shape[2]

    def _room(self, states: torch.Tensor, length: int) -> torch.Tensor:
        return states.new_zeros((self.halves * self.capacity, states.shape[1], length, states.shape[-1]))

    def load(self, prefill: DynamicCache, repeats: int, bucket: int) -> None:
        """Lay out a chunk: ``prefill`` holds ``halves * P`` left-padded prompts (the sampled rows' prompts, then
        the negative ones) whose rows, ``repeats`` times each, become the chunk's first ``P * repeats <= bucket``
        slots of bucket ``bucket``. Columns left of the prompts and slots past them keep stale (finite) states,
        which the attention mask hides or whose tokens are never kept."""
        prompts = prefill.layers[0].keys.shape[0] // self.halves
        for layer, keys, values in zip(prefill.layers, self.keys, self.values, strict=True):
            for room, states in ((keys, layer.keys), (values, layer.values)):
                start = self.width - states.shape[2]
                for half in range(self.halves):
                    rows = states[half * prompts : (half + 1) * prompts].repeat_interleave(repeats, dim=0)
                    room[half * bucket : half * bucket + len(rows), :, start : self.width] = rows
        self.position.fill_(self.width)

    def cache(self, bucket: int, columns: int) -> Cache:
        """The cache a forward of bucket ``bucket`` reads and writes while ``position`` < ``columns``: views of
        the room's first model rows and columns, built once per bucket and columns (a captured graph holds their
        tensors)."""
        if (bucket, columns) not in self._caches:
            rows = self.halves * bucket
            layers = [
                _SlotLayer(keys[:rows, :, :columns], values[:rows, :, :columns], self.position)
                for keys, values in zip(self.keys, self.values, strict=True)
            ]
            self._caches[bucket, columns] = Cache(layers=layers)
        return self._caches[bucket, columns]

    def compact(self, model_rows: torch.Tensor) -> None:
        """Move the model rows ``model_rows`` (indices into the current bucket's rows) to the front, in order."""
        move_to_front((*self.keys, *self.values), model_rows)


def move_to_front(buffers: tuple[torch.Tensor, ...], rows: torch.Tensor) -> None:
    """Copy rows ``rows`` (indices along dim 0) of every buffer to its first ``len(rows)`` rows, in order."""
    for buffer in buffers:
        buffer[: len(rows)] = buffer.index_select(0, rows)


class GraphedSteps:
    """Runs a decode step per shape (a bucket and the columns read): eagerly, or (``use_graphs``) captured as a
    CUDA graph the first time a shape runs and replayed after, for every chunk of a ``sample`` call (the step
    reads and writes the same tensors for each). Each call of ``run`` performs exactly one step: the first of a
    shape runs eagerly on the capture's own stream (lazy initialisations, such as a library's workspace for that
    stream, happen outside the capture), and the capture that follows only records (a captured graph does nothing
    until replayed). The graphs share one memory pool: a step keeps nothing it allocates (it writes its results
    into the room), and graphs replay one at a time."""

    def __init__(self, use_graphs: bool, device: torch.device) -> None:
        self.use_graphs, self.device = use_graphs, device
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        if use_graphs:
            with torch.cuda.device(device):
                self.pool = torch.cuda.graph_pool_handle()
                self.capture_stream = torch.cuda.Stream(device)

    def run(self, shape: tuple[int, int], step: Callable[[], None]) -> None:
        if not self.use_graphs:
            step()
            return
        with torch.cuda.device(self.device):  # streams and captures on the model's device, not the current one
            graph = self.graphs.get(shape)
            if graph is not None:
                graph.replay()
                return
            self.capture_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.capture_stream):
                step()
            torch.cuda.current_stream().wait_stream(self.capture_stream)
            self.graphs[shape] = self._capture(shape, step)

    def _capture(self, shape: tuple[int, int], step: Callable[[], None]) -> torch.cuda.CUDAGraph:
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.current_stream()
        try:
            # thread_local: CUDA calls of other threads (e.g. NCCL's watchdog) do not void the capture.
            with torch.cuda.graph(graph, pool=self.pool, stream=self.capture_stream, capture_error_mode="thread_local"):
                step()
        except RuntimeError as error:
            # A step the capture refused voids it, and then ending the capture fails too, before torch.cuda.graph
            # puts the current stream back: put it back, and name the first error, not the second.
            torch.cuda.set_stream(stream)
            cause = error.__context__ or error
            raise RuntimeError(
                f"decoding: cuda_graph could not capture the step of {shape[0]} rows reading {shape[1]} columns "
                f"({type(cause).__name__}: {cause}): use decoding: static"
            ) from cause
        return graph
