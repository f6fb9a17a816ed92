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
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from mixedr1.families import FAMILIES  # import-light: no torch, no transformers


class InputError(ValueError):
    """Bad input the user can fix (a config, a data file, a benchmark folder): the command line prints
    its one-line message and exits with status 2 (`run_main`), without a traceback."""


class ConfigError(InputError):
    """A config file or override that does not fit the declarations (the message names the key)."""

    def __init__(self, message: str, key: Optional[str] = None):
        super().__init__(message)
        self.key = key  # the dotted key at fault, when one is


PROBLEM_TYPES = ("yorn", "mcq", "chart", "grounding", "open_ended")


def bounded(default: Any, *, ge: Any = None, gt: Any = None, le: Any = None, lt: Any = None) -> Any:
    """A field with its allowed range, declared next to it and checked at load (`None` is allowed
    where the type is Optional). Every float field must also be finite, bounded or not."""
    return field(default=default, metadata={"bounds": {"ge": ge, "gt": gt, "le": le, "lt": lt}})


_BOUND_TEXT = {"ge": ">= {}", "gt": "> {}", "le": "<= {}", "lt": "< {}"}
_BOUND_OK = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}


@dataclass
class ModelConfig:
    path: str = "tiny"  # local Hugging Face directory of the policy; "tiny" builds a random tiny model of `tiny_family`
    tiny_family: str = "qwen2_5_vl"  # with path "tiny": the tiny model's family, a name of mixedr1.families.FAMILIES (qwen2_5_vl, internvl, qwen3_vl)
    ref_path: Optional[str] = None  # reference model directory; None = the policy's initial weights
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: on CUDA, bf16 compute with fp32 master weights for the policy (FSDP2 policy or autocast) and bf16 for the reference; fp32 on CPU
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = "auto"  # auto: FA2 if installed on CUDA, else sdpa
    gradient_checkpointing: bool = False  # recompute decoder activations in backward
    freeze_vision: bool = True  # keep the vision tower fixed (the usual VLM-R1 / EasyR1 setting)
    trust_remote_code: bool = False  # only for model families transformers does not ship natively
    min_pixels: Optional[int] = bounded(None, ge=1)  # processor's lower bound on H*W after resize (None: processor default)
    max_pixels: Optional[int] = bounded(None, ge=1)  # processor's upper bound on H*W after resize (None: processor default)
    ref_cpu_offload: bool = False  # keep the frozen reference on CPU between uses (FSDP2 CPU offload, or moved per step in a world of one)


@dataclass
class DataConfig:
    train_file: str = ""  # JSONL in the canonical schema (docs/method.md §1), relative to data_root or absolute
    eval_file: Optional[str] = None  # held-out JSONL for in-training evaluation
    data_root: str = "."  # images are resolved relative to this folder and must stay inside it
    on_bad_record: Literal["error", "skip"] = "error"  # skip: count and report bad records instead of stopping
    problem_types: list[str] = field(default_factory=lambda: list(PROBLEM_TYPES))  # Table 2: which types train
    scale: float = bounded(1.0, gt=0)  # Table 3: fraction of each category to keep (0.5 = halve; > 1 repeats)
    max_prompt_tokens: int = bounded(4096, ge=1)  # prompts longer than this (text + image tokens) are an error
    shuffle: bool = True  # shuffle the training items each epoch (seeded by train.seed)
    synth_items: int = bounded(0, ge=0)  # > 0: generate this many synthetic items per type into output_dir/data
    synth_heldout_items: int = bounded(8, ge=0)  # with synth_items: held-out items per type (heldout.jsonl)
    # With synth_items, which synthetic task (mixedr1.data.synth): scenes = several small shapes and bar
    # charts (tests); visual_facts = one fact per 112 px image that the tiny model can learn (the quick start).
    synth_task: Literal["scenes", "visual_facts"] = "scenes"
    synth_warmup_items: int = bounded(0, ge=0)  # with synth_items: warm-up items per type (warmup.jsonl) whose answers carry no information about their images
    sft_warmup_file: Optional[str] = None  # the SFT warm-up's JSONL (relative to data_root or absolute); None = train_file. The demo's warmup.jsonl teaches the format only, so GRPO must learn the answers from the reward


