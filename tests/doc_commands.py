"""The code blocks and shell commands that README.md and docs/*.md show, for the tests.

Tests run the commands a page shows instead of a copy of them (the convergence test runs the
README's quick start), and tests/test_docs.py checks what the pages name. A shell command is the
list of words shlex gives for one logical line of a ```bash block (backslash continuations
joined, comments dropped).
"""
import os.path as osp
import re
import shlex
import sys
from typing import Dict, List, NamedTuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FENCE = re.compile(r'^```(\w*)[^\n]*\n(.*?)^```[ \t]*$', re.S | re.M)


class Block(NamedTuple):
    lang: str
    text: str


def read(page: str) -> str:
    """The text of a page, given relative to the repository root (e.g. 'docs/detection.md')."""
    with open(osp.join(REPO, page), encoding='utf-8') as f:
        return f.read()


def code_blocks(markdown: str) -> List[Block]:
    """Every fenced block of a markdown text, in order."""
    return [Block(m.group(1), m.group(2)) for m in FENCE.finditer(markdown)]


def without_code_blocks(markdown: str) -> str:
    """The text with each fenced block blanked out (headings and links inside do not count)."""
    return FENCE.sub(lambda m: '\n' * m.group(0).count('\n'), markdown)


def logical_lines(shell: str) -> List[str]:
    """The lines of a shell text with backslash-newline continuations joined."""
    return [line for line in shell.replace('\\\n', ' ').split('\n') if line.strip()]


def shell_commands(page: str) -> List[List[str]]:
    """Every command of the page's ```bash blocks, as shlex words (comments dropped)."""
    commands = []
    for block in code_blocks(read(page)):
        if block.lang not in ('bash', 'sh', 'shell'):
            continue
        for line in logical_lines(block.text):
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def quick_start(page: str, config: str) -> Dict[str, List[str]]:
    """The train, test and demo commands of the bash block of ``page`` that trains ``config``.

    Returns {'train': words, 'test': words, 'demo': words}; raises naming the page when the
    block or one of the three commands is missing, so a test that runs them cannot silently
    run something else.
    """
    for block in code_blocks(read(page)):
        if block.lang != 'bash':
            continue
        commands = [shlex.split(line, comments=True) for line in logical_lines(block.text)]
        by_tool = {words[1]: words for words in commands
                   if len(words) > 2 and words[0] == 'python' and config in words[2:]}
        if 'tools/train.py' in by_tool:
            missing = [s for s in ('train', 'test', 'demo') if f'tools/{s}.py' not in by_tool]
            if missing:
                raise LookupError(f'{page}: the quick start of {config} has no '
                                  f'{", ".join(missing)} command')
            return {s: by_tool[f'tools/{s}.py'] for s in ('train', 'test', 'demo')}
    raise LookupError(f'{page} has no ```bash block with `python tools/train.py {config}`')


def option_value(words: List[str], option: str) -> str:
    """The word after ``option`` in a command."""
    return words[words.index(option) + 1]


def as_subprocess(words: List[str]) -> List[str]:
    """A documented `python tools/... configs/...` command, runnable from any directory.

    The words stay as written; only `python` becomes this interpreter and the paths of the
    repository's tools and configs become absolute, since the tests run from an empty folder
    (every other relative path, data and work dirs, is then inside that folder).
    """
    if words[0] != 'python':
        raise ValueError(f'not a python command: {" ".join(words)}')
    return [sys.executable] + [
        osp.join(REPO, w) if w.startswith(('tools/', 'configs/')) else w for w in words[1:]]
