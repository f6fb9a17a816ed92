"""Two torchrun "nodes" on this machine, for the multi-process tests of the entry points.

Each node is its own `torchrun --nnodes 2 --node_rank R --nproc_per_node 1`, meeting at a localhost
rendezvous (torchrun's static one, as `experiments/launch.py --nnodes` runs it): rank 1 then has
LOCAL_RANK 0, so a script that took LOCAL_RANK for RANK, or assumed `--standalone`, shows it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_nodes(script_and_args: list[str], *, cwd, env: dict, timeout: float) -> str:
    """Start both nodes of `python -m torch.distributed.run ... SCRIPT ARGS`, wait for both; assert
    both exit 0 (naming the node and its last output otherwise); return both outputs."""
    port = free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               *script_and_args],
                              cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=timeout)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    failed = [f"node {rank} exited {node.returncode}:\n{out[-3000:]}"
              for rank, (node, out) in enumerate(zip(nodes, outputs)) if node.returncode != 0]
    assert not failed, "\n---\n".join(failed)
    return "\n".join(outputs)


def write_launcher(path: Path, *body: str) -> Path:
    """A script for run_two_nodes that imports from the repository and tests/, then runs `body`
    (lines of Python: install a scripted sampler, call an entry point's main with sys.argv[1:])."""
    path.write_text("\n".join(["import sys", f"sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]", *body]) + "\n")
    return path


def node_env() -> dict:
    """One thread per process, no GPU, the repository importable."""
    return dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