@dataclass
class RolloutConfig:
    group_size: int = bounded(8, ge=2)  # G: completions sampled per prompt (docs/method.md §4)
    temperature: float = bounded(1.0, gt=0)  # sampling temperature (docs/method.md §4: 1.0)
    top_p: float = bounded(1.0, gt=0, le=1)  # nucleus sampling; 1.0 = off
    top_k: int = bounded(0, ge=0)  # top-k sampling; 0 = off
    max_new_tokens: int = bounded(1024, ge=1)  # completion length cap; also Dr.GRPO's constant normaliser
    prompts_per_batch: int = bounded(8, ge=1)  # prompts sampled together in one call of the sampler
    # How the sampler decodes (mixedr1/rollout.py): static = a KV cache preallocated for prompt + max_new_tokens and
    # a batch shape fixed for the whole decode (finished rows masked, not dropped; no host sync per step);
    # dynamic = a growing cache that drops finished rows. Both draw the same tokens for a seed.
    decode: Literal["static", "dynamic"] = "static"
    # static decode only: each decode step (forward + sampling) under torch.compile(fullgraph=True), with CUDA
    # graphs on CUDA; auto = on for CUDA, off on CPU (compiling takes ~40 s there, more than short CPU runs save)
    compile: Literal["auto", True, False] = "auto"
    sync_every: int = bounded(16, ge=1)  # static decode: check whether every row has finished once per this many steps


@dataclass
class GRPOConfig:
    beta: float = bounded(0.04, ge=0)  # k3 KL coefficient to the frozen reference (docs/method.md §4); 0 = no reference model
    eps_low: float = bounded(0.2, ge=0, lt=1)  # ratio clipped below at 1 - eps_low
    eps_high: float = bounded(0.2, ge=0)  # ratio clipped above at 1 + eps_high (DAPO's clip-higher when > eps_low)
    adv_eps: float = bounded(1e-4, ge=0)  # δ in (R - mean) / (std + δ)
    adv_scale: Literal["group", "none"] = "group"  # none: Dr.GRPO, no std scaling
    adv_std: Literal["unbiased", "population"] = "unbiased"  # docs/method.md §4 Decision: unbiased like TRL/verl
    loss_agg: Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"] = "seq_mean_token_mean"
    updates_per_rollout: int = bounded(1, ge=1)  # μ: policy updates on each rollout batch (docs/method.md §4: 1)


# The open-ended rewards that score with an external judge model (Table 4), not the policy's embeddings.
JUDGE_NAMES = ("modernbert", "sbert", "llm_judge")


@dataclass
class RewardConfig:
    format_weight: float = 1.0  # λ in R = R_acc + λ·R_fmt (docs/method.md §3 Decision: 1.0)
    chart_tolerance: float = bounded(1e-2, ge=0)  # numeric tolerance of the chart reward (docs/method.md §3)
    chart_tolerance_mode: Literal["absolute", "relative"] = "absolute"  # docs/method.md §3 Decision: absolute
    open_ended: Literal["bmas", "bipartite", "modernbert", "sbert", "llm_judge"] = "bmas"  # Table 4 designs
    bmas_combine: Literal["sum", "mean"] = "sum"  # docs/method.md §3 Decision: sum of both directions, range [-2, 2]
    judge_model: Optional[str] = None  # local directory of the external model for modernbert|sbert|llm_judge
    judge_batch_size: int = bounded(64, ge=1)  # texts (modernbert|sbert) or prompts (llm_judge) per judge forward
    judge_max_tokens: int = bounded(512, ge=1)  # each response / ground truth keeps at most this many tokens in the judge
    judge_max_new_tokens: int = bounded(8, ge=1)  # llm_judge: greedy reply length, enough for "Score: 0.75"


