"""A tiny regression model trained by mmengine's real Runner, for the divergence tests.

Everything but the model is the real thing: Runner, IterBasedTrainLoop, RuntimeInfoHook,
LoggerHook, ParamSchedulerHook, CheckpointHook (with max_keep_ckpts), the optimizer wrappers,
the schedulers, checkpoint writing and resuming as patched by ``import restv2_mm``. A run of
a few iterations takes well under a second, so the failure modes can be provoked exactly:

* ``nan_rows``: training samples whose inputs are nan (the loss of their batch is nan);
* :class:`PoisonGradients`: in given iterations the loss gets a term that is 0 but whose
  gradient is nan (``sqrt(0 * w)``), so the loss stays finite while the update is not;
  :class:`NanLoss`: in given iterations the loss is nan whatever the data.
"""
import logging
import uuid
from contextlib import contextmanager

import torch
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import restv2_mm  # noqa: F401  (registers the hook, patches checkpointing)


class LogCapture(logging.Handler):
    """Records what mmengine's current logger prints (the Runner's and the datasets')."""

    def __init__(self, level=logging.DEBUG):
        super().__init__(level=level)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def text(self):
        return '\n'.join(self.lines)


@contextmanager
def captured_log(level=logging.DEBUG):
    capture = LogCapture(level)
    logger = MMLogger.get_current_instance()
    logger.addHandler(capture)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)


class ToyRegressor(BaseModel):
    """``y = linear(batchnorm(x))``, x (N, 2); loss terms ``loss_mse`` and ``loss_l1`` and a
    logged accuracy-like ``err_rate`` that is not a loss."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(2)
        self.linear = nn.Linear(2, 1)
        self.sabotage = None  # None, 'gradient' or 'loss'

    def forward(self, inputs, targets=None, mode='tensor'):
        out = self.linear(self.norm(inputs)).squeeze(1)
        if mode != 'loss':
            return out
        error = out - targets
        losses = dict(loss_mse=(error ** 2).mean(), loss_l1=error.abs().mean(),
                      err_rate=(error.abs() > 1).float().mean())
        if self.sabotage == 'gradient':  # 0 in value, nan in gradient
            losses['loss_mse'] = losses['loss_mse'] + torch.sqrt(self.linear.weight.sum() * 0)
        elif self.sabotage == 'loss':
            losses['loss_mse'] = losses['loss_mse'] * float('nan')
        return losses


def toy_dataset(num=256, nan_rows=()):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(num, 2, generator=generator)
    targets = inputs @ torch.tensor([1.0, -2.0]) + 0.5
    for row in nan_rows:
        inputs[row] = float('nan')
    return TensorDataset(inputs, targets)


class PoisonGradients(Hook):
    """Turn the model's nan-gradient term on for ``iterations`` (1-based, as logged)."""

    priority = 'VERY_HIGH'
    kind = 'gradient'

    def __init__(self, iterations):
        self.iterations = set(iterations)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        model.sabotage = self.kind if runner.iter + 1 in self.iterations else None


class NanLoss(PoisonGradients):
    """Make the model's ``loss_mse`` nan in ``iterations`` (1-based, as logged)."""

    kind = 'loss'


def toy_runner(work_dir, *, max_iters, dataset=None, batch_size=4, lr=0.01,
               param_scheduler=None, clip_grad=None, checkpoint_interval=1, max_keep_ckpts=-1,
               divergence_hook=True, hooks=(), resume=False, load_from=None,
               optim_wrapper=None, model_wrapper_cfg=None, epochs=None,
               **runner_kwargs) -> Runner:
    """A Runner for :class:`ToyRegressor`; ``divergence_hook`` adds StopOnNonFiniteLossHook.
    An iteration-based loop of ``max_iters``, or with ``epochs`` an epoch-based one."""
    if optim_wrapper is None:
        optim_wrapper = dict(optimizer=dict(type='AdamW', lr=lr, weight_decay=0.01))
        if clip_grad is not None:
            optim_wrapper['clip_grad'] = clip_grad
    custom_hooks = [dict(type='StopOnNonFiniteLossHook')] if divergence_hook else []
    torch.manual_seed(0)  # the same initial weights in every run
    return Runner(
        model=ToyRegressor(),
        work_dir=str(work_dir),
        experiment_name=f'toy_{uuid.uuid4().hex[:8]}',
        train_dataloader=DataLoader(dataset or toy_dataset(), batch_size=batch_size,
                                    shuffle=False),
        optim_wrapper=optim_wrapper,
        param_scheduler=param_scheduler,
        train_cfg=(dict(by_epoch=False, max_iters=max_iters) if epochs is None else
                   dict(by_epoch=True, max_epochs=epochs)),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', interval=checkpoint_interval, by_epoch=False,
                            max_keep_ckpts=max_keep_ckpts)),
        custom_hooks=custom_hooks + list(hooks),
        resume=resume,
        load_from=load_from,
        randomness=dict(seed=0),
        default_scope='mmengine',
        cfg=dict(param_scheduler=param_scheduler, model_wrapper_cfg=model_wrapper_cfg),
        **runner_kwargs)
