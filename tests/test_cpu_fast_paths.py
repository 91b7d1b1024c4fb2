"""The CPU inference and training paths of ResTv2 compute what the plain ones compute.

- inference (autograd off) runs each block's MLP half over token groups: same numbers as the
  autograd path, in fp32 and in every style, at a size where every stage has several groups;
- bf16 inference on the CPU computes attention as chunked matmuls instead of SDPA:
  chunks change nothing, masks (padded windows) still apply, and the backbone stays close to
  fp32;
- the fused MLP's token groups in training give autograd's outputs and gradients;
- all four are chosen by one function of (device, compute dtype, grad) that keeps them to the
  CPU, and every call site asks it: on another device (the meta device stands in for CUDA here)
  the plain path runs (tests/test_cuda.py checks CUDA itself when there is one).
No timing here: speed is tools/benchmark.py's job.
"""
import pytest
import torch
import torch.nn.functional as F

import restv2_mm.models.attention as attention
import restv2_mm.models.layers as layers
from restv2_mm.models.fast_paths import (PLAIN, FastPaths, compute_dtype, fast_paths_for,
                                         select_fast_paths)
from restv2_mm.models.restv2 import ResTv2, ResTv2Block


def backbone(style='global'):
    torch.manual_seed(0)
    model = ResTv2('tiny', attn_style=style, window_size=(8, 4, 4, 2))
    model.init_weights()
    for m in model.modules():  # make CWin's zero-initialised convs count
        if isinstance(m, layers.ResidualDWConv):
            torch.nn.init.normal_(m.conv.weight, std=0.05)
    return model.eval()


@pytest.mark.parametrize('style', ['global', 'win', 'cwin', 'hwin'])
def test_inference_token_groups_equal_autograd_path(monkeypatch, style):
    monkeypatch.setattr(layers, 'HIDDEN_PER_GROUP', 1 << 14)  # stage 1: 42 tokens per group
    model = backbone(style)
    x = torch.randn(1, 3, 97, 131)
    calls = []
    original = type(model.stages[0].blocks[0])._forward_inference
    monkeypatch.setattr(type(model.stages[0].blocks[0]), '_forward_inference',
                        lambda self, t: calls.append(1) or original(self, t))
    with torch.no_grad():
        grouped = model(x)
    assert len(calls) == sum(model.depths)
    with torch.enable_grad():
        plain = model(x)
    for a, b in zip(grouped, plain):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)


def test_token_groups_cover_every_token_once():
    groups = layers.token_groups(10_000, 384)
    covered = torch.zeros(10_000, dtype=torch.int)
    for rows in groups:
        covered[rows] += 1
    assert covered.eq(1).all() and len(groups) == -(-10_000 // (layers.HIDDEN_PER_GROUP // 384))
    assert len(layers.token_groups(100, 1 << 30)) == 1  # at least 256 tokens per group


@pytest.mark.parametrize('masked', [False, True])
def test_chunked_attention_equals_one_explicit_attention(masked):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for n in (1000, 70, 70))
    mask = None
    if masked:
        mask = torch.rand(2, 1, 1, 70, generator=g) > 0.3
        mask[..., 0] = True
    whole = attention.explicit_attention(q, k, v, mask, head_dims=16)
    # 6 * 70 scores per query: groups of 9 queries, the last one shorter.
    chunked = attention.chunked_attention(q, k, v, mask, max_scores=4000)
    torch.testing.assert_close(chunked, whole)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(chunked, ref, rtol=1e-4, atol=1e-5)


def test_low_precision_cpu_inference_is_the_only_user_of_chunked_attention():
    q = torch.zeros(1, 1, 4, 8)
    assert not attention.low_precision_cpu_inference(q)  # fp32: SDPA
    with torch.no_grad():
        assert attention.low_precision_cpu_inference(q.bfloat16())
        assert not attention.low_precision_cpu_inference(q.half())  # fp16 matmuls: slow on CPU
    assert not attention.low_precision_cpu_inference(q.bfloat16())  # training: SDPA


@pytest.mark.parametrize('style', ['global', 'win'])
def test_bf16_inference_takes_chunked_attention_and_stays_close(monkeypatch, style):
    model = backbone(style)
    x = torch.randn(1, 3, 97, 131)  # windows need padding and key masks at this size
    calls = []
    original = attention.chunked_attention
    monkeypatch.setattr(attention, 'chunked_attention',
                        lambda *a, **kw: calls.append(1) or original(*a, **kw))
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', torch.bfloat16):
            low = model(x)
    assert len(calls) == sum(model.depths)
    for a, b in zip(low, ref):
        assert a.shape == b.shape
        assert ((a.float() - b).norm() / b.norm()).item() < 2e-2


