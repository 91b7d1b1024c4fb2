"""Run the project's command-line tools from tests, as a user would, and fail with their output.

One helper for every end-to-end test (and a free port for the distributed launchers): a non-zero
exit fails the test with the command and the tail of its combined stdout + stderr, which is
what one needs to see when a tool breaks.
"""
import os.path as osp
import socket
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


def free_port() -> int:
    """A TCP port nobody listens on now, for a distributed launcher's --master_port."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]
