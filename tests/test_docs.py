"""README.md and docs/*.md stay true to the repository.

- every relative link and image resolves, `#anchors` included (GitHub's heading slugs);
- every `configs/`, `tools/`, `tests/`, `restv2_mm/` and `docs/` path named exists (globs and
  {a,b} alternatives expanded; `tests/x.py::name` names a test of that file), every `mmdet::` /
  `mmseg::` config exists in the installed library, every `restv2_mm.x.y` name is defined;
- every option given to a tool (`python tools/X.py --opt`, `bash tools/dist_*.sh ... --opt`) is
  one the tool declares;
- the README's set-up and test commands are what `.ci/run` runs; its quick start and the
  segmentation page's are complete (tests/test_convergence.py runs them from the pages), and
  docs/detection.md repeats the README's commands;
- the README's model-zoo table lists every config with the numbers of configs/metafile.yml;
- docs/layout.md names every package of restv2_mm/ and only paths that exist;
- the configs docs/custom-dataset.md shows build, as written, into a Runner with their data
  sets, ImageNet weights, optimizer, schedulers and evaluator on tiny folders.

Generic over docs/*.md: a new page is checked as soon as it exists.
"""
import glob
import importlib.util
import os
import os.path as osp
import re
import shlex

import pytest
import yaml

from doc_commands import (REPO, code_blocks, logical_lines, option_value, quick_start, read,
                          shell_commands, without_code_blocks)

PAGES = ['README.md'] + sorted(
    osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'docs', '*.md')))
INLINE_CODE = re.compile(r'`([^`\n]+)`')
MD_LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
HTML_LINK = re.compile(r'<(?:img|a)\b[^>]*?\b(?:src|href)="([^"]+)"')
HEADING = re.compile(r'^#{1,6}\s+(.+?)\s*#*\s*$', re.M)
# A repository path: starts a word (not inside another path such as mmdet/.mim/tools/).
REPO_PATH = re.compile(r'(?<![\w./:$-])((?:configs|tools|tests|restv2_mm|docs)/[\w./*{},-]*[\w*}])'
                       r'(?:::([\w*\[\]/.-]+))?')
MM_CONFIG = re.compile(r'\b(mmdet|mmseg)::([\w./-]+\.py)')
MODULE_NAME = re.compile(r'(?<![\w./])restv2_mm(?:\.\w+)+')
TOOL = re.compile(r'(?<![\w./$-])tools/([\w/]+\.(?:py|sh))')
OPTION = re.compile(r'^\[?(--[a-z][\w-]*)')
# Names of the form test_* that are no tests: mmengine's BaseModel.test_step.
NOT_TESTS = {'test_step'}
# Launchers pass their extra arguments to these tools.
LAUNCHED = {'dist_train.sh': 'train.py', 'slurm_train.sh': 'train.py', 'dist_test.sh': 'test.py'}
# Files a page defines for the reader to save (a ```python block that starts `# configs/NAME.py`).
DEFINED_FILE = re.compile(r'\A# ((?:configs)/[\w.-]+\.py)\n')


def defined_files():
    return {m.group(1) for page in PAGES for block in code_blocks(read(page))
            if (m := DEFINED_FILE.match(block.text))}


def snippets(page):
    """Where a page names things: its code blocks' lines and its inline code spans."""
    text = read(page)
    spans = [line for block in code_blocks(text) for line in logical_lines(block.text)]
    spans += INLINE_CODE.findall(without_code_blocks(text))
    return spans


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading).strip().lower()
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(page):
    seen, result = {}, set()
    for heading in HEADING.findall(without_code_blocks(read(page))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f'{base}-{count}')
    return result


def expand_braces(pattern):
    match = re.search(r'\{([^{}]*)\}', pattern)
    if not match:
        return [pattern]
    return [expanded for choice in match.group(1).split(',')
            for expanded in expand_braces(pattern[:match.start()] + choice +
                                          pattern[match.end():])]


