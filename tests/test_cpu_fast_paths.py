"""The CPU inference and training paths of ResTv2 compute what the plain ones compute.

- inference (autograd off) runs each block's MLP half over token groups: same numbers as the
  autograd path, in fp32 and in every style, at a size where every stage has several groups;
- bf16 inference on the CPU computes attention as chunked matmuls instead of SDPA:
  chunks change nothing, masks (padded windows) still apply, and the backbone stays close to
  fp32;
- the fused MLP's token groups in training give autograd's outputs and gradients.
No timing here: speed is tools/benchmark.py's job.
"""
import pytest
import torch
import torch.nn.functional as F

import restv2_mm.models.attention as attention
import restv2_mm.models.layers as layers
from restv2_mm.models.restv2 import ResTv2


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
