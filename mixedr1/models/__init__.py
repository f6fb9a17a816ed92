"""Loading the policy from a local Hugging Face directory: model, processor, freezing, checkpointing.

- `load_model` / `load_policy_and_processor`: local directories only (`local_files_only=True`),
  every family of `mixedr1.families` (Qwen2.5-VL, the paper's; Qwen2-VL; InternVL in transformers'
  native format; Qwen3-VL) through `AutoModelForImageTextToText`.
- `mixedr1.models.processors`: the image-only processors (no torchvision) and `load_processor`.
- `mixedr1.models.tiny`: random tiny models of each family for tests and the CPU demo
  (`python -m mixedr1.models tiny --out DIR [--family NAME]`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from mixedr1.config import ModelConfig
from mixedr1.families import vision_tower
from mixedr1.models.processors import load_processor

from mixedr1.models.processors import local_dir as _local_dir

# ----------------------------------------------------------------------------------------------
# Choices: dtype and attention kernel


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" = bf16 on CUDA (what Qwen2.5-VL was trained in), fp32 on CPU (bf16 matmuls are slow there)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"model.dtype: expected one of 'auto', {', '.join(map(repr, names))}, got {dtype!r}")
    return names[dtype]


def resolve_attn_implementation(attn_implementation: str, device: torch.device) -> str:
    """"auto" = flash_attention_2 when flash_attn is installed and the model runs on CUDA, else sdpa."""
    if attn_implementation != "auto":
        return attn_implementation
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


# ----------------------------------------------------------------------------------------------
# Model


def load_model(
    path: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    attn_implementation: str = "auto",
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Load a vision-language model from a local directory onto `device` (default CPU), in eval mode.

    Uses `AutoModelForImageTextToText` (Qwen2-VL, Qwen2.5-VL, native InternVL, LLaVA-like). Only with
    `trust_remote_code=True` does a directory whose config transformers does not know fall back to
    `AutoModelForCausalLM` with the directory's own code (e.g. InternVL's original release).
    """
    path = _local_dir(path, "model")
    device = torch.device(device) if device is not None else torch.device("cpu")
    kwargs = dict(
        dtype=resolve_dtype(dtype, device),
        attn_implementation=resolve_attn_implementation(attn_implementation, device),
        local_files_only=True,
        trust_remote_code=trust_remote_code,
    )
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except ValueError as e:  # "Unrecognized configuration class ..." for remote-code-only models
        if not trust_remote_code:
            raise ValueError(
                f"{path}: transformers has no image-text-to-text class for this config ({e}). If the directory "
                f"ships its own modelling code, set model.trust_remote_code=true."
            ) from None
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device).eval()


def freeze_vision_tower(model: nn.Module) -> int:
    """Stop gradients through the vision encoder (VLM-R1 / EasyR1 default); returns the frozen parameter count."""
    tower = vision_tower(model)
    count = 0
    for p in tower.parameters():
        p.requires_grad_(False)
        count += p.numel()
    return count


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant checkpointing: works with a frozen vision tower (inputs without grad) and FSDP2.
    The caller must also run training forwards with `use_cache=False`."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the new name (transformers >= 5.2x); the old one warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)



def load_policy_and_processor(model_cfg: ModelConfig, device: str | torch.device, *, tiny_dir: str | Path | None = None):
    """The policy (with the config's freezing and checkpointing applied) and its processor.

    `model_cfg.path == "tiny"` builds the random tiny model of `model_cfg.tiny_family` into `tiny_dir`
    (or a fresh temporary folder) unless a model is already there, so the reference model can be
    loaded from the same place.
    Returns `(model, processor, path)`.
    """
    path = Path(model_cfg.path)
    if model_cfg.path == "tiny":
        import tempfile

        from mixedr1.models.tiny import build_tiny_model

        path = Path(tiny_dir) if tiny_dir is not None else Path(tempfile.mkdtemp(prefix="mixedr1-tiny-"))
        if not (path / "config.json").is_file():
            build_tiny_model(path, family=model_cfg.tiny_family)
    model = load_model(
        path,
        dtype=model_cfg.dtype,
        attn_implementation=model_cfg.attn_implementation,
        trust_remote_code=model_cfg.trust_remote_code,
        device=device,
    )
    if model_cfg.freeze_vision:
        freeze_vision_tower(model)
    if model_cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    processor = load_processor(
        path,
        min_pixels=model_cfg.min_pixels,
        max_pixels=model_cfg.max_pixels,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    return model, processor, path