def test_fused_mlp_groups_give_autograd_outputs_and_gradients(monkeypatch):
    monkeypatch.setattr(layers, 'HIDDEN_PER_GROUP', 384 * 300)  # 21 groups, the last shorter
    torch.manual_seed(0)
    mlp = layers.Mlp(96, 384)
    x = torch.randn(1, 70, 90, 96, requires_grad=True)
    out = mlp(x)
    assert 'LinearGeluLinear' in out.grad_fn.next_functions[0][0].name()
    grad = torch.randn_like(out)
    out.backward(grad)
    fused = [x.grad] + [p.grad for p in mlp.parameters()]
    x_ref = x.detach().clone().requires_grad_()
    mlp_ref = layers.Mlp(96, 384)
    mlp_ref.load_state_dict(mlp.state_dict())
    with torch.autocast('cpu', enabled=False):
        ref = mlp_ref.fc2(mlp_ref.act(mlp_ref.fc1(x_ref)))
    ref.backward(grad)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for a, b in zip(fused, [x_ref.grad] + [p.grad for p in mlp_ref.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_keep_freed_memory_sets_glibc_malloc():
    import platform
    from restv2_mm.utils.cpu_malloc import keep_freed_memory
    libc, _ = platform.libc_ver()
    assert keep_freed_memory() is (libc == 'glibc')
    x = torch.ones(30_000_000)  # 120 MB: from the heap now, and still right
    assert x.sum().item() == 30_000_000


def test_fused_attention_query_splits_give_sdpa_outputs_and_gradients():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # stage 1's one head on two threads: the queries get split
    try:
        assert attention.query_splits(1, 1024) > 1
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 1, n, 16, generator=g, requires_grad=True)
                   for n in (1024, 64, 64))
        grad = torch.randn(1, 1, 1024, 16, generator=g)
        split = attention.fused_attention(q, k, v, None)
        assert split.shape[0] > 1  # the groups sit in the batch dimension
        split = split.transpose(1, 2).reshape(1, 1024, 1, 16).transpose(1, 2)
        split_grads = torch.autograd.grad(split, (q, k, v), grad)
        ref = F.scaled_dot_product_attention(q, k, v)
        ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(split, ref)
    for a, b in zip(split_grads, ref_grads):
        torch.testing.assert_close(a, b)


F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
# The CPU's paths per (compute dtype, autograd recording).
CPU_PATHS = {
    (F32, True): FastPaths(fused_mlp=True, query_splits=True),
    (F32, False): FastPaths(token_groups=True),
    (BF16, True): FastPaths(query_splits=True),  # autocast training: autograd's MLP
    (BF16, False): FastPaths(token_groups=True, chunked_attention=True),
    (F16, True): FastPaths(query_splits=True),
    (F16, False): FastPaths(token_groups=True),  # fp16 matmuls are slow on CPUs: SDPA
}


@pytest.mark.parametrize('grad', [True, False])
@pytest.mark.parametrize('dtype', [F32, BF16, F16])
@pytest.mark.parametrize('device', ['cpu', torch.device('cpu'), 'cuda', 'cuda:1',
                                    torch.device('cuda', 0), 'meta', 'mps'])
def test_fast_paths_are_selected_on_the_cpu_only(device, dtype, grad):
    paths = select_fast_paths(device, dtype, grad)
    if torch.device(device).type == 'cpu':
        assert paths == CPU_PATHS[(dtype, grad)]
    else:
        assert paths == PLAIN and not any(vars(paths).values())


def test_compute_dtype_follows_autocast():
    x = torch.zeros(2, 3)
    assert compute_dtype(x) is F32
    with torch.autocast('cpu', dtype=BF16):
        assert compute_dtype(x) is BF16
        assert fast_paths_for(x) == CPU_PATHS[(BF16, torch.is_grad_enabled())]
        assert compute_dtype(torch.zeros(2, dtype=torch.long)) is torch.long
    assert compute_dtype(x.half()) is F16
    with torch.no_grad():
        assert fast_paths_for(x.bfloat16()) == CPU_PATHS[(BF16, False)]


def count_fast_path_calls(monkeypatch) -> dict:
    """Counters of every entry to a CPU fast path, by name."""
    calls = dict.fromkeys(('token groups', 'fused mlp', 'chunked attention', 'query splits'), 0)

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(ResTv2Block, '_forward_inference',
                        counting('token groups', ResTv2Block._forward_inference))
    monkeypatch.setattr(layers._LinearGeluLinear, 'apply',
                        counting('fused mlp', layers._LinearGeluLinear.apply))
    monkeypatch.setattr(attention, 'chunked_attention',
                        counting('chunked attention', attention.chunked_attention))
    monkeypatch.setattr(attention, 'query_splits',
                        counting('query splits', attention.query_splits))
    return calls


@pytest.mark.parametrize('style', ['global', 'win'])
@pytest.mark.parametrize('device', ['cpu', 'meta'])
def test_call_sites_take_fast_paths_on_cpu_and_plain_paths_elsewhere(monkeypatch, device, style):
    """The backbone on the meta device (no data, shapes only; a device that is not the CPU, as
    CUDA is) never enters a CPU path, in fp32 and bf16, inference and training; on the CPU the
    same runs enter each path its case selects."""
    calls = count_fast_path_calls(monkeypatch)
    model = ResTv2('tiny', attn_style=style, window_size=(8, 4, 4, 2)).to(device)
    x = torch.randn(1, 3, 61, 75, device=device)  # padded windows in every stage
    blocks = sum(model.depths)
    entered = {}
    for dtype, grad in ((F32, False), (BF16, False), (F32, True)):
        model.to(dtype).train(grad)
        for name in calls:
            calls[name] = 0
        with torch.set_grad_enabled(grad):
            outs = model(x.to(dtype))
            if grad:
                sum(o.mean() for o in outs).backward()
        assert [o.shape[1] for o in outs] == list(model.embed_dims)
        entered[(dtype, grad)] = {name for name, n in calls.items() if n}
    if device == 'meta':
        assert entered == {case: set() for case in entered}
        return
    assert entered[(F32, False)] == {'token groups'}
    assert entered[(BF16, False)] == {'token groups', 'chunked attention'}
    # Query splits only where no key mask is given: global attention (Win pads every stage).
    assert entered[(F32, True)] == ({'fused mlp', 'query splits'} if style == 'global'
                                    else {'fused mlp'})
    assert calls['fused mlp'] == blocks
