"""Checkpoints and tiny-model directories carry the processor files of a released model directory.

They name transformers' own classes (never our image-only ones), so `AutoProcessor`, vLLM and
lmms-eval load a checkpoint as they load its base model, while `load_processor` still reads them
without torchvision. Every reference here is transformers' own: its image processors' and
tokenizers' own `save_pretrained`, its Auto-class registries (`PROCESSOR_MAPPING_NAMES`,
`IMAGE_PROCESSOR_MAPPING_NAMES`), its loaders, and `InternVLProcessor`'s signature.
"""

import importlib.util
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer, Qwen2VLConfig
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
from transformers.processing_utils import ProcessorMixin

from mixedr1.checkpoint import save_hf_model
from mixedr1.families import FAMILIES, family_of_dir
from mixedr1.models import load_model
from mixedr1.models.processors import IMAGE_ONLY_PROCESSORS, load_processor
from mixedr1.models.tiny import build_tiny_model
from mixedr1.policy import PolicyModel

FAMILIES_UNDER_TEST = ("qwen2_5_vl", "internvl")
# The model's files and a checkpoint's own bookkeeping: everything in a saved directory but the processor's.
NOT_PROCESSOR_FILES = {"config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", "manifest.json"}
KINDS = ("tiny", "checkpoint")  # a directory of `build_tiny_model`, and one of `save_hf_model`


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return {family: build_tiny_model(tmp_path_factory.mktemp(f"tiny-{family}"), family=family) for family in FAMILIES_UNDER_TEST}


@pytest.fixture(scope="module")
def checkpoint_dirs(tiny_dirs, tmp_path_factory):
    """What training writes: `save_hf_model` of a `PolicyModel` and the processor `load_processor` gave."""
    return {
        family: save_hf_model(tmp_path_factory.mktemp(f"ckpt-{family}") / "step-000001", PolicyModel(load_model(path)),
                              load_processor(path), rank=0)
        for family, path in tiny_dirs.items()
    }


@pytest.fixture(scope="module")
def saved_dirs(tiny_dirs, checkpoint_dirs):
    return {"tiny": tiny_dirs, "checkpoint": checkpoint_dirs}


@pytest.fixture(scope="module")
def reference_dirs(tiny_dirs, tmp_path_factory):
    """Official-style directories written by transformers' own classes from the same parts: the image
    processor's own `save_pretrained` (`preprocessor_config.json`), the tokenizer's own (tokenizer files
    and `chat_template.jinja`) with the processor class transformers registers for the model type,
    set as `ProcessorMixin.save_pretrained` sets it."""
    references = {}
    for family, path in tiny_dirs.items():
        processor = load_processor(path)
        reference = tmp_path_factory.mktemp(f"reference-{family}")
        processor.image_processor.save_pretrained(reference)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        tokenizer.chat_template = processor.chat_template
        tokenizer._set_processor_class(_stock_processor(path))
        tokenizer.save_pretrained(reference)
        references[family] = reference
    return references


def _model_type(path: Path) -> str:
    return AutoConfig.from_pretrained(path, local_files_only=True).model_type


def _stock_processor(path: Path) -> str:
    return PROCESSOR_MAPPING_NAMES[_model_type(path)]


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _processor_files(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.suffix != ".pt"} - NOT_PROCESSOR_FILES


