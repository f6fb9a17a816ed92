"""Sharded checkpoints: the streamed Hugging Face export against `save_pretrained`, and the weights and
optimizer state restored bit for bit from 2 ranks onto 1 and from 1 onto 2 (gloo processes)."""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors import safe_open
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
from transformers import AutoConfig, AutoModelForImageTextToText

from mixedr1 import distributed
from mixedr1.checkpoint import load_train_state, save_checkpoint, save_hf_model
from mixedr1.models import load_model
from mixedr1.policy import PolicyModel
from nodes import free_port


def _safetensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            assert f.metadata() == {"format": "pt"}
        tensors.update(load_file(path))
    return tensors


def _tied_tiny(tiny_dir: Path) -> torch.nn.Module:
    config = AutoConfig.from_pretrained(tiny_dir)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    return model


@pytest.mark.parametrize("family", ["qwen2_5_vl", "internvl", "qwen3_vl", "qwen2_5_vl_tied"])
def test_streamed_export_writes_what_save_pretrained_writes(family, tiny_qwen_dir, tiny_internvl_dir, tiny_qwen3vl_dir, tmp_path):
    """Same tensors under the same names (the checkpoint's original format, tied weights once), the
    same config files; above the shard size, shard files and an index `from_pretrained` follows."""
    tiny = {"qwen2_5_vl": tiny_qwen_dir, "internvl": tiny_internvl_dir, "qwen3_vl": tiny_qwen3vl_dir,
            "qwen2_5_vl_tied": tiny_qwen_dir}[family]
    hf = _tied_tiny(tiny) if family.endswith("tied") else load_model(tiny)
    hf.save_pretrained(tmp_path / "reference")
    reference = _safetensors(tmp_path / "reference")
    streamed = save_hf_model(tmp_path / "streamed", PolicyModel(hf), None, rank=0)
    sharded = save_hf_model(tmp_path / "sharded", PolicyModel(hf), None, rank=0, max_shard_bytes=200_000)
    for directory in (streamed, sharded):
        got = _safetensors(directory)
        assert got.keys() == reference.keys()
        for key in reference:
            assert got[key].dtype == reference[key].dtype and torch.equal(got[key], reference[key]), key
        for name in ("config.json", "generation_config.json"):
            assert json.loads((directory / name).read_text()) == json.loads((tmp_path / "reference" / name).read_text())
    assert [p.name for p in streamed.glob("*.safetensors")] == ["model.safetensors"]
    files = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(reference) and set(index["weight_map"].values()) == set(files)
    loaded = AutoModelForImageTextToText.from_pretrained(sharded).state_dict()
    for key, value in hf.state_dict().items():
        assert torch.equal(loaded[key], value), key


# ---- bit-exact restore across world sizes ---------------------------------------------------------


def _policy_and_optimizer(tiny_dir: Path):
    policy = PolicyModel(load_model(tiny_dir))
    if distributed.is_initialized():
        policy = distributed.shard_model(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.1)
    return policy, optimizer