# ----------------------------------------------------------------------------- links
@pytest.mark.parametrize('page', PAGES)
def test_relative_links_and_anchors_resolve(page):
    text = without_code_blocks(read(page))
    text = INLINE_CODE.sub('', text)
    broken = []
    for target in MD_LINK.findall(text) + HTML_LINK.findall(text):
        if re.match(r'[a-z]+:', target):
            continue  # http(s), mailto
        path, _, anchor = target.partition('#')
        resolved = osp.normpath(osp.join(osp.dirname(osp.join(REPO, page)), path)) if path \
            else osp.join(REPO, page)
        if not osp.exists(resolved):
            broken.append(f'{target}: no such file')
        elif anchor and resolved.endswith('.md') and \
                anchor not in anchors(osp.relpath(resolved, REPO)):
            broken.append(f'{target}: no heading with anchor #{anchor}')
    assert not broken, f'{page}: ' + '; '.join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    readme = read('README.md')
    unlinked = [p for p in PAGES[1:] if f']({p})' not in readme]
    assert not unlinked, f'README.md does not link {unlinked}'


# ----------------------------------------------------------------------------- named things
@pytest.mark.parametrize('page', PAGES)
def test_named_paths_exist(page):
    defined = defined_files()
    missing = []
    for span in snippets(page):
        for match in REPO_PATH.finditer(span):
            path, test_name = match.group(1).rstrip('.'), match.group(2)
            found = [f for pattern in expand_braces(path)
                     for f in glob.glob(osp.join(REPO, pattern))]
            if not found and path not in defined:
                missing.append(path)
            elif test_name:
                name = test_name.split('[')[0]
                source = read(path)
                if not re.search(r'^def ' + re.escape(name).replace(r'\*', r'\w*') + r'\b',
                                 source, re.M):
                    missing.append(f'{path}::{test_name}')
    assert not missing, f'{page} names what does not exist: {sorted(set(missing))}'


@pytest.mark.parametrize('page', PAGES)
def test_named_tests_exist(page):
    """A bare `test_name` (or `test_name[param]`, `test_prefix_*`) is a test of tests/."""
    sources = '\n'.join(read(osp.relpath(p, REPO))
                        for p in glob.glob(osp.join(REPO, 'tests', '*.py')))
    missing = []
    for span in INLINE_CODE.findall(without_code_blocks(read(page))):
        for name in re.findall(r'(?<![\w/:.])(test_\w+\*?)(?:\[[^\]]*\])?(?![\w./])', span):
            if name in NOT_TESTS:
                continue
            pattern = r'^def ' + re.escape(name).replace(r'\*', r'\w*') + r'\b'
            if not re.search(pattern, sources, re.M):
                missing.append(name)
    assert not missing, f'{page} names tests that do not exist: {missing}'


@pytest.mark.parametrize('page', PAGES)
def test_named_library_configs_exist(page):
    missing = []
    for span in snippets(page):
        for scope, path in MM_CONFIG.findall(span):
            package = 'mmdet' if scope == 'mmdet' else 'mmseg'
            root = importlib.util.find_spec(package).submodule_search_locations[0]
            if not osp.isfile(osp.join(root, '.mim', 'configs', path)):
                missing.append(f'{scope}::{path}')
    assert not missing, f'{page} names configs {package} does not ship: {missing}'


@pytest.mark.parametrize('page', PAGES)
def test_named_modules_and_their_names_exist(page):
    missing = []
    for span in snippets(page):
        for dotted in MODULE_NAME.findall(span):
            parts = dotted.split('.')
            # The longest prefix that is a module or package; the next part must be defined in it.
            for end in range(len(parts), 0, -1):
                base = osp.join(REPO, *parts[:end])
                module = base + '.py' if osp.isfile(base + '.py') else \
                    osp.join(base, '__init__.py') if osp.isdir(base) else None
                if module:
                    break
            rest = parts[end:]
            if module is None or (rest and not re.search(rf'\b{rest[0]}\b', read(module))):
                missing.append(dotted)
    assert not missing, f'{page} names what restv2_mm does not define: {missing}'


def declared_options(tool):
    """The `--options` a tool declares: in its own file (a .sh tool in its `case`: `--name)`) or
    in the restv2_mm code it runs (a .py tool's imports; a .sh tool's `python -m restv2_mm...`)."""
    with open(osp.join(REPO, 'tools', tool), encoding='utf-8') as f:
        text = f.read()
    declared = set(re.findall(r'^\s*(--[a-z][\w-]*)\)', text, re.M))
    if tool.endswith('.py') or re.search(r'-m restv2_mm\b', text):
        for source in glob.glob(osp.join(REPO, 'restv2_mm', '**', '*.py'), recursive=True):
            with open(source, encoding='utf-8') as f:
                text += f.read()
    return declared | set(re.findall(r"""['"](--[a-z][\w-]*)['"]""", text))