@dataclass
class OptimConfig:
    lr: float = bounded(3e-6, gt=0)  # AdamW learning rate (docs/method.md §4)
    weight_decay: float = bounded(0.0, ge=0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = bounded(1e-8, gt=0)
    warmup_steps: int = bounded(0, ge=0)  # linear warm-up from 0 to lr
    schedule: Literal["constant", "cosine"] = "constant"  # after warm-up
    grad_clip: float = bounded(1.0, ge=0)  # max global gradient norm; 0 = no clipping


@dataclass
class TrainConfig:
    algorithm: Literal["grpo", "sft"] = "grpo"  # sft: the paper's "+SFT baseline" rows
    steps: int = bounded(100, ge=0)  # optimizer steps
    prompts_per_step: int = bounded(64, ge=1)  # global prompts per step (docs/method.md §4: 64, i.e. 512 completions at G=8)
    micro_batch_size: int = bounded(8, ge=1)  # completions per forward/backward on one rank
    trim_padding: bool = True  # with packing false: micro-batches of rows of similar length, each cut to its longest row (false: rows in order, padded to the step's longest)
    # Sequence packing (mixedr1.policy.PackedBatch): each sequence's real tokens back to back in rows as
    # long as the step's longest sequence, attention kept inside each sequence (a 4-D block mask on
    # sdpa/eager; flash-attn varlen boundaries on flash_attention_2, untested on a GPU so far), log-probs
    # taken only at completion tokens. On by default: experiments/bench_step.py on CPU (tiny Qwen2.5-VL,
    # lengths uniform in 16..64) measured padded_token_fraction 0.048 against 0.114 trimmed and 0.222
    # untrimmed, and reference + update 0.45 s against 0.48 s trimmed. false: the padded rows above.
    packing: bool = True
    max_tokens_per_micro_batch: int = bounded(0, ge=0)  # with packing: token positions per packed micro-batch; 0 = micro_batch_size x the step's longest sequence (the memory of micro_batch_size untrimmed rows)
    sft_warmup_steps: int = bounded(0, ge=0)  # SFT steps before GRPO, for models that cannot yet follow the format
    sft_lr: Optional[float] = bounded(None, gt=0)  # learning rate of the SFT warm-up; None = optim.lr
    # The SFT target's reasoning (mixedr1.data.prompt.build_sft_target): canned = a fixed sentence per
    # type in <think> (teaches the format: the warm-up); none = <answer> alone, no <think> (Table 1's
    # "+SFT baseline" rows, "no thinking", evaluated with eval.py --prompt direct).
    sft_think: Literal["canned", "none"] = "canned"
    seed: int = bounded(0, ge=0, le=2**64 - 1)
    resume: bool = False  # continue from the latest checkpoint in output_dir
    overwrite: bool = False  # delete an earlier run in output_dir and start over (else an earlier run is an error unless resuming)
    max_nonfinite_steps: int = bounded(3, ge=1)  # this many non-finite losses in a row stop the run
    cpu_threads: int = bounded(0, ge=0)  # torch.set_num_threads on CPU; 0 = torch's default (1 is fastest for tiny models)


@dataclass
class DistributedConfig:
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    fsdp: bool = True  # shard with FSDP2 (fully_shard) when world size > 1
    reshard_after_forward: bool = True  # FSDP2: free gathered parameters after each forward
    sync_every_micro_batch: bool = True  # FSDP2: reduce-scatter gradients after every micro-batch; false: once per optimizer step (fewer collectives, but each rank holds a full unsharded gradient meanwhile)
    # FSDP2's device mesh: [] shards every parameter over all ranks; [replicate, shard] (product = the
    # number of ranks) is hybrid sharding: parameters sharded over `shard` consecutive ranks (one node:
    # shard = GPUs per node) and replicated over `replicate` such groups (the nodes), so the per-layer
    # all-gathers and reduce-scatters stay inside a node and only one gradient all-reduce crosses nodes.
    mesh: list[int] = field(default_factory=list)

    def __post_init__(self):
        if len(self.mesh) not in (0, 2) or any(n < 1 for n in self.mesh):
            raise ConfigError(f"distributed.mesh: expected [] or [replicate, shard] (two positive integers whose "
                              f"product is the number of ranks), got {self.mesh!r}", "distributed.mesh")


@dataclass
class LogConfig:
    every: int = bounded(1, ge=1)  # write metrics every this many steps
    sample_every: int = bounded(10, ge=1)  # write sample completions (every completion of a step, with rewards and advantages) every this many steps, and at the last step
    eval_every: int = bounded(0, ge=0)  # with data.eval_file: held-out metrics (heldout/...) every this many GRPO steps, besides before the first and after the last; 0 = only those two
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass
class CheckpointConfig:
    every: int = bounded(50, ge=0)  # save every this many steps (and at the end); 0 = only at the end
    keep_last: int = bounded(2, ge=1)  # keep this many checkpoints


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
            (len(self.optim.betas) == 2 and all(0 <= b < 1 for b in self.optim.betas), "optim.betas must be two numbers in [0, 1)"),
            # GRPO's format reward needs <think>: a warm-up without it would teach the wrong format.
            (not (self.train.algorithm == "grpo" and self.train.sft_warmup_steps > 0 and self.train.sft_think == "none"),
             "train.sft_think: none is for the SFT baseline (train.algorithm=sft); a GRPO warm-up needs canned"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        unknown = [t for t in self.data.problem_types if t not in PROBLEM_TYPES]
        if unknown or not self.data.problem_types:
            raise ConfigError(f"data.problem_types: expected a non-empty list of {PROBLEM_TYPES}, got {self.data.problem_types}")
        if self.reward.open_ended in JUDGE_NAMES and not self.reward.judge_model:
            raise ConfigError(f"reward.judge_model: required when reward.open_ended is {self.reward.open_ended!r}")
        if self.model.tiny_family not in FAMILIES:
            raise ConfigError(f"model.tiny_family: expected one of {', '.join(map(repr, FAMILIES))}, got "
                              f"{self.model.tiny_family!r}", key="model.tiny_family")
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
        if not any(value == c and type(value) is type(c) for c in choices):  # 1 is not True
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}", key)
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}", key)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}", key)
        return _from_dict(tp, value, key + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}", key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}", key)
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads `3e-6` (no dot) as a string: accept numeric text
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}", key)
        try:
            value = float(value)
        except OverflowError:  # an integer too large for a float
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}", key)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}", key)
        return value
    raise ConfigError(f"{key}: unsupported declared type {tp!r}")  # a bug in the declarations


