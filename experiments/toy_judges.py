"""Tiny random stand-ins for Table 4's external judges, so the rehearsal runs every reward design on CPU.

    python experiments/toy_judges.py OUT_DIR

writes three model directories that `mixedr1.rewards.judges.make_judge` loads like the real ones:

| design (reward.open_ended) | stands in for | folder |
|---|---|---|
| modernbert | answerdotai/ModernBERT-base | `OUT_DIR/modernbert` (a 2-layer ModernBERT, hidden 32) |
| sbert | sentence-transformers/all-MiniLM-L6-v2 | `OUT_DIR/sbert` (another such encoder, other seed, laid out as a sentence-transformers directory: `modules.json`, mean pooling, Normalize) |
| llm_judge | Qwen/Qwen2.5-0.5B-Instruct | `OUT_DIR/llm_judge` (a 2-layer Qwen2 causal LM with a chat template) |

Each has its own byte-level BPE tokenizer trained here on a small corpus (the synthetic captions'
words and the judge prompt), so any text encodes. The weights are random: the rewards these judges
give mean nothing, they only exercise the code path (loading, batching, truncation, timing). The
same construction as `tests/test_judges.py`'s fixtures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `mixedr1` importable
    sys.path.insert(0, str(REPO))

from mixedr1.data.synth import COLORS, SHAPES  # noqa: E402
from mixedr1.rewards.judges import JUDGE_PROMPT  # noqa: E402

_CORPUS = [
    JUDGE_PROMPT,
    "A red circle and two blue squares on a white background.",
    "Score: 0.7 out of 1", "7/10 and 70%", "0.25 0.5 0.75 1.0",
    *[f"a {color} {shape}" for color in COLORS for shape in SHAPES],
    "<think> </think> <answer> </answer> yes no",
] * 4


def bpe_tokenizer(special_tokens: list[str], vocab_size: int = 400, corpus: list[str] | None = None):
    """A byte-level BPE trained on `corpus` (default `_CORPUS`; every byte is in the alphabet, so any
    text encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus or _CORPUS, trainer)
    return tokenizer


def build_tiny_modernbert(path: Path, seed: int = 0, max_length: int = 128, vocab_size: int = 400,
                          corpus: list[str] | None = None) -> Path:
    """A random 2-layer ModernBERT encoder with a [CLS] … [SEP] tokenizer of `max_length` tokens."""
    from tokenizers import processors
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    raw = bpe_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], vocab_size, corpus)
    cls_id, sep_id = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=max_length,
    )
    config = ModernBertConfig(
        vocab_size=raw.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=max_length, local_attention=16, pad_token_id=raw.token_to_id("[PAD]"),
        cls_token_id=cls_id, sep_token_id=sep_id, bos_token_id=cls_id, eos_token_id=sep_id,
    )
    torch.manual_seed(seed)
    ModernBertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_sbert(path: Path, seed: int = 1) -> Path:
    """A tiny random encoder laid out as a sentence-transformers model: Transformer → mean Pooling →
    Normalize (all-MiniLM-L6-v2's modules). Its own seed, so it does not score like the ModernBERT."""
    build_tiny_modernbert(path, seed)
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    return path


def build_tiny_llm_judge(path: Path, seed: int = 0, vocab_size: int = 400, corpus: list[str] | None = None,
                         extra_tokens: tuple[str, ...] = ()) -> Path:
    """A random 2-layer Qwen2 causal LM with a ChatML chat template (`extra_tokens` added to its vocabulary)."""
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    raw = bpe_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], vocab_size, corpus)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=512,
    )
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens))
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, max_position_embeddings=512, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_toy_judges(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """All three judges under `out_dir`; returns {design: directory} (the launcher's judge paths)."""
    out_dir = Path(out_dir)
    return {
        "modernbert": build_tiny_modernbert(out_dir / "modernbert", seed),
        "sbert": build_tiny_sbert(out_dir / "sbert", seed + 1),
        "llm_judge": build_tiny_llm_judge(out_dir / "llm_judge", seed),
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python experiments/toy_judges.py OUT_DIR")
    for design, path in build_toy_judges(sys.argv[1]).items():
        print(f"{design}: {path}")