@pytest.mark.parametrize('page', PAGES)
def test_tool_options_exist(page):
    unknown = []
    for span in snippets(page):
        for match in TOOL.finditer(span):
            tool = match.group(1)
            if not osp.isfile(osp.join(REPO, 'tools', tool)):
                continue  # test_named_paths_exist reports it
            # The words of this command: up to the next shell separator or comment.
            rest = re.split(r'\s(?:&&|\|\|?|;|#)\s|\s#', span[match.end():] + ' ')[0]
            try:
                words = shlex.split(rest)
            except ValueError:
                words = rest.split()
            options = {m.group(1) for w in words if (m := OPTION.match(w))}
            if not options:
                continue
            name = osp.basename(tool)
            declared = declared_options(LAUNCHED.get(name, tool))
            unknown += [f'tools/{tool} {o}' for o in sorted(options - declared)]
    assert not unknown, f'{page} gives tools options they do not have: {unknown}'


# ----------------------------------------------------------------------------- commands
def ci_commands():
    with open(osp.join(REPO, '.ci', 'run')) as f:
        lines = [line.strip() for line in f]
    return [shlex.split(line) for line in lines
            if line and not line.startswith(('#', 'set ', 'cd '))]


def test_readme_set_up_and_test_commands_are_what_ci_runs():
    text = read('README.md')
    section = text.split('## Set up and test', 1)[1].split('\n## ', 1)[0]
    block = next(b for b in code_blocks(section) if b.lang == 'bash')
    readme = [shlex.split(line) for line in logical_lines(block.text)]
    assert readme == ci_commands() == [['bash', 'tools/setup_env.sh'], ['python', '-m', 'pytest']]
    # The quick start starts with the same set-up.
    quick = text.split('## Quick start', 1)[1]
    first = next(b for b in code_blocks(quick) if b.lang == 'bash')
    assert shlex.split(logical_lines(first.text)[0]) == ci_commands()[0]


def test_quick_starts_the_convergence_test_runs_are_complete():
    det = quick_start('README.md', 'configs/mask_rcnn_restv2_t_tiny_coco.py')
    seg = quick_start('docs/segmentation.md', 'configs/upernet_restv2_t_tiny_ade20k.py')
    for commands in (det, seg):
        # The test command reads what training writes into its work dir.
        work_dir = option_value(commands['train'], '--work-dir')
        assert commands['test'][3].startswith(work_dir + '/'), commands
        assert commands['demo'][4] == commands['test'][3], commands
    # The detection page shows the README's quick start, word for word.
    in_detection_page = quick_start('docs/detection.md', 'configs/mask_rcnn_restv2_t_tiny_coco.py')
    assert in_detection_page == det
    with open(osp.join(REPO, 'tests', 'test_convergence.py')) as f:
        convergence = f.read()
    assert "quick_start('README.md'" in convergence
    assert "quick_start('docs/segmentation.md'" in convergence


@pytest.mark.parametrize('page', PAGES)
def test_documented_commands_parse(page):
    """Every command of a ```bash block is valid shell words (quotes closed)."""
    assert shell_commands(page) is not None


# ----------------------------------------------------------------------------- the zoo table
def zoo_table():
    """README's model-zoo rows: {config path: {column: cell}}."""
    section = read('README.md').split('## Model zoo', 1)[1].split('\n## ', 1)[0]
    rows = [line for line in section.splitlines() if line.startswith('| [')]
    header = [c.strip() for c in next(line for line in section.splitlines()
                                      if line.startswith('| config')).strip('|').split('|')]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip('|').split('|')]
        config = re.match(r'\[[^\]]+\]\(([^)]+)\)', cells[0]).group(1)
        assert config not in table, f'{config} twice in the README zoo table'
        table[config] = dict(zip(header, cells))
    return table


