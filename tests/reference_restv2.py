"""A deliberately plain transcription of ResTv2 from the paper's math, on the official key layout.

Independent of ``restv2_mm``: tokens are kept as (B, N, C), every head is computed in a Python
loop with an explicit softmax, and the weights are read by their official names. The tests use
it as the ground truth that the optimised backbone must match.
"""
import math

import torch
import torch.nn.functional as F

ARCHS = {
    'tiny': dict(embed_dims=(96, 192, 384, 768), depths=(1, 2, 6, 2), num_heads=(1, 2, 4, 8)),
    'small': dict(embed_dims=(96, 192, 384, 768), depths=(1, 2, 12, 2), num_heads=(1, 2, 4, 8)),
    'base': dict(embed_dims=(96, 192, 384, 768), depths=(1, 3, 16, 3), num_heads=(1, 2, 4, 8)),
    'large': dict(embed_dims=(128, 256, 512, 1024), depths=(2, 3, 16, 2), num_heads=(2, 4, 8, 16)),
}
SR_RATIOS = (8, 4, 2, 1)


def official_shapes(arch: str, num_classes: int = 1000) -> dict:
    """Every tensor of an official ImageNet checkpoint, name -> shape (from the facts file)."""
    dims, depths = ARCHS[arch]['embed_dims'], ARCHS[arch]['depths']
    c = dims[0]
    shapes = {
        'stem.proj.0.weight': (c // 2, 3, 3, 3), 'stem.proj.3.weight': (c, c // 2, 3, 3),
        'stem.proj.6.weight': (c, c, 1, 1), 'stem.proj.6.bias': (c, ),
        'stem.pos.pa_conv.weight': (c, 1, 3, 3), 'stem.pos.pa_conv.bias': (c, ),
        'stem.norm.weight': (c, ), 'stem.norm.bias': (c, ),
    }
    for idx, ch in (('1', c // 2), ('4', c)):
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            shapes[f'stem.proj.{idx}.{name}'] = (ch, )
        shapes[f'stem.proj.{idx}.num_batches_tracked'] = ()
    for s in range(4):
        C, r = dims[s], SR_RATIOS[s]
        if s > 0:
            p = f'patch_{s + 1}.'
            shapes.update({p + 'proj.weight': (C, dims[s - 1], 3, 3), p + 'proj.bias': (C, ),
                           p + 'pos.pa_conv.weight': (C, 1, 3, 3), p + 'pos.pa_conv.bias': (C, ),
                           p + 'norm.weight': (C, ), p + 'norm.bias': (C, )})
        for i in range(depths[s]):
            p = f'stage{s + 1}.{i}.'
            block = {'norm1.weight': (C, ), 'norm1.bias': (C, ), 'norm2.weight': (C, ),
                     'norm2.bias': (C, ), 'attn.q.weight': (C, C), 'attn.q.bias': (C, ),
                     'attn.kv.weight': (2 * C, C), 'attn.kv.bias': (2 * C, ),
                     'attn.up.0.weight': (r * r * C, 1, 3, 3), 'attn.up.0.bias': (r * r * C, ),
                     'attn.up_norm.weight': (C, ), 'attn.up_norm.bias': (C, ),
                     'attn.proj.weight': (C, C), 'attn.proj.bias': (C, ),
                     'mlp.fc1.weight': (4 * C, C), 'mlp.fc1.bias': (4 * C, ),
                     'mlp.fc2.weight': (C, 4 * C), 'mlp.fc2.bias': (C, )}
            if r > 1:
                block.update({'attn.sr.weight': (C, 1, r + 1, r + 1), 'attn.sr.bias': (C, ),
                              'attn.sr_norm.weight': (C, ), 'attn.sr_norm.bias': (C, )})
            shapes.update({p + k: v for k, v in block.items()})
    shapes.update({'norm.weight': (dims[-1], ), 'norm.bias': (dims[-1], ),
                   'head.weight': (num_classes, dims[-1]), 'head.bias': (num_classes, )})
    return shapes


def random_official_state_dict(arch: str, seed: int = 0) -> dict:
    """Random weights with the official names and scales that keep activations moderate."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in official_shapes(arch).items():
        if name.endswith('num_batches_tracked'):
            sd[name] = torch.tensor(100)
        elif name.endswith('running_var'):
            sd[name] = 0.5 + torch.rand(shape, generator=g)
        elif name.endswith('running_mean'):
            sd[name] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1 and ('norm' in name or '.1.' in name or '.4.' in name) \
                and name.endswith('weight'):
            sd[name] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            sd[name] = 0.05 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            sd[name] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return sd


def reference_forward(sd: dict, arch: str, x: torch.Tensor) -> list:
    """Stage maps (B, C, H, W) of the official network, before any downstream output norm.

    For maps that are not a multiple of a reduction ratio the up branch is cropped to the map
    (the one liberty taken over the authors' code, which fails there).
    """
    cfg = ARCHS[arch]

    def ln(t, name):  # t: (B, N, C)
        return F.layer_norm(t, (t.shape[-1], ), sd[name + '.weight'], sd[name + '.bias'], 1e-6)

    def pa(t, name):  # t: (B, C, H, W)
        gate = F.conv2d(t, sd[name + '.pa_conv.weight'], sd[name + '.pa_conv.bias'], padding=1,
                        groups=t.shape[1])
        return t * torch.sigmoid(gate)

    def bn(t, name):
        return F.batch_norm(t, sd[name + '.running_mean'], sd[name + '.running_var'],
                            sd[name + '.weight'], sd[name + '.bias'], False, 0., 1e-5)

    def to_tokens(t):
        return t.flatten(2).transpose(1, 2)

    def to_map(t, H, W):
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], H, W)

    def emsa(t, H, W, p, heads, r):
        B, N, C = t.shape
        d = C // heads
        q = F.linear(t, sd[p + 'q.weight'], sd[p + 'q.bias'])
        if r > 1:
            m = F.conv2d(to_map(t, H, W), sd[p + 'sr.weight'], sd[p + 'sr.bias'], stride=r,
                         padding=r // 2, groups=C)
            h, w = m.shape[-2:]
            reduced = ln(to_tokens(m), p + 'sr_norm')
        else:
            h, w, reduced = H, W, t
        kv = F.linear(reduced, sd[p + 'kv.weight'], sd[p + 'kv.bias'])
        k, v = kv[..., :C], kv[..., C:]
        outs = []
        for i in range(heads):
            sl = slice(i * d, (i + 1) * d)
            scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d)
            outs.append(torch.softmax(scores, dim=-1) @ v[..., sl])
        attn = torch.cat(outs, dim=-1)
        up = F.conv2d(to_map(v, h, w), sd[p + 'up.0.weight'], sd[p + 'up.0.bias'], padding=1,
                      groups=C)
        up = F.pixel_shuffle(up, r)[:, :, :H, :W]
        up = ln(to_tokens(up), p + 'up_norm')
        return F.linear(attn + up, sd[p + 'proj.weight'], sd[p + 'proj.bias'])

    t = F.conv2d(x, sd['stem.proj.0.weight'], stride=2, padding=1)
    t = F.relu(bn(t, 'stem.proj.1'))
    t = F.conv2d(t, sd['stem.proj.3.weight'], stride=2, padding=1)
    t = F.relu(bn(t, 'stem.proj.4'))
    t = F.conv2d(t, sd['stem.proj.6.weight'], sd['stem.proj.6.bias'])
    t = pa(t, 'stem.pos')
    H, W = t.shape[-2:]
    t = ln(to_tokens(t), 'stem.norm')
    outs = []
    for s in range(4):
        if s > 0:
            p = f'patch_{s + 1}.'
            m = F.conv2d(to_map(t, H, W), sd[p + 'proj.weight'], sd[p + 'proj.bias'], stride=2,
                         padding=1)
            m = pa(m, p + 'pos')
            H, W = m.shape[-2:]
            t = ln(to_tokens(m), p + 'norm')
        for i in range(cfg['depths'][s]):
            p = f'stage{s + 1}.{i}.'
            t = t + emsa(ln(t, p + 'norm1'), H, W, p + 'attn.', cfg['num_heads'][s], SR_RATIOS[s])
            h = F.gelu(F.linear(ln(t, p + 'norm2'), sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias']))
            t = t + F.linear(h, sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'])
        outs.append(to_map(t, H, W))
    return outs


def reference_classifier_params(arch: str) -> int:
    """Parameter count of the ImageNet network (BN buffers excluded)."""
    return sum(math.prod(s) for n, s in official_shapes(arch).items()
               if 'running_' not in n and 'num_batches' not in n)
