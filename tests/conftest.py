import pytest
import torch

from mixedr1.models.tiny import build_tiny_model


def pytest_collection_modifyitems(config, items):
    """GPU-only tests are skipped, not failed, on machines without CUDA (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # the tiny models run many small ops: one thread is several times faster
    yield


# One tiny model of each family for the whole session (read only: a test that writes into a model
# directory builds its own).


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen"), seed=0)


@pytest.fixture(scope="session")
def tiny_internvl_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-internvl"), seed=0, family="internvl")


@pytest.fixture(scope="session")
def tiny_qwen3vl_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3vl"), seed=0, family="qwen3_vl")