def test_zoo_table_lists_every_config_with_the_metafile_numbers():
    table = zoo_table()
    configs = sorted(osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'configs', '*.py')))
    assert sorted(table) == configs
    with open(osp.join(REPO, 'configs', 'metafile.yml')) as f:
        models = yaml.safe_load(f)['Models']
    for model in models:
        row, meta = table[model['Config']], model['Metadata']
        assert row['params'] == f'{meta["Parameters"] / 1e6:.2f}M', model['Name']
        assert row['GFLOPs all ops'] == f'{meta["FLOPs"] / 1e9:.2f}', model['Name']
        assert row['GFLOPs w/o attn matmuls'] == \
            f'{meta["FLOPs (without attention matmuls)"] / 1e9:.2f}', model['Name']
        assert row['style'] == meta['Attention'], model['Name']
        results = {k: v for r in model.get('Results', []) for k, v in r['Metrics'].items()}
        labels = {'box AP': 'box', 'mask AP': 'mask', 'mIoU(ms+flip)': 'mIoU'}
        expected = ', '.join(f'{labels[k]} {v}' for k, v in results.items()) or '-'
        assert row['paper'] == expected, model['Name']
    # The quick-start configs are not in the metafile: the full config's network, so its params.
    for tiny, full in (('mask_rcnn_restv2_t_tiny_coco', 'mask_rcnn_restv2_t'),
                       ('upernet_restv2_t_tiny_ade20k', 'upernet_restv2_t')):
        assert table[f'configs/{tiny}.py']['params'] == table[f'configs/{full}.py']['params']


# ----------------------------------------------------------------------------- layout
def test_layout_page_names_every_package_and_only_existing_paths():
    block = code_blocks(read('docs/layout.md'))[0].text
    named = set()
    for line in block.splitlines():
        first_column = '' if line.startswith(' ') else re.split(r'\s{2,}', line.strip())[0]
        for path in filter(None, (p.strip() for p in first_column.split(','))):
            named.add(path.rstrip('/'))
            assert osp.exists(osp.join(REPO, path)), f'docs/layout.md names {path}'
    packages = {osp.relpath(osp.dirname(p), REPO)
                for p in glob.glob(osp.join(REPO, 'restv2_mm', '*', '__init__.py'))}
    modules = {osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'restv2_mm', '*.py'))
               if not p.endswith('__init__.py')}
    unnamed = sorted((packages | modules) - named)
    assert not unnamed, f'docs/layout.md misses {unnamed}'
    for top in os.listdir(REPO):
        if osp.isdir(osp.join(REPO, top)) and not top.startswith('.') and \
                top not in ('data', 'work_dirs', 'checkpoints') and '.egg-info' not in top \
                and top != '__pycache__':
            assert any(n == top or n.startswith(top + '/') for n in named), \
                f'docs/layout.md misses the folder {top}/'


# ----------------------------------------------------------------------------- custom data
CUSTOM_PAGE = 'docs/custom-dataset.md'
# The tiny ADE20K classes in the order of the page's own-classes example, by their ADE20K label.
TINY_ADE20K_IN_PAGE_ORDER = (1, 3, 4, 10, 8, 13, 21)


def custom_dataset_configs():
    """The config files docs/custom-dataset.md shows: {'configs/NAME.py': text}."""
    return {m.group(1): block.text for block in code_blocks(read(CUSTOM_PAGE))
            if block.lang == 'python' and (m := DEFINED_FILE.match(block.text))}


def scratch_configs(folder, pages_configs):
    """``folder``/configs: the repository's configs (linked) plus the page's files (written)."""
    configs = osp.join(folder, 'configs')
    os.makedirs(configs)
    for entry in os.listdir(osp.join(REPO, 'configs')):
        os.symlink(osp.join(REPO, 'configs', entry), osp.join(configs, entry))
    for path, text in pages_configs.items():
        with open(osp.join(folder, path), 'w') as f:
            f.write(text)


def write_data_folder(data_root, dataset_type):
    """A tiny folder of the layout the config reads: COCO, ADE20K, or ADE20K renumbered 1..K."""
    import cv2
    import numpy as np

    from restv2_mm.datasets.tiny_ade20k import make_tiny_ade20k
    from restv2_mm.datasets.tiny_coco import make_tiny_coco
    if dataset_type == 'CocoDataset':
        make_tiny_coco(data_root, num_train=4, num_val=2)
        return
    make_tiny_ade20k(data_root, num_train=2, num_val=2)
    if dataset_type == 'BaseSegDataset':
        # The page's own classes: label i is the i-th class of its list, 0 stays "no label".
        lut = np.zeros(256, np.uint8)
        for new, ade in enumerate(TINY_ADE20K_IN_PAGE_ORDER, start=1):
            lut[ade] = new
        for label_map in glob.glob(osp.join(data_root, 'annotations', '*', '*.png')):
            cv2.imwrite(label_map, lut[cv2.imread(label_map, cv2.IMREAD_UNCHANGED)])