def _from_dict(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(fields))})", prefix + str(key))
    kwargs = {}
    for name, value in values.items():
        key = prefix + name
        kwargs[name] = value = _coerce(value, hints[name], key)
        for bound, limit in fields[name].metadata.get("bounds", {}).items():
            if limit is not None and value is not None and not _BOUND_OK[bound](value, limit):
                raise ConfigError(f"{key} must be {_BOUND_TEXT[bound].format(limit)}, got {value!r}", key)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. grpo.beta=0.0")
    key, raw = text.split("=", 1)
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() else ""
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem})") from None
    return key.strip().split("."), value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key written twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: {key!r} is written twice in the same mapping")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML at `path` (if any), then `a.b=value` overrides; validated."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        with open(path, encoding="utf-8") as f:
            try:
                loaded = yaml.load(f, Loader=_UniqueKeyLoader)
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML: {e}") from None
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
        values = loaded or {}
    try:  # the file alone first, so that its errors are blamed on it
        _from_dict(Config, values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e), e.key) from None
    overridden = {}
    for text in overrides:
        keys, value = _parse_override(text)
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
        node[keys[-1]] = value
        overridden[".".join(keys)] = text
    try:
        config = _from_dict(Config, values)
    except ConfigError as e:
        blamed = next((text for key, text in overridden.items() if e.key and (e.key == key or e.key.startswith(key + "."))), None)
        raise ConfigError(f"override {blamed!r}: {e}" if blamed else str(e), e.key) from None
    return config.validate()


def run_main(main, *args, **kwargs):
    """`main(*args, **kwargs)` for a command line: an `InputError`, or a file or model directory that
    is not there, ends the process with its message on one line and exit status 2."""
    try:
        return main(*args, **kwargs)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
    except (InputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable again by `load_config`)."""
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
