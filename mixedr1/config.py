"""One typed config for a run: dataclass defaults, then the YAML file, then `a.b=value` overrides.

Every field is declared once below with its default and a comment saying what it does. Loading
checks every key and value against these declarations: an unknown key or a value of the wrong type
or outside its choices fails at start with the dotted key named (`reward.bmas_combine: expected
one of 'sum', 'mean', got 'max'`). Cross-field constraints are checked once, in `Config.validate`.

Where docs/method.md marks a **Decision**, the field that makes it carries the reference, so a user
can switch to the other reading.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the declarations (the message names the key)."""


PROBLEM_TYPES = ("yorn", "mcq", "chart", "grounding", "open_ended")


@dataclass
class ModelConfig:
    path: str = "tiny"  # local Hugging Face directory of the policy; "tiny" builds a random tiny Qwen2.5-VL
    ref_path: Optional[str] = None  # reference model directory; None = the policy's initial weights
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: on CUDA, bf16 compute with fp32 master weights for the policy (FSDP2 policy or autocast) and bf16 for the reference; fp32 on CPU
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = "auto"  # auto: FA2 if installed on CUDA, else sdpa
    gradient_checkpointing: bool = False  # recompute decoder activations in backward
    freeze_vision: bool = True  # keep the vision tower fixed (the usual VLM-R1 / EasyR1 setting)
    trust_remote_code: bool = False  # only for model families transformers does not ship natively
    min_pixels: Optional[int] = None  # processor's lower bound on H*W after resize (None: processor default)
    max_pixels: Optional[int] = None  # processor's upper bound on H*W after resize (None: processor default)
    ref_cpu_offload: bool = False  # keep the frozen reference on CPU between uses (FSDP2 CPU offload, or moved per step in a world of one)


@dataclass
class DataConfig:
    train_file: str = ""  # JSONL in the canonical schema (docs/method.md §1), relative to data_root or absolute
    eval_file: Optional[str] = None  # held-out JSONL for in-training evaluation
    data_root: str = "."  # images are resolved relative to this folder and must stay inside it
    on_bad_record: Literal["error", "skip"] = "error"  # skip: count and report bad records instead of stopping
    problem_types: list[str] = field(default_factory=lambda: list(PROBLEM_TYPES))  # Table 2: which types train
    scale: float = 1.0  # Table 3: fraction of each category to keep (0.5 = halve; > 1 repeats)
    max_prompt_tokens: int = 4096  # prompts longer than this (text + image tokens) are an error
    shuffle: bool = True  # shuffle the training items each epoch (seeded by train.seed)
    synth_items: int = 0  # > 0: generate this many synthetic items per type into output_dir/data
    synth_heldout_items: int = 8  # with synth_items: held-out items per type (heldout.jsonl)


@dataclass
class RolloutConfig:
    group_size: int = 8  # G: completions sampled per prompt (docs/method.md §4)
    temperature: float = 1.0  # sampling temperature (docs/method.md §4: 1.0)
    top_p: float = 1.0  # nucleus sampling; 1.0 = off
    top_k: int = 0  # top-k sampling; 0 = off
    max_new_tokens: int = 1024  # completion length cap; also Dr.GRPO's constant normaliser
    prompts_per_batch: int = 8  # prompts sampled together in one call of the sampler


@dataclass
class GRPOConfig:
    beta: float = 0.04  # k3 KL coefficient to the frozen reference (docs/method.md §4); 0 = no reference model
    eps_low: float = 0.2  # ratio clipped below at 1 - eps_low
    eps_high: float = 0.2  # ratio clipped above at 1 + eps_high (DAPO's clip-higher when > eps_low)
    adv_eps: float = 1e-4  # δ in (R - mean) / (std + δ)
    adv_scale: Literal["group", "none"] = "group"  # none: Dr.GRPO, no std scaling
    adv_std: Literal["unbiased", "population"] = "unbiased"  # docs/method.md §4 Decision: unbiased like TRL/verl
    loss_agg: Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"] = "seq_mean_token_mean"
    updates_per_rollout: int = 1  # μ: policy updates on each rollout batch (docs/method.md §4: 1)


# The open-ended rewards that score with an external judge model (Table 4), not the policy's embeddings.
JUDGE_NAMES = ("modernbert", "sbert", "llm_judge")


@dataclass
class RewardConfig:
    format_weight: float = 1.0  # λ in R = R_acc + λ·R_fmt (docs/method.md §3 Decision: 1.0)
    chart_tolerance: float = 1e-2  # numeric tolerance of the chart reward (docs/method.md §3)
    chart_tolerance_mode: Literal["absolute", "relative"] = "absolute"  # docs/method.md §3 Decision: absolute
    open_ended: Literal["bmas", "bipartite", "modernbert", "sbert", "llm_judge"] = "bmas"  # Table 4 designs
    bmas_combine: Literal["sum", "mean"] = "sum"  # docs/method.md §3 Decision: sum of both directions, range [-2, 2]
    judge_model: Optional[str] = None  # local directory of the external model for modernbert|sbert|llm_judge
    judge_batch_size: int = 64  # texts (modernbert|sbert) or prompts (llm_judge) per judge forward
    judge_max_tokens: int = 512  # each response / ground truth keeps at most this many tokens in the judge
    judge_max_new_tokens: int = 8  # llm_judge: greedy reply length, enough for "Score: 0.75"


@dataclass
class OptimConfig:
    lr: float = 3e-6  # AdamW learning rate (docs/method.md §4)
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    schedule: Literal["constant", "cosine"] = "constant"  # after warm-up
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping


