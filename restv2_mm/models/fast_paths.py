"""Which of ResTv2's CPU-tuned code paths a forward pass takes.

Four paths were written for, and measured on, CPUs (the numbers are next to each path's code):

============== ================================ =============================================
path           taken on the CPU when            what it does
============== ================================ =============================================
token groups   inference (autograd off)         each block's LN -> MLP -> residual over groups
                                                of tokens whose hidden tensor fits in cache
                                                (:meth:`ResTv2Block._forward_inference`)
fused MLP      training in float32              fc2(gelu(fc1(x))) saving one hidden tensor,
                                                the rest over token groups
                                                (:class:`layers._LinearGeluLinear`)
chunked        inference in bfloat16            softmax(q k^T) v as bf16 matmuls over query
attention                                       chunks (:func:`attention.chunked_attention`)
query splits   training, no key mask            queries moved into the batch so that the CPU
                                                flash-attention backward has parallel work
                                                (:func:`attention.query_splits`)
============== ================================ =============================================

On any other device (CUDA in particular) none is taken: the plain PyTorch path runs, one SDPA
call over the whole map, the MLP as three whole-tensor ops, autograd. A GPU would run a dozen
small kernels where one does (a token group is sized for a CPU cache), and none of the four was
measured faster there. :func:`select_fast_paths` is the one decision, a function of the device,
the dtype the matmuls run in and whether autograd records; every call site asks it.
"""
from dataclasses import dataclass
from typing import Union

import torch


@dataclass(frozen=True)
class FastPaths:
    """The CPU-tuned paths that apply to one (device, compute dtype, grad) case."""
    token_groups: bool = False
    fused_mlp: bool = False
    chunked_attention: bool = False
    query_splits: bool = False


PLAIN = FastPaths()


def select_fast_paths(device: Union[str, torch.device], dtype: torch.dtype,
                      grad: bool) -> FastPaths:
    """The fast paths for tensors on ``device`` whose matmuls run in ``dtype`` (see
    :func:`compute_dtype`), with autograd recording (``grad``) or not.

    CPU only: chunked attention in bfloat16 inference (not fp16: CPUs without AVX512-FP16 run
    fp16 matmuls far slower than SDPA, stage 3 at 1280x800 measured 972 vs 46 ms), the fused
    MLP in float32 training (under autocast the matmuls are bf16 and autograd's MLP runs), token
    groups in inference and query splits in training in any dtype. Every other device:
    :data:`PLAIN`.
    """
    if torch.device(device).type != 'cpu':
        return PLAIN
    return FastPaths(token_groups=not grad,
                     fused_mlp=grad and dtype == torch.float32,
                     chunked_attention=not grad and dtype == torch.bfloat16,
                     query_splits=grad)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a linear layer applied to ``x`` computes in: autocast's when autocast is on for
    ``x``'s device (and ``x`` is floating point), else ``x``'s own."""
    device_type = x.device.type
    if (x.is_floating_point() and torch.amp.is_autocast_available(device_type)
            and torch.is_autocast_enabled(device_type)):  # (no autocast on e.g. the meta device)
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def fast_paths_for(x: torch.Tensor) -> FastPaths:
    """:func:`select_fast_paths` for a tensor entering a block, under the current grad mode."""
    return select_fast_paths(x.device, compute_dtype(x), torch.is_grad_enabled())


def exporting() -> bool:
    """True while ``torch.onnx.export`` (the TorchScript exporter) records a graph.

    Recording turns every Python decision on a shape into a constant of the graph, so EMSAv2 then
    takes :meth:`EMSAv2.forward_any_size`, whose window size, padding and key mask are tensor
    arithmetic on the input's shape. Plain ``torch.jit.trace`` (mmengine's FLOP counter) keeps
    the eager path, so counted operators stay those that PyTorch runs.
    """
    return torch.onnx.is_in_onnx_export()


def recording() -> bool:
    """A graph is being recorded (``torch.jit.trace``, ONNX export, ``torch.compile``): the
    token groups and the fused MLP stay off, so the recorded graph holds the plain operators
    (a Python loop over groups would be unrolled at one size; an autograd Function is opaque)."""
    return torch.jit.is_tracing() or exporting() or torch.compiler.is_compiling()
