"""Tiny synthetic data sets in the real COCO and ADE20K formats (quick starts and tests).

A config declares its tiny set with a top-level entry, e.g.::

    tiny_dataset = dict(kind='coco', data_root='data/tiny_coco/', num_train=64, seed=0)

and ``ensure_tiny_dataset(cfg)`` (called by tools/train.py, test.py and demo.py) writes it to
``data_root`` when that folder does not exist yet, so the quick start needs no other step.
"""
import json
import os
import os.path as osp
import shutil
import tempfile
from typing import Optional

from mmengine.logging import print_log

from .tiny_ade20k import TINY_ADE20K_FILES, make_tiny_ade20k
from .tiny_coco import TINY_COCO_FILES, make_tiny_coco

# kind -> (writer, files it writes under data_root, command line that writes the same files)
TINY_DATASETS = {
    'coco': (make_tiny_coco, TINY_COCO_FILES, 'tools/make_tiny_coco.py'),
    'ade20k': (make_tiny_ade20k, TINY_ADE20K_FILES, 'tools/make_tiny_ade20k.py'),
}
MANIFEST = 'tiny_dataset.json'


def _command_line(script: str, data_root: str, kwargs: dict) -> str:
    args = [f'python {script} {data_root}']
    for key, value in kwargs.items():
        flag = '--' + key.replace('_', '-')
        if isinstance(value, (list, tuple)):
            value = ' '.join(str(v) for v in value)
        args.append(f'{flag} {value}')
    return ' '.join(args)


def _read_by_a_dataloader(cfg, data_root: str) -> bool:
    wanted = osp.normpath(data_root)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = (cfg.get(loader) or {}).get('dataset') or {}
        if dataset.get('data_root') and osp.normpath(dataset['data_root']) == wanted:
            return True
    return False


def ensure_tiny_dataset(cfg) -> Optional[str]:
    """Write the config's ``tiny_dataset`` to its ``data_root`` if that folder is missing.

    Returns the data root; None for a config without ``tiny_dataset`` or whose data loaders read
    another folder (changed with --cfg-options), where nothing is written. An existing folder is
    used as it is, unless its ``tiny_dataset.json`` says it was written with other arguments
    or files are missing, which raises: a stale set must not silently change the results.
    """
    spec = cfg.get('tiny_dataset')
    if spec is None:
        return None
    spec = dict(spec)
    kind = spec.pop('kind', None)
    if kind not in TINY_DATASETS:
        raise ValueError(f'tiny_dataset.kind must be one of {sorted(TINY_DATASETS)}, got {kind!r}')
    data_root = spec.pop('data_root', None)
    if not data_root:
        raise ValueError('tiny_dataset needs a data_root')
    if not _read_by_a_dataloader(cfg, data_root):
        # --cfg-options pointed the data sets elsewhere: nothing to write for them.
        return None
    writer, files, script = TINY_DATASETS[kind]
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}
    command = _command_line(script, data_root.rstrip('/'), kwargs)

    if osp.isdir(data_root):
        missing = [f for f in files if not osp.exists(osp.join(data_root, f))]
        if missing:
            raise FileNotFoundError(
                f'{data_root} is not a complete tiny {kind} set (missing {", ".join(missing)}); '
                f'delete it and run the tool again, or write it with `{command}`')
        manifest = osp.join(data_root, MANIFEST)
        if osp.isfile(manifest):
            with open(manifest) as f:
                written = json.load(f)
            if written != dict(kind=kind, **kwargs):
                raise RuntimeError(
                    f'{data_root} was written with {written}, the config asks for '
                    f'{dict(kind=kind, **kwargs)}; delete the folder (it is rewritten) or '
                    f'run `{command}`')
        return data_root

    print_log(f'Writing the tiny {kind} set of the config to {data_root} (first run only; '
              f'`{command}` writes the same files).', logger='current')
    parent = osp.dirname(osp.abspath(data_root.rstrip('/')))
    os.makedirs(parent, exist_ok=True)
    # Written aside, then renamed: an interrupted run or a second process (dist_train.sh)
    # never sees half a set.
    tmp_dir = tempfile.mkdtemp(prefix='.tiny_', dir=parent)
    try:
        writer(tmp_dir, **kwargs)
        with open(osp.join(tmp_dir, MANIFEST), 'w') as f:
            json.dump(dict(kind=kind, **kwargs), f)
        try:
            os.rename(tmp_dir, data_root.rstrip('/'))
        except OSError:
            if not osp.isdir(data_root):  # not another process that got there first
                raise
    finally:
        if osp.isdir(tmp_dir):
            shutil.rmtree(tmp_dir)
    return data_root


__all__ = ['ensure_tiny_dataset', 'make_tiny_coco', 'make_tiny_ade20k']
