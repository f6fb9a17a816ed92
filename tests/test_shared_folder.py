"""distributed.check_shared_folder: a multi-process job refuses to start when a rank cannot see what rank 0
writes in its output folder (two gloo processes; "another filesystem" is simulated on rank 1)."""

import pathlib

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from mixedr1 import distributed
from nodes import free_port


def _worker(rank: int, port: int, folder: str, blind_rank: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        if rank == blind_rank:  # this rank's filesystem does not hold rank 0's file
            real_read = pathlib.Path.read_text

            def read_text(path, *args, **kwargs):
                if path.name.startswith(".shared-check-"):
                    raise FileNotFoundError(path)
                return real_read(path, *args, **kwargs)

            pathlib.Path.read_text = read_text
        try:
            distributed.check_shared_folder(pathlib.Path(folder), "the test folder")
            results[rank] = "ok"
        except distributed.SharedFolderError as e:
            results[rank] = str(e)
    finally:
        dist.destroy_process_group()


def _run(tmp_path, blind_rank: int) -> dict:
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), str(tmp_path / "run"), blind_rank, results), nprocs=2, join=True)
    return dict(results)


@pytest.mark.timeout(120)
def test_a_folder_every_rank_sees_passes_and_is_left_clean(tmp_path):
    assert _run(tmp_path, blind_rank=-1) == {0: "ok", 1: "ok"}
    assert list((tmp_path / "run").iterdir()) == []  # the probe file is removed


@pytest.mark.timeout(120)
def test_a_rank_that_cannot_see_the_folder_stops_every_rank_with_one_message(tmp_path):
    results = _run(tmp_path, blind_rank=1)
    assert results[0] == results[1]  # both ranks raise, so none waits on the other
    assert "rank 1 on " in results[0] and "rank 0 on " not in results[0]  # only the blind rank is named
    assert str(tmp_path / "run") in results[0] and "the test folder" in results[0]


def test_a_world_of_one_does_nothing(tmp_path):
    distributed.check_shared_folder(tmp_path / "absent", "a single process")
    assert not (tmp_path / "absent").exists()
