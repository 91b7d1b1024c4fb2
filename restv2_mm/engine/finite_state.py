"""Finding nan and inf in training state: model weights and buffers, optimizer state, checkpoints.

A diverged run leaves non-finite numbers in its weights, buffers (BatchNorm running statistics)
or optimizer moments; a checkpoint holding them is useless to resume from. The checks here look
at every floating-point tensor (and every float in the optimizer's param groups, e.g. ``lr``)
with one device-to-host transfer per device, never one per tensor: each tensor's verdict is
computed where the tensor lives, the verdicts are stacked and read once.

The verdict is the tensor's sum, which is nan or inf when any element is: one read of the
memory, where ``isfinite(t).all()`` also writes a boolean tensor as large as ``t`` and reads it
again (on 2 CPU cores the sum was 10-20x faster). A sum can also overflow with finite elements
(all of them above ~1e31 in float32): such tensors are checked element by element before one is
called non-finite.
"""
import math
from collections.abc import Mapping
from typing import Iterable, Iterator, List, Sequence, Tuple

import torch

# The parts of an mmengine checkpoint that are training state (the message hub's loss history
# and the schedulers' bookkeeping are not: a logged nan loss does not make weights unusable).
STATE_PARTS = ('state_dict', 'optimizer', 'ema_state_dict')
SHOWN_NAMES = 8


class NonFiniteStateError(FloatingPointError):
    """Weights, buffers or optimizer state hold nan or inf; the message names where."""


def named_leaves(obj, prefix: str = '') -> Iterator[Tuple[str, object]]:
    """``(path, value)`` for every tensor and Python float in nested dicts / lists / tuples.

    Paths join keys with ``/``: ``optimizer/state/12/exp_avg``,
    ``state_dict/backbone.stem.0.weight``.
    """
    if isinstance(obj, torch.Tensor) or isinstance(obj, float):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from named_leaves(value, f'{prefix}/{key}' if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from named_leaves(value, f'{prefix}/{i}' if prefix else str(i))


def nonfinite_names(named_values: Iterable[Tuple[str, object]]) -> List[str]:
    """Names of the floating-point tensors (and Python floats) holding a nan or inf, in order.

    Integer and boolean tensors cannot hold either and are skipped.
    """
    bad: List[Tuple[int, str]] = []
    sums, entries = {}, {}
    for order, (name, value) in enumerate(named_values):
        if isinstance(value, float):
            if not math.isfinite(value):
                bad.append((order, name))
            continue
        if not isinstance(value, torch.Tensor) or value.numel() == 0:
            continue
        if not (value.is_floating_point() or value.is_complex()):
            continue
        value = value.detach()
        if value.is_complex():
            value = torch.view_as_real(value)
        # float16 / bfloat16 sums would overflow far sooner: sum those in float32.
        wide = value.dtype if value.dtype in (torch.float32, torch.float64) else torch.float32
        sums.setdefault(value.device, []).append(value.sum(dtype=wide).to(torch.float64))
        entries.setdefault(value.device, []).append((order, name, value))
    for device, device_sums in sums.items():
        finite = torch.isfinite(torch.stack(device_sums)).tolist()  # one transfer per device
        bad += [(order, name) for (order, name, value), ok in zip(entries[device], finite)
                if not ok and not bool(torch.isfinite(value).all())]
    return [name for _, name in sorted(bad)]


def checkpoint_nonfinite_names(checkpoint: Mapping, parts: Sequence[str] = STATE_PARTS
                               ) -> List[str]:
    """Non-finite entries of a checkpoint dict's training state: the ``parts`` of an mmengine
    checkpoint (see ``STATE_PARTS``), or all of a bare state dict (e.g. converted weights)."""
    if not any(part in checkpoint for part in STATE_PARTS):
        return nonfinite_names(named_leaves(checkpoint))
    return nonfinite_names(leaf for part in parts if part in checkpoint
                           for leaf in named_leaves(checkpoint[part], part))


def describe_names(names: Sequence[str], shown: int = SHOWN_NAMES) -> str:
    """``a, b, c and 12 more`` for an error message."""
    text = ', '.join(names[:shown])
    if len(names) > shown:
        text += f' and {len(names) - shown} more'
    return text


def model_and_optimizer_nonfinite_names(model: torch.nn.Module, optim_wrapper=None
                                        ) -> List[str]:
    """Non-finite weights, buffers and optimizer state of a live model (e.g. right after a
    resume), named as in a checkpoint."""
    leaves = list(named_leaves(dict(model.state_dict(keep_vars=True)), 'state_dict'))
    if optim_wrapper is not None:
        leaves += list(named_leaves(optim_wrapper.state_dict(), 'optimizer'))
    return nonfinite_names(leaves)


def file_nonfinite_names(path: str) -> List[str]:
    """Non-finite training state in the checkpoint file at ``path`` (a bare state dict counts
    as weights). The file is memory-mapped, so that the scan reads it once through the page
    cache, which the training run's own load of the same file then finds warm; a file that
    cannot be mapped is read by the project's loader (its errors name the file)."""
    from .checkpoint_compat import load_local_checkpoint, mmengine_checkpoint_globals
    try:
        with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception:  # legacy format, unexpected objects: the loader says what is wrong
        checkpoint = load_local_checkpoint(path, map_location='cpu')
    if not isinstance(checkpoint, Mapping):
        return []
    return checkpoint_nonfinite_names(checkpoint)
