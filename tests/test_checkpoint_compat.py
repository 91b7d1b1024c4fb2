"""mmengine checkpoints load with weights_only=True; anything beyond the allow-list is refused."""
import os
import pickle

import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint

import restv2_mm  # noqa: F401  (routes mmengine's local loading through the allow-list)
from restv2_mm.engine import load_local_checkpoint


class _Reduce:
    """Pickles as ``func(*args)``: how a crafted checkpoint smuggles a call in."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_mmengine_loads_history_buffers_through_the_allow_list(tmp_path):
    buffer = HistoryBuffer()
    buffer.update(1.5)
    buffer.update(2.5)
    path = tmp_path / 'ckpt.pth'
    torch.save({'message_hub': {'log_scalars': {'loss': buffer}}, 'meta': {'epoch': 3}}, path)
    loaded = _load_checkpoint(str(path), map_location='cpu')  # what --resume and load_from call
    restored = loaded['message_hub']['log_scalars']['loss']
    assert restored.mean() == 2.0 and loaded['meta']['epoch'] == 3


@pytest.mark.parametrize('payload', [
    _Reduce(getattr, HistoryBuffer, '__init__'),  # getattr beyond HistoryBuffer's statistics
    _Reduce(getattr, HistoryBuffer, '__subclasses__'),
    _Reduce(os.system, 'true'),  # not allow-listed at all
])
def test_crafted_checkpoints_are_refused(tmp_path, payload):
    path = tmp_path / 'crafted.pth'
    torch.save({'meta': payload}, path)
    with pytest.raises((RuntimeError, pickle.UnpicklingError), match='Weights only load failed'):
        load_local_checkpoint(str(path))