def _image(seed: int = 0, size=(70, 130)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def _prompt(processor, n_images: int = 1) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": "Is there a red circle?"}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _outputs(processor, images) -> dict:
    return dict(processor(text=[_prompt(processor, len(images))], images=images, return_tensors="pt"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES_UNDER_TEST)
def test_files_are_those_of_an_official_style_directory(saved_dirs, reference_dirs, family, kind):
    saved, reference = saved_dirs[kind][family], reference_dirs[family]
    stock = _stock_processor(saved)
    # InternVL's `-hf` directories add a flat processor_config.json holding InternVLProcessor's own
    # argument, which no transformers class writes without a video processor (torchvision).
    extra = {"processor_config.json"} if family == "internvl" else set()
    assert _processor_files(saved) == _processor_files(reference) | extra
    assert (saved / "chat_template.jinja").read_text() == (reference / "chat_template.jinja").read_text()

    image_config, reference_image_config = _json(saved / "preprocessor_config.json"), _json(reference / "preprocessor_config.json")
    assert image_config["image_processor_type"] == IMAGE_PROCESSOR_MAPPING_NAMES[_model_type(saved)]["torchvision"]
    assert image_config["processor_class"] == stock
    added = {"processor_class"}
    if family == "qwen2_5_vl":  # the released file's top-level pixel bounds, the same as `size`
        assert (image_config["min_pixels"], image_config["max_pixels"]) == (
            image_config["size"]["shortest_edge"], image_config["size"]["longest_edge"])
        added |= {"min_pixels", "max_pixels"}
    assert {k: v for k, v in image_config.items() if k not in added} == reference_image_config

    # transformers 5.23 also records how a tokenizer was loaded (is_local, local_files_only): not a class name.
    load_time = {"is_local", "local_files_only"}
    tokenizer_config, reference_tokenizer_config = (
        {k: v for k, v in _json(d / "tokenizer_config.json").items() if k not in load_time} for d in (saved, reference))
    assert tokenizer_config == reference_tokenizer_config
    assert _json(saved / "tokenizer_config.json")["processor_class"] == stock
    if family == "internvl":
        processor_config = _json(saved / "processor_config.json")
        assert processor_config == {"image_seq_length": AutoConfig.from_pretrained(saved).image_seq_length, "processor_class": stock}
        assert "image_seq_length" in inspect.signature(transformers.InternVLProcessor.__init__).parameters
    for name in _processor_files(saved):  # none of our class names anywhere
        assert "ImageOnly" not in (saved / name).read_text(encoding="utf-8"), name


def _stock_image_processor(path: Path):
    """`AutoImageProcessor` with the PIL backend; transformers 5.17's `AutoImageProcessor` needs
    torchvision even for that, so there the PIL class its registry names for the model type."""
    try:
        return AutoImageProcessor.from_pretrained(path, backend="pil", local_files_only=True)
    except ImportError:
        name = IMAGE_PROCESSOR_MAPPING_NAMES[_model_type(path)]["pil"]
        return getattr(transformers, name).from_pretrained(path, local_files_only=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES_UNDER_TEST)
def test_transformers_own_loaders_read_the_files_as_ours_do(saved_dirs, tiny_dirs, family, kind):
    saved = saved_dirs[kind][family]
    assert _model_type(saved) in FAMILIES[family].model_types
    ours = load_processor(saved)
    images = [_image(0), _image(1, size=(56, 112))]
    stock_images = _stock_image_processor(saved)
    assert type(stock_images).__name__ == IMAGE_PROCESSOR_MAPPING_NAMES[_model_type(saved)]["pil"]
    ours_out = _outputs(ours, images)
    if family == "internvl":  # tiled as InternVLProcessor asks (crop_to_patches=True)
        stock_out = stock_images(images, crop_to_patches=True, return_tensors="pt")
    else:
        stock_out = stock_images(images, return_tensors="pt")
        assert torch.equal(ours_out["image_grid_thw"], stock_out["image_grid_thw"])
    assert torch.equal(ours_out["pixel_values"], stock_out["pixel_values"])

    tokenizer = AutoTokenizer.from_pretrained(saved, local_files_only=True)
    text = _prompt(ours) + "<think>I count the shapes.</think><answer>B</answer><|im_end|>"
    base_tokenizer = load_processor(tiny_dirs[family]).tokenizer
    assert tokenizer(text).input_ids == base_tokenizer(text).input_ids == ours.tokenizer(text).input_ids
    assert tokenizer.chat_template == ours.chat_template  # the tokenizer alone finds it too (chat_template.jinja)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES_UNDER_TEST)
def test_auto_processor_is_pointed_at_the_stock_processor(saved_dirs, family, kind):
    """Every file `AutoProcessor` consults for the processor class names transformers' own (before
    this, they named ours, and `AutoProcessor` silently returned a bare tokenizer)."""
    saved = saved_dirs[kind][family]
    stock = _stock_processor(saved)
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        if (saved / name).is_file():
            assert _json(saved / name)["processor_class"] == stock, name
    if importlib.util.find_spec("torchvision") is None:  # it reaches the stock class, whose video processor needs torchvision
        with pytest.raises((ImportError, ValueError), match="(?i)torchvision"):
            AutoProcessor.from_pretrained(saved, local_files_only=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES_UNDER_TEST)
def test_auto_processor_gives_ours_outputs(saved_dirs, family, kind):
    pytest.importorskip("torchvision", reason="transformers' stock processors need a video processor, which needs torchvision")
    if family == "internvl":
        pytest.skip("the tiny InternVL tokenizer does not name start_image_token / end_image_token / context_image_token / "
                    "video_token as InternVLProcessor requires (the released -hf tokenizers do)")
    saved = saved_dirs[kind][family]
    stock = AutoProcessor.from_pretrained(saved, local_files_only=True)
    assert type(stock).__name__ == _stock_processor(saved)
    ours = load_processor(saved)
    # 56 x 84 px needs no resize, so torchvision's image processor (the one AutoProcessor may pick)
    # and our PIL one differ by float rounding at most.
    images = [_image(0, size=(56, 84))]
    a = _outputs(ours, images)
    b = dict(stock(text=[_prompt(ours)], images=images, return_tensors="pt"))
    assert set(a) <= set(b)
    for key in a:
        if key == "pixel_values":
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)
        else:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("family", FAMILIES_UNDER_TEST)
def test_load_processor_round_trip_gives_identical_outputs(tiny_dirs, checkpoint_dirs, tmp_path, family):
    before = load_processor(tiny_dirs[family])
    before.save_pretrained(tmp_path / "alone")  # a processor alone: no config.json to ask
    assert family_of_dir(tmp_path / "alone") is FAMILIES[family]
    images = [_image(0)]
    expected = _outputs(before, images)
    for path in (tiny_dirs[family], checkpoint_dirs[family], tmp_path / "alone"):
        after = load_processor(path)
        assert type(after) is IMAGE_ONLY_PROCESSORS[family], path
        assert after.chat_template == before.chat_template
        assert after.image_processor.to_dict() == before.image_processor.to_dict()
        assert getattr(after, "image_seq_length", None) == getattr(before, "image_seq_length", None)
        got = _outputs(after, images)
        assert set(got) == set(expected)
        for key in expected:
            assert torch.equal(got[key], expected[key]), (path, key)


@pytest.mark.parametrize("family", FAMILIES_UNDER_TEST)
def test_directories_saved_before_this_layout_still_load(tiny_dirs, tmp_path, family):
    """Checkpoints written earlier carry transformers 5's nested processor_config.json naming our class;
    saving again over one leaves no stale file for transformers to prefer."""
    processor = load_processor(tiny_dirs[family])
    ProcessorMixin.save_pretrained(processor, tmp_path)  # the old layout
    assert type(processor).__name__ in (tmp_path / "processor_config.json").read_text()
    old = load_processor(tmp_path)
    expected = _outputs(processor, [_image(0)])
    for key, value in _outputs(old, [_image(0)]).items():
        assert torch.equal(value, expected[key]), key
    processor.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert ("processor_config.json" in files) == (family == "internvl")
    assert "ImageOnly" not in "".join((tmp_path / name).read_text() for name in files)


def test_a_qwen2_vl_directory_names_qwen2_vl_processor(tiny_dirs, tmp_path):
    """The processor class follows the model saved in the directory (Qwen2-VL and Qwen2.5-VL share
    our image-only processor)."""
    Qwen2VLConfig().save_pretrained(tmp_path)
    processor = load_processor(tiny_dirs["qwen2_5_vl"])
    processor.save_pretrained(tmp_path)
    stock = PROCESSOR_MAPPING_NAMES["qwen2_vl"]
    assert stock == "Qwen2VLProcessor"
    assert _json(tmp_path / "preprocessor_config.json")["processor_class"] == stock
    assert _json(tmp_path / "tokenizer_config.json")["processor_class"] == stock
    assert type(load_processor(tmp_path)) is IMAGE_ONLY_PROCESSORS["qwen2_5_vl"]
