"""Run the project's command-line tools from tests, as a user would, and fail with their output.

One helper for every end-to-end test (and the environment for the distributed launchers): a
non-zero exit fails the test with the command and the tail of its combined stdout + stderr, which
is what one needs to see when a tool breaks.
"""
import os
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def run(command, env=None, timeout=900, cwd=REPO, tail=6000) -> str:
    """Run ``command`` (a list) in ``cwd``; its stdout + stderr, after asserting exit code 0."""
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, (f'{" ".join(map(str, command))} exited {proc.returncode}:\n'
                                  f'{output[-tail:]}')
    return output


def run_tool(script, *args, cwd=REPO, env=None, timeout=900) -> str:
    """``python tools/<script> ARGS`` (this interpreter) from ``cwd``; see :func:`run`."""
    return run([sys.executable, osp.join(REPO, 'tools', script), *map(str, args)], env=env,
               timeout=timeout, cwd=cwd)


def launcher_env(env=None) -> dict:
    """``env`` (default: this process's) for tools/dist_train.sh and dist_test.sh on this machine.

    PYTHON is this interpreter (a bare ``python`` may be another one, e.g. a virtual environment
    that is not activated). MASTER_PORT and PORT are removed, so the scripts run torchrun
    --standalone, whose rendezvous store binds a port the system picks: a port picked here and
    released before the launcher binds it could be taken by another process in between.
    """
    env = dict(os.environ if env is None else env, PYTHON=sys.executable)
    for name in ('MASTER_PORT', 'PORT'):
        env.pop(name, None)
    return env
