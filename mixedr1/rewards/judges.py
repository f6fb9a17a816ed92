"""External-model open-ended rewards: the ModernBERT, Sentence-BERT and LLM-judge rows of Table 4.

These are the ablations BMAS is compared against (docs/method.md §3, "Open-ended ablations (Table 4)"). Each
scores the extracted answers of a group of G responses against the item's ground truth with a
separate model loaded once from a local directory (`reward.judge_model`, `local_files_only=True`),
kept on the trainer's device in eval mode, run batched under `torch.no_grad()`:

- **modernbert** `cos(mean(H^o), mean(H^g))` ∈ [-1, 1]: H are the last hidden states of the
  encoder, mean-pooled over the non-padding tokens (the tokenizer's [CLS]/[SEP] included, as the
  attention mask has them).
- **sbert** the sentence embedding as sentence-transformers defines it for the model directory
  (`modules.json`: pooling from `1_Pooling/config.json`, mean by default; `2_Normalize` → L2
  normalisation; `sentence_bert_config.json`: `max_seq_length`, `do_lower_case`), then cosine,
  ∈ [-1, 1]. Computed with transformers alone. A `Dense` module is not supported (error at load).
- **llm_judge** a causal LM (Qwen2.5-0.5B-Instruct in the paper) is shown `JUDGE_PROMPT` with the
  response and the ground truth (through its chat template when it has one), decodes greedily,
  and the first number of its reply is the score (`parse_judge_score`), ∈ [0, 1]; unparsable → 0.

A missing answer (None: no answer tag) or an empty one scores 0, as does everything against an
empty ground truth; any text is accepted (each text is truncated to `reward.judge_max_tokens`
tokens and to what the model can take).

Cost: every judge keeps a `JudgeCost` (`judge.cost`): seconds spent in the last call, in total,
and since the trainer last took it (`judge.cost.take()` → `time/reward_judge`). Avoiding this cost
is the point of BMAS, which reads only the policy's embedding table.

Departures from the paper: the paper gives neither the judge prompt, nor the ModernBERT pooling
beyond "mean", nor truncation lengths; `JUDGE_PROMPT`, the inclusion of special tokens in the mean
and `judge_max_tokens` are this codebase's choices. Encoders run in fp32; the LLM judge in bf16 on
CUDA and fp32 on CPU.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..config import JUDGE_NAMES, RewardConfig


# The LLM judge's instruction (docs/method.md §3: "prompt the judge with response and ground truth, ask for a
# score in [0, 1]"). The reference comes first so that a truncated long response cannot hide it.
JUDGE_PROMPT = (
    "You are grading an answer against a reference answer.\n"
    "Reference answer: {truth}\n"
    "Answer to grade: {response}\n"
    "How well does the answer match the reference in meaning and correctness? Reply with only a "
    "score between 0 and 1, where 1 means equivalent and 0 means wrong or unrelated."
)

# Sentence-transformers' pooling modes, in the order it concatenates them (Pooling.forward).
_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")
_POOLING_KEYS = {  # 1_Pooling/config.json key of each mode
    "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens", "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}
# A tokenizer's "no limit" sentinel is ~1e30; anything above this is not a real length.
_UNBOUNDED_LENGTH = 1_000_000


# ----------------------------------------------------------------------------------------------
# Pure pieces: score parsing, pooling, cosine

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
# The first number not glued to a word or another number ("Qwen2.5" is no score), optionally
# followed by "%", "/ 10" or "out of 10".
_SCORE = re.compile(
    rf"(?<![A-Za-z0-9_.])(?P<sign>[-+]?)(?P<value>{_NUMBER})"
    rf"(?:\s*(?P<percent>%)|\s*(?:/|\bout\s+of\b)\s*(?P<scale>{_NUMBER}))?",
    re.IGNORECASE,
)


def parse_judge_score(text: str) -> float:
    """The LLM judge's reply → a score in [0, 1] (docs/method.md §3: unparsable → 0). Never raises, never evals.

    The first number counts: "0.7", "Score: 0.7", "7/10", "7 out of 10" and "70%" all give 0.7.
    The result is clamped to [0, 1] ("8" → 1.0, "-0.5" → 0.0); no number, or "x/0", gives 0.0.
    """
    if not isinstance(text, str):
        return 0.0
    match = _SCORE.search(text)
    if match is None:
        return 0.0
    value = float(match["value"])
    if match["sign"] == "-":
        value = -value
    if match["percent"]:
        value /= 100.0
    elif match["scale"] is not None:
        scale = float(match["scale"])
        if scale == 0:
            return 0.0
        value /= scale
    if not math.isfinite(value):
        return 0.0
    return min(1.0, max(0.0, value))


def masked_pool(
    hidden: torch.Tensor,  # [B, T, D] last hidden states
    attention_mask: torch.Tensor,  # [B, T] 1 on real tokens (right padding for "cls")
    modes: Sequence[str] = ("mean",),
) -> torch.Tensor:  # [B, D * len(modes)] fp32
    """Pool token states into one vector per text, sentence-transformers' way (its mode order).

    mean: Σ_t m_t h_t / Σ_t m_t (docs/method.md §3 "mean of the last hidden states over tokens");
    cls: the first token; max: the elementwise max over real tokens; mean_sqrt_len: Σ_t m_t h_t / √Σ_t m_t.
    """
    hidden = hidden.float()
    mask = attention_mask.to(device=hidden.device, dtype=hidden.dtype)[:, :, None]  # [B, T, 1]
    counts = mask.sum(dim=1).clamp_min(1e-9)  # [B, 1], sentence-transformers' clamp
    summed = (hidden * mask).sum(dim=1)  # [B, D]
    pooled = []
    for mode in _POOLING_MODES:
        if mode not in modes:
            continue
        if mode == "cls":
            pooled.append(hidden[:, 0])  # [B, D]
        elif mode == "max":
            pooled.append(hidden.masked_fill(mask == 0, -1e9).amax(dim=1))  # [B, D]
        elif mode == "mean":
            pooled.append(summed / counts)  # [B, D]
        else:
            pooled.append(summed / counts.sqrt())  # [B, D]
    unknown = [m for m in modes if m not in _POOLING_MODES]
    if unknown or not pooled:
        raise ValueError(f"pooling modes must be a non-empty subset of {_POOLING_MODES}, got {list(modes)}")
    return torch.cat(pooled, dim=-1)


def cosine_to_truth(
    response_vectors: torch.Tensor,  # [S, D]
    truth_vector: torch.Tensor,  # [D]
) -> torch.Tensor:  # [S] fp32 in [-1, 1]
    """cos(v_i, t) for every response vector; a zero vector has cosine 0 (F.normalize's eps)."""
    responses = F.normalize(response_vectors.float(), dim=-1)  # [S, D]
    truth = F.normalize(truth_vector.float(), dim=-1)  # [D]
    return (responses @ truth).clamp(-1.0, 1.0)  # rounding can reach 1 + 1e-7


# ----------------------------------------------------------------------------------------------
# Cost


@dataclass
class JudgeCost:
    """Seconds spent inside a judge: the trainer logs `take()` as `time/reward_judge` each step."""

    last_call_seconds: float = 0.0  # the latest `score` call (one group)
    total_seconds: float = 0.0  # since the judge was made
    calls: int = 0
    untaken_seconds: float = 0.0  # since the last `take()`

    def record(self, seconds: float) -> None:
        self.last_call_seconds = seconds
        self.total_seconds += seconds
        self.untaken_seconds += seconds
        self.calls += 1

    def take(self) -> float:
        """Seconds spent since the previous `take()` (e.g. during one training step); resets it."""
        seconds, self.untaken_seconds = self.untaken_seconds, 0.0
        return seconds


def _scorable(answers: Sequence[Optional[str]], truth: str) -> list[int]:
    """Indices of answers the judge must see: not None, not blank, and a non-blank ground truth."""
    if not isinstance(truth, str) or not truth.strip():
        return []
    return [i for i, a in enumerate(answers) if isinstance(a, str) and a.strip()]


# ----------------------------------------------------------------------------------------------
# Encoder judges: modernbert, sbert


class EncoderJudge:
    """modernbert | sbert: pooled encoder states of response and truth, cosine (docs/method.md §3, Table 4)."""

    def __init__(
        self,
        name: str,
        model,  # transformers encoder (AutoModel), on `device`, eval mode
        tokenizer,
        *,
        pooling: Sequence[str] = ("mean",),
        normalize: bool = False,  # sentence-transformers' 2_Normalize (cosine is unchanged by it)
        lowercase: bool = False,  # sentence_bert_config.json do_lower_case
        max_length: int = 512,  # tokens per text, special tokens included
        batch_size: int = 64,  # texts per forward
    ):
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = tuple(pooling)
        self.normalize = normalize
        self.lowercase = lowercase
        self.max_length = max_length
        self.batch_size = batch_size
        self.cost = JudgeCost()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:  # [B, D'] fp32 on the judge's device
        """Sentence vectors of `texts`, batched `batch_size` at a time, shortest texts together."""
        texts = [t.lower() if self.lowercase else t for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        vectors: list[torch.Tensor] = [None] * len(texts)  # type: ignore[list-item]
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            encoded = self.tokenizer(
                [texts[i] for i in batch], padding=True, truncation=True,
                max_length=self.max_length, return_tensors="pt",
            ).to(self.device)  # input_ids, attention_mask: [b, T]
            hidden = self.model(
                input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
            ).last_hidden_state  # [b, T, D]
            pooled = masked_pool(hidden, encoded["attention_mask"], self.pooling)  # [b, D']
            if self.normalize:
                pooled = F.normalize(pooled, dim=-1)
            for row, i in enumerate(batch):
                vectors[i] = pooled[row]
        return torch.stack(vectors) if vectors else torch.zeros(0, 0, device=self.device)

    def score(self, answers: Sequence[Optional[str]], truth: str) -> list[float]:  # [G]
        """cos(embed(answer_i), embed(truth)) for the group; None / blank → 0."""
        start = time.perf_counter()
        rewards = [0.0] * len(answers)
        scored = _scorable(answers, truth)
        if scored:
            vectors = self.embed([truth] + [answers[i] for i in scored])  # [1 + S, D']
            for i, value in zip(scored, cosine_to_truth(vectors[1:], vectors[0]).tolist()):
                rewards[i] = float(value)
        self.cost.record(time.perf_counter() - start)
        return rewards


def _model_max_length(model, tokenizer) -> int:
    """The longest input the model takes: its position table and the tokenizer's own limit."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(n) for n in limits if isinstance(n, (int, float)) and 0 < n < _UNBOUNDED_LENGTH]
    return min(limits) if limits else _UNBOUNDED_LENGTH


def _sentence_transformers_layout(model_dir: Path) -> dict:
    """Read a sentence-transformers directory's modules: where the transformer lives, pooling, normalise.

    Without `modules.json` the defaults are sentence-transformers' own for a plain HF model:
    the directory itself, mean pooling, no normalisation.
    """
    layout = {"transformer_dir": model_dir, "pooling": ("mean",), "normalize": False,
              "max_seq_length": None, "lowercase": False}
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return layout
    for module in json.loads(modules_file.read_text()):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = model_dir / module.get("path", "")
        if kind == "Transformer":
            layout["transformer_dir"] = path
            st_config = path / "sentence_bert_config.json"
            if st_config.is_file():
                values = json.loads(st_config.read_text())
                layout["max_seq_length"] = values.get("max_seq_length")
                layout["lowercase"] = bool(values.get("do_lower_case", False))
        elif kind == "Pooling":
            pooling_file = path / "config.json"
            if pooling_file.is_file():
                values = json.loads(pooling_file.read_text())
                unsupported = [k for k in ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
                               if values.get(k)]
                if unsupported:
                    raise ValueError(f"{pooling_file}: {unsupported} pooling is not supported (cls, max, mean, mean_sqrt_len are)")
                modes = tuple(m for m in _POOLING_MODES if values.get(_POOLING_KEYS[m]))
                if not modes:
                    raise ValueError(f"{pooling_file}: no pooling mode enabled")
                layout["pooling"] = modes
        elif kind == "Normalize":
            layout["normalize"] = True
        else:
            raise ValueError(f"{modules_file}: module {module.get('type')!r} is not supported by the sbert judge "
                             "(Transformer, Pooling and Normalize are)")
    return layout


def load_encoder_judge(
    name: str, model_dir: str | Path, device: torch.device | str, *, batch_size: int = 64, max_tokens: int = 512,
) -> EncoderJudge:
    """The modernbert or sbert judge from a local directory, on `device`, eval mode, fp32."""
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise FileNotFoundError(f"reward.judge_model: {model_dir} is not a local model directory")
    layout = _sentence_transformers_layout(model_dir) if name == "sbert" else {
        "transformer_dir": model_dir, "pooling": ("mean",), "normalize": False, "max_seq_length": None, "lowercase": False,
    }
    tokenizer = AutoTokenizer.from_pretrained(layout["transformer_dir"], local_files_only=True)
    model = AutoModel.from_pretrained(layout["transformer_dir"], local_files_only=True, dtype=torch.float32)
    model.to(device).eval().requires_grad_(False)
    max_length = min(max_tokens, _model_max_length(model, tokenizer))
    if layout["max_seq_length"]:
        max_length = min(max_length, int(layout["max_seq_length"]))
    return EncoderJudge(
        name, model, tokenizer, pooling=layout["pooling"], normalize=layout["normalize"],
        lowercase=layout["lowercase"], max_length=max_length, batch_size=batch_size,
    )


# ----------------------------------------------------------------------------------------------
# LLM judge


class LLMJudge:
    """llm_judge: a causal LM reads JUDGE_PROMPT and replies with a score in [0, 1] (docs/method.md §3, Table 4)."""

    name = "llm_judge"

    def __init__(
        self,
        model,  # transformers causal LM, on its device, eval mode
        tokenizer,  # padding_side "left", with a pad token
        *,
        max_new_tokens: int = 8,
        max_text_tokens: int = 512,  # tokens kept of the response and of the truth, each
        batch_size: int = 64,  # prompts per generate call
        prompt: str = JUDGE_PROMPT,
    ):
        from transformers import GenerationConfig

        self.model = model
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.batch_size = batch_size
        self.use_chat_template = bool(getattr(tokenizer, "chat_template", None))
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        # A fresh config: greedy, whatever sampling defaults the checkpoint ships.
        self.generation_config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
        )
        # Each text gets an equal share of what the model can read beyond the prompt and the reply.
        self.context_tokens = _model_max_length(model, tokenizer)  # the longest input the model takes
        overhead = len(self._prompt_ids(self._render("", "")))
        room = (self.context_tokens - overhead - max_new_tokens) // 2
        self.max_text_tokens = min(max_text_tokens, room)
        if self.max_text_tokens < 1:
            raise ValueError(
                f"reward.judge_model: the judge reads at most {_model_max_length(model, tokenizer)} tokens, "
                f"too few for its prompt ({overhead} tokens) and {max_new_tokens} new tokens"
            )
        self.cost = JudgeCost()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _render(self, response: str, truth: str) -> str:
        """The full prompt text for one pair, through the chat template when there is one."""
        return self.render_chat(self.prompt.format(response=response, truth=truth), bare_suffix="\nScore:")

    def render_chat(self, content: str, bare_suffix: str = "") -> str:
        """`content` as one user turn through the chat template, ready for `generate` (a model without
        a template gets the bare text plus `bare_suffix`). Shared with eval.py's answer extractor."""
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        return content + bare_suffix

    def prompt_tokens(self, rendered: str) -> int:
        """How many tokens a rendered prompt takes (what `generate` feeds the model)."""
        return len(self._prompt_ids(rendered))

    def _prompt_ids(self, text: str) -> list[int]:
        # The chat template already wrote the special tokens; a bare prompt gets the tokenizer's own.
        return self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]

    def _truncate(self, text: str) -> str:
        """`text` cut to its first `max_text_tokens` tokens (so every prompt fits the model)."""
        ids = self.tokenizer(
            text, add_special_tokens=False, truncation=True, max_length=self.max_text_tokens
        )["input_ids"]
        if len(ids) < self.max_text_tokens:
            return text
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def build_prompts(self, answers: Sequence[str], truth: str) -> list[str]:
        """One rendered JUDGE_PROMPT per answer, response and truth truncated to fit."""
        truth_text = self._truncate(truth)
        return [self._render(self._truncate(answer), truth_text) for answer in answers]

    @torch.no_grad()
    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy replies to rendered prompts, `batch_size` at a time, left-padded."""
        replies: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            encoded = self.tokenizer(
                list(prompts[start : start + self.batch_size]), padding=True, padding_side="left",
                add_special_tokens=not self.use_chat_template, return_tensors="pt",
            ).to(self.device)  # input_ids, attention_mask: [b, T]
            output = self.model.generate(
                input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                generation_config=self.generation_config,
            )  # [b, T + new]
            new_tokens = output[:, encoded["input_ids"].shape[1] :]  # [b, new]
            replies += self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return replies

    def score(self, answers: Sequence[Optional[str]], truth: str) -> list[float]:  # [G]
        """parse_judge_score(judge reply) for the group; None / blank → 0."""
        start = time.perf_counter()
        rewards = [0.0] * len(answers)
        scored = _scorable(answers, truth)
        if scored:
            prompts = self.build_prompts([answers[i] for i in scored], truth)
            for i, reply in zip(scored, self.generate(prompts)):
                rewards[i] = parse_judge_score(reply)
        self.cost.record(time.perf_counter() - start)
        return rewards


def load_llm_judge(
    model_dir: str | Path, device: torch.device | str, *,
    batch_size: int = 64, max_tokens: int = 512, max_new_tokens: int = 8,
) -> LLMJudge:
    """The LLM judge from a local directory, on `device`, eval mode (bf16 on CUDA, fp32 on CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise FileNotFoundError(f"reward.judge_model: {model_dir} is not a local model directory")
    device = torch.device(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"reward.judge_model: the tokenizer in {model_dir} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation continues every prompt from its last real token
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
    model.to(device).eval().requires_grad_(False)
    return LLMJudge(model, tokenizer, max_new_tokens=max_new_tokens, max_text_tokens=max_tokens, batch_size=batch_size)


def make_judge(cfg: RewardConfig, device: torch.device | str = "cpu") -> EncoderJudge | LLMJudge | None:
    """The judge `cfg.open_ended` needs, loaded once from `cfg.judge_model`; None for bmas/bipartite.

    The trainer passes it to `score_group` as `RewardContext(..., judge=make_judge(cfg.reward, device))`.
    """
    if cfg.open_ended not in JUDGE_NAMES:
        return None
    if not cfg.judge_model:
        raise ValueError(f"reward.judge_model: required when reward.open_ended is {cfg.open_ended!r}")
    for key in ("judge_batch_size", "judge_max_tokens", "judge_max_new_tokens"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"reward.{key}: must be >= 1, got {getattr(cfg, key)}")
    if cfg.open_ended == "llm_judge":
        return load_llm_judge(
            cfg.judge_model, device, batch_size=cfg.judge_batch_size,
            max_tokens=cfg.judge_max_tokens, max_new_tokens=cfg.judge_max_new_tokens,
        )
    return load_encoder_judge(
        cfg.open_ended, cfg.judge_model, device, batch_size=cfg.judge_batch_size, max_tokens=cfg.judge_max_tokens,
    )