@dataclass
class TrainConfig:
    algorithm: Literal["grpo", "sft"] = "grpo"  # sft: the paper's "+SFT baseline" rows
    steps: int = 100  # optimizer steps
    prompts_per_step: int = 64  # global prompts per step (docs/method.md §4: 64, i.e. 512 completions at G=8)
    micro_batch_size: int = 8  # completions per forward/backward on one rank
    sft_warmup_steps: int = 0  # SFT steps before GRPO, for models that cannot yet follow the format
    sft_lr: Optional[float] = None  # learning rate of the SFT warm-up; None = optim.lr
    seed: int = 0
    resume: bool = False  # continue from the latest checkpoint in output_dir
    max_nonfinite_steps: int = 3  # this many non-finite losses in a row stop the run
    cpu_threads: int = 0  # torch.set_num_threads on CPU; 0 = torch's default (1 is fastest for tiny models)


@dataclass
class DistributedConfig:
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    fsdp: bool = True  # shard with FSDP2 (fully_shard) when world size > 1
    reshard_after_forward: bool = True  # FSDP2: free gathered parameters after each forward


@dataclass
class LogConfig:
    every: int = 1  # write metrics every this many steps
    sample_every: int = 10  # write sample completions as text every this many steps
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass
class CheckpointConfig:
    every: int = 50  # save every this many steps (and at the end); 0 = only at the end
    keep_last: int = 2  # keep this many checkpoints


@dataclass
class Config:
    output_dir: str = "runs/default"  # one run directory: config, logs, metrics, samples, checkpoints
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> "Config":
        """Cross-field constraints, checked once at load; raises ConfigError naming the keys."""
        checks = [
            (self.rollout.group_size >= 2, "rollout.group_size must be >= 2 (GRPO compares samples within a group)"),
            (self.rollout.temperature > 0, "rollout.temperature must be > 0"),
            (0 < self.rollout.top_p <= 1, "rollout.top_p must be in (0, 1]"),
            (self.rollout.top_k >= 0, "rollout.top_k must be >= 0"),
            (self.rollout.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1"),
            (self.rollout.prompts_per_batch >= 1, "rollout.prompts_per_batch must be >= 1"),
            (self.grpo.beta >= 0, "grpo.beta must be >= 0"),
            (self.grpo.eps_low >= 0 and self.grpo.eps_high >= 0, "grpo.eps_low and grpo.eps_high must be >= 0"),
            (self.grpo.eps_low < 1, "grpo.eps_low must be < 1 (the lower clip bound 1 - eps_low must stay positive)"),
            (self.grpo.adv_eps >= 0, "grpo.adv_eps must be >= 0"),
            (self.grpo.updates_per_rollout >= 1, "grpo.updates_per_rollout must be >= 1"),
            (self.reward.chart_tolerance >= 0, "reward.chart_tolerance must be >= 0"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (len(self.optim.betas) == 2 and all(0 <= b < 1 for b in self.optim.betas), "optim.betas must be two numbers in [0, 1)"),
            (self.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
            (self.optim.grad_clip >= 0, "optim.grad_clip must be >= 0"),
            (self.train.steps >= 0, "train.steps must be >= 0"),
            (self.train.prompts_per_step >= 1, "train.prompts_per_step must be >= 1"),
            (self.train.micro_batch_size >= 1, "train.micro_batch_size must be >= 1"),
            (self.train.sft_warmup_steps >= 0, "train.sft_warmup_steps must be >= 0"),
            (self.train.max_nonfinite_steps >= 1, "train.max_nonfinite_steps must be >= 1"),
            (self.train.cpu_threads >= 0, "train.cpu_threads must be >= 0"),
            (self.data.scale > 0, "data.scale must be > 0"),
            (self.data.max_prompt_tokens >= 1, "data.max_prompt_tokens must be >= 1"),
            (self.data.synth_items >= 0 and self.data.synth_heldout_items >= 0, "data.synth_items and data.synth_heldout_items must be >= 0"),
            (self.checkpoint.every >= 0, "checkpoint.every must be >= 0"),
            (self.checkpoint.keep_last >= 1, "checkpoint.keep_last must be >= 1"),
            (self.log.every >= 1 and self.log.sample_every >= 1, "log.every and log.sample_every must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        unknown = [t for t in self.data.problem_types if t not in PROBLEM_TYPES]
        if unknown or not self.data.problem_types:
            raise ConfigError(f"data.problem_types: expected a non-empty list of {PROBLEM_TYPES}, got {self.data.problem_types}")
        if self.reward.open_ended in JUDGE_NAMES and not self.reward.judge_model:
            raise ConfigError(f"reward.judge_model: required when reward.open_ended is {self.reward.open_ended!r}")
        return self


# ----------------------------------------------------------------------------------------------
# Loading: dict -> dataclasses with type checks


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the declared type `tp`; return it (ints widen to float). Raises ConfigError."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _from_dict(tp, value, key + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads `3e-6` (no dot) as a string: accept numeric text
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported declared type {tp!r}")  # a bug in the declarations


def _from_dict(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(values[name], hints[name], prefix + name) for name in names if name in values}
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. grpo.beta=0.0")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML at `path` (if any), then `a.b=value` overrides; validated."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        with open(path) as f:
            try:
                loaded = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
        values = loaded or {}
    for text in overrides:
        keys, value = _parse_override(text)
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
        node[keys[-1]] = value
    try:
        config = _from_dict(Config, values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None
    return config.validate()


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable again by `load_config`)."""
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
