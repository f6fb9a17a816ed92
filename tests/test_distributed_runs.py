"""Beyond one node: two torchrun "nodes" on localhost, hybrid sharding on a 2x2 mesh, and sharded
checkpoints resumed on another number of ranks, each against one process (gloo on CPU).

Runs use a reference model other than the policy (`model.ref_path`, a tiny model of another seed):
the KL term then moves the weights in every GRPO step (the tiny policy earns no reward), so the
steps after a resume depend on the restored optimizer state. `rollout.prompts_per_batch=1`: each
prompt samples from its own seeded generator, whichever rank holds it (with larger chunks, the
chunks, and so the samples, follow the number of prompts per rank).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import train
from experiments import launch
from nodes import free_port
from test_train import BASE, metrics

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
CONFIG = {**BASE, "rollout": {**BASE["rollout"], "prompts_per_batch": 1},  # test_train's run, one prompt per sampler call
          "checkpoint": {"every": 1, "keep_last": 3}, "log": {"progress_bar": False, "tensorboard": False}}


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    from mixedr1.models.tiny import build_tiny_model

    folder = tmp_path_factory.mktemp("runs")
    config = json.loads(json.dumps(CONFIG))
    config["model"]["ref_path"] = str(build_tiny_model(folder / "reference", seed=1))
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def torchrun(prefix, config_path: Path, *overrides: str, processes: int = 1) -> list[subprocess.Popen]:
    return [subprocess.Popen([*prefix, str(ROOT / "train.py"), str(config_path), *overrides], cwd=ROOT, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(processes)]


def wait(processes: list[subprocess.Popen]) -> str:
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    failed = [out[-3000:] for p, out in zip(processes, outputs) if p.returncode != 0]
    assert not failed, "\n---\n".join(failed)
    return "\n".join(outputs)


def standalone(nproc: int) -> tuple[str, ...]:
    return (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port()))


@pytest.fixture(scope="module")
def one_process(config_path) -> Path:
    run = config_path.parent / "one"
    train.main([str(config_path), f"output_dir={run}"])
    return run


@pytest.fixture(scope="module")
def two_nodes(config_path) -> Path:
    """Two torchrun processes, --nnodes 2 --nproc_per_node 1 each, meeting at a localhost rendezvous:
    the commands experiments/launch.py gives each node."""
    run, endpoint = config_path.parent / "two_nodes", f"127.0.0.1:{free_port()}"
    nodes = []
    for node_rank in (0, 1):
        settings = launch.Settings(nproc=1, nnodes=2, node_rank=node_rank, rdzv_endpoint=endpoint)
        prefix = settings.prefix()
        assert prefix[0] == "torchrun" and "--standalone" not in prefix
        nodes += torchrun((sys.executable, "-m", "torch.distributed.run", *prefix[1:]), config_path, f"output_dir={run}")
    wait(nodes)
    return run


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{step:06d}" / "model.safetensors")


def assert_same_run(a: Path, b: Path, *, exact: bool) -> None:
    """Same data and samples (rewards equal), losses and weights equal (or to fp32 rounding: gradients
    summed over ranks in another order)."""
    ma, mb = metrics(a), metrics(b)
    assert [r["step"] for r in ma] == [r["step"] for r in mb] == [1, 2, 3]
    assert ma[1]["kl"] > 0 and ma[2]["optim/grad_norm"] > 0  # the GRPO steps move the weights
    for ra, rb in zip(ma, mb):
        assert ra.get("reward/total") == rb.get("reward/total")
        assert rb["loss/total"] == (ra["loss/total"] if exact else pytest.approx(ra["loss/total"], rel=1e-5, abs=1e-9))
    wa, wb = weights(a, 3), weights(b, 3)
    assert wa.keys() == wb.keys()
    for key in wa:
        if exact:
            assert torch.equal(wa[key], wb[key]), key
        else:
            torch.testing.assert_close(wb[key], wa[key], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_two_nodes_give_the_same_losses_and_weights_as_one(one_process, two_nodes):
    assert_same_run(one_process, two_nodes, exact=False)
    files = {p.name for p in (two_nodes / "checkpoints" / "step-000003" / "sharded_state").iterdir()}
    assert files == {".metadata", "__0_0.distcp", "__1_0.distcp"}  # each rank wrote its own shards
    assert {p.name for p in (two_nodes / "checkpoints" / "step-000003").glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}


def resumed_copy(run: Path, name: str) -> Path:
    """`run` as if stopped after its step-2 checkpoint: step 3 is done again by the resume."""
    copy = run.parent / name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "step-000003")
    return copy


@pytest.mark.slow
def test_resume_on_another_number_of_ranks(config_path, one_process, two_nodes):
    """The restored weights and optimizer state are bit-exact on any world size (test_sharded_state_...
    below); the step after it is bit-exact on the same world size, and on another one equal to the
    straight run to fp32 rounding (and to the run of the new size to the same rounding)."""
    two_to_one = resumed_copy(two_nodes, "two_to_one")
    train.main([str(config_path), f"output_dir={two_to_one}", "train.resume=true"])
    assert "at step 2" in (two_to_one / "train.log").read_text()
    assert_same_run(two_nodes, two_to_one, exact=False)
    assert_same_run(one_process, two_to_one, exact=False)

    one_to_two, two_to_two = resumed_copy(one_process, "one_to_two"), resumed_copy(two_nodes, "two_to_two")
    wait(torchrun(standalone(2), config_path, f"output_dir={one_to_two}", "train.resume=true"))
    wait(torchrun(standalone(2), config_path, f"output_dir={two_to_two}", "train.resume=true"))
    assert_same_run(one_process, one_to_two, exact=False)
    assert_same_run(two_nodes, two_to_two, exact=True)


@pytest.mark.slow
def test_hybrid_mesh_2x2_gives_the_same_losses_and_weights_as_one(config_path, one_process):
    run = config_path.parent / "hybrid"
    out = wait(torchrun(standalone(4), config_path, f"output_dir={run}", "distributed.mesh=[2,2]"))
    assert "hybrid, sharded within 2 ranks and replicated 2 times" in out
    assert_same_run(one_process, run, exact=False)


def test_a_mesh_that_does_not_fit_the_ranks_is_refused(config_path, tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"distributed.mesh=\[2, 2\] needs 4 ranks, this run has 1"):
        train.main([str(config_path), f"output_dir={tmp_path / 'run'}", "distributed.mesh=[2,2]"])


def test_launch_prints_each_nodes_command_and_a_torchrun_across_nodes(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    launch.main(["table2", "--rows", "yorn", "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "node0:29500",
                 "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    for rank in (0, 1):
        assert f"# node {rank}: python experiments/launch.py table2 --rows yorn --nnodes 2 --rdzv-endpoint node0:29500 " \
               f"--node-rank {rank}" in lines
    commands = [line for line in lines if line.startswith("torchrun")]
    assert len(commands) == 2  # train, then evaluate
    for command in commands:
        assert command.startswith("torchrun --nnodes 2 --node_rank 1 --nproc_per_node 8 --master_addr node0 "
                                  "--master_port 29500 ")
    with pytest.raises(SystemExit, match="expected HOST:PORT"):
        launch.main(["table2", "--nnodes", "2", "--dry-run"])
    with pytest.raises(SystemExit, match="--node-rank 2: expected 0 .. 1"):
        launch.main(["table2", "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "node0:29500", "--dry-run"])