def _two_steps(policy, optimizer) -> None:
    """Two AdamW steps with gradients that differ per element (every moment is then non-trivial)."""
    for scale in (7.0, 3.0):
        for p in policy.parameters():
            p.grad = torch.sin(p.detach() * scale)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _full_state(policy, optimizer) -> dict:
    """Collective: the whole weights and optimizer state, gathered onto rank 0's CPU (what the earlier
    checkpoints held), to compare with."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=distributed.is_initialized())
    return {"model": get_model_state_dict(policy, options=options),
            "optimizer": get_optimizer_state_dict(policy, optimizer, options=options)}


def _step(policy, optimizer, tiny_dir, directory: Path, mode: str, rank: int) -> dict:
    """mode "save": two steps, then a checkpoint; "load": restore that checkpoint. The state after it."""
    if mode == "save":
        _two_steps(policy, optimizer)
        save_checkpoint(directory, 2, policy, None, optimizer, None, {}, rank=rank, keep_last=1)
    else:
        state = load_train_state(directory / "checkpoints" / "step-000002", policy, optimizer, None, rank=rank)
        assert state["step"] == 2
    return _full_state(policy, optimizer)


def _worker(rank: int, world: int, port: int, tiny_dir: Path, directory: Path, mode: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.init_distributed("gloo", "cpu")
    try:
        policy, optimizer = _policy_and_optimizer(tiny_dir)
        full = _step(policy, optimizer, tiny_dir, directory, mode, rank)
        if rank == 0:
            torch.save(full, directory / f"{mode}.pt")
    finally:
        distributed.destroy_distributed()


def _on_two_ranks(tiny_dir: Path, directory: Path, mode: str) -> dict:
    mp.start_processes(_worker, args=(2, free_port(), tiny_dir, directory, mode), nprocs=2, start_method="spawn")
    return torch.load(directory / f"{mode}.pt", weights_only=True)


def _assert_equal(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.slow
@pytest.mark.parametrize("saved_on, loaded_on", [(2, 1), (1, 2)])
def test_sharded_state_restores_bit_exactly_on_another_number_of_ranks(tiny_qwen_dir, tmp_path, saved_on, loaded_on):
    if saved_on == 2:
        saved = _on_two_ranks(tiny_qwen_dir, tmp_path, "save")
        loaded = _step(*_policy_and_optimizer(tiny_qwen_dir), tiny_qwen_dir, tmp_path, "load", rank=0)
    else:
        saved = _step(*_policy_and_optimizer(tiny_qwen_dir), tiny_qwen_dir, tmp_path, "save", rank=0)
        loaded = _on_two_ranks(tiny_qwen_dir, tmp_path, "load")
    assert saved["optimizer"]["state"]  # AdamW moments and step counts, per parameter
    _assert_equal(saved, loaded)
    checkpoint = tmp_path / "checkpoints" / "step-000002"
    assert len(list((checkpoint / "sharded_state").glob("*.distcp"))) == saved_on
    exported = load_model(checkpoint).state_dict()  # the Hugging Face files hold the same weights
    for key, value in saved["model"].items():
        assert torch.equal(exported[key.removeprefix("hf.")], value), key


def test_an_optimizer_that_never_stepped_is_saved_as_absent(tiny_qwen_dir, tmp_path):
    """DCP's state-dict API creates missing optimizer state by stepping with lr 0 (step count 1): a
    checkpoint taken before any optimizer step (every step skipped) must not do that."""
    policy, optimizer = _policy_and_optimizer(tiny_qwen_dir)
    save_checkpoint(tmp_path, 1, policy, None, optimizer, None, {}, rank=0, keep_last=1)
    assert not optimizer.state
    policy, optimizer = _policy_and_optimizer(tiny_qwen_dir)
    load_train_state(tmp_path / "checkpoints" / "step-000001", policy, optimizer, None, rank=0)
    assert not optimizer.state


def test_a_checkpoint_of_the_earlier_layout_still_resumes(tiny_qwen_dir, tmp_path):
    """Before the sharded state, train_state.pt held the full optimizer state (gathered on rank 0)."""
    policy, optimizer = _policy_and_optimizer(tiny_qwen_dir)
    _two_steps(policy, optimizer)
    expected = _full_state(policy, optimizer)
    checkpoint = save_checkpoint(tmp_path, 2, policy, None, optimizer, None, {"nonfinite_in_a_row": 0}, rank=0, keep_last=1)
    state = torch.load(checkpoint / "train_state.pt", weights_only=True)
    state["optimizer"] = expected["optimizer"]
    torch.save(state, checkpoint / "train_state.pt")
    (checkpoint / "sharded_state" / ".metadata").unlink()  # not read
    policy, optimizer = _policy_and_optimizer(tiny_qwen_dir)
    assert load_train_state(checkpoint, policy, optimizer, None, rank=0)["step"] == 2
    _assert_equal(expected["optimizer"], _full_state(policy, optimizer)["optimizer"])