@pytest.fixture(scope='module')
def custom_dataset_workspace(tmp_path_factory):
    """A folder as the page describes it: configs/ with the page's files, ImageNet weights at
    checkpoints/restv2_tiny_224.pth (random, official layout); data folders are added per test."""
    import torch
    from reference_restv2 import random_official_state_dict
    folder = str(tmp_path_factory.mktemp('custom_dataset'))
    scratch_configs(folder, custom_dataset_configs())
    os.makedirs(osp.join(folder, 'checkpoints'))
    state_dict = random_official_state_dict('tiny', seed=3)
    torch.save({'model': state_dict}, osp.join(folder, 'checkpoints', 'restv2_tiny_224.pth'))
    return folder, state_dict


def test_custom_dataset_page_shows_both_tasks():
    configs = custom_dataset_configs()
    assert {'configs/mask_rcnn_restv2_t_my_coco.py', 'configs/upernet_restv2_t_my_classes.py',
            'configs/upernet_restv2_t_my_ade20k.py'} <= set(configs), sorted(configs)


def check_model(cfg, scope, num_classes, imagenet):
    """Build the config's model: heads of ``num_classes``, and the ImageNet weights the config
    names loaded into the backbone."""
    import torch
    from mmengine.registry import MODELS

    model = MODELS.build(cfg.model)
    if scope == 'mmdet':
        heads = (model.roi_head.bbox_head, model.roi_head.mask_head)
    else:
        heads = (model.decode_head, model.auxiliary_head)
    assert [head.num_classes for head in heads] == [num_classes] * 2
    model.backbone.init_weights()
    stem = model.backbone.state_dict()['stem.proj.0.weight']
    assert torch.equal(stem, imagenet['stem.proj.0.weight'])


@pytest.mark.slow
@pytest.mark.parametrize('config', sorted(custom_dataset_configs()))
def test_custom_dataset_config_builds_as_the_page_says(
        config, custom_dataset_workspace, tmp_path, monkeypatch):
    """Built the way tools/train.py's Runner builds it: the data loaders over the page's folder
    layout and classes, the lr schedulers and the evaluator, and where the page's file changes
    the model, the model with the ImageNet weights it names (slow: seconds of CPU per config)."""
    import torch
    from mmengine.evaluator import Evaluator
    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS, init_default_scope
    from mmengine.runner import Runner

    from restv2_mm.utils.config import check_pretrained_weights, load_tool_config
    from restv2_mm.utils.launch import use_fp32_without_cuda

    folder, imagenet = custom_dataset_workspace
    # Every config runs in its own folder (the ADE20K ones read data/my_ade/ with different
    # labels), with the shared configs/ and checkpoints/.
    monkeypatch.chdir(tmp_path)
    for shared in ('configs', 'checkpoints'):
        os.symlink(osp.join(folder, shared), shared)
    cfg, scope = load_tool_config(config, work_dir=str(tmp_path / 'work'))
    init_default_scope(scope)
    dataset_cfg = cfg.train_dataloader.dataset
    write_data_folder(dataset_cfg.data_root, dataset_cfg.type)
    check_pretrained_weights(cfg)
    use_fp32_without_cuda(cfg)
    classes = cfg.get('classes')
    num_classes = len(classes) if classes else (80 if scope == 'mmdet' else 150)

    for loader_cfg, split in ((cfg.train_dataloader, 'train'), (cfg.test_dataloader, 'test')):
        loader = Runner.build_dataloader(loader_cfg, seed=0)
        if classes:
            assert tuple(loader.dataset.metainfo['classes']) == tuple(classes)
        for sample in next(iter(loader))['data_samples']:
            if scope == 'mmdet':
                labels = sample.gt_instances.labels
            else:
                labels = sample.gt_sem_seg.data.unique()
                labels = labels[labels != 255]
            # Random crops may leave a training sample without objects; test samples have them.
            assert len(labels) or split == 'train', f'{split} sample without labels'
            assert bool((labels >= 0).all() and (labels < num_classes).all()), labels

    # The page's own schedules (on a stand-in optimizer: the optimizer is the base config's).
    stand_in = OptimWrapper(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4))
    for scheduler in cfg.param_scheduler:
        PARAM_SCHEDULERS.build(dict(scheduler, optimizer=stand_in))
    evaluator = Evaluator(cfg.test_evaluator)
    evaluator.dataset_meta = loader.dataset.metainfo
    assert evaluator.metrics

    if re.search(r'^model = ', custom_dataset_configs()[config], re.M):
        check_model(cfg, scope, num_classes, imagenet)
