"""The optional local answer extractor (`eval.py --extractor llm`, mixedr1.evaluation.extractor).

Which responses go to the model and how its replies are read are checked with a scripted stand-in;
the model path runs the LLM-judge reward's code on the tiny random judge of experiments/toy_judges.py,
and on rigged copies whose greedy reply is one fixed token (a number, or end-of-text at once).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from experiments.toy_benchmarks import write_benchmarks  # noqa: E402
from experiments.toy_judges import build_tiny_llm_judge  # noqa: E402
from mixedr1.evaluation.benchmarks import EvalItem  # noqa: E402
from mixedr1.evaluation.extractor import (  # noqa: E402
    MATHVISTA_DEMOS, Extraction, LocalExtractor, extraction_prompt, load_extractor, needs_model, parse_reply,
)

eval_cli = importlib.import_module("eval")

INTEGER = EvalItem("mathvista", "1", "How many?", answer="42",
                   meta={"question_type": "free_form", "answer_type": "integer", "precision": None, "query": "Question: How many?"})
CHOICE = EvalItem("mathvista", "2", "Which?", options=["3/11", "8/11"], answer="8/11", multiple_choice=True,
                  meta={"question_type": "multi_choice", "answer_type": "text", "precision": None, "query": None})
MMBENCH = EvalItem("mmbench", "3", "What is it", options=["a cat", "a dog", "a bird"], answer="B", multiple_choice=True,
                   meta={"index": 3})
MATHVERSE = EvalItem("mathverse", "4", "Find x.", answer="12.5", meta={"problem_version": "Text Dominant"})


def test_which_responses_the_reference_would_send_to_its_model():
    assert not needs_model("mathvista", INTEGER, "42")  # a plain integer: lmms-eval's quick check
    assert needs_model("mathvista", INTEGER, "There are forty-two.")
    assert not needs_model("mathvista", CHOICE, "<think>x</think><answer>8/11</answer>")  # a choice's text
    assert needs_model("mathvista", CHOICE, "The second one")
    assert not needs_model("mmbench", MMBENCH, "B")  # the rules read it: lmms-eval's can_infer does too
    assert needs_model("mmbench", MMBENCH, "a puppy, I think")
    assert needs_model("mathverse", MATHVERSE, "x = 12.5") and not needs_model("mathverse", MATHVERSE, "  ")


@pytest.mark.parametrize("item, reply, parsed", [
    (INTEGER, "Extracted answer: 42\n\nHint: next example", "42"), (INTEGER, "forty-two", None), (INTEGER, "", None),
    (CHOICE, "B", "B"), (CHOICE, "'8/11'", "8/11"),
    (MMBENCH, "B", "B"), (MMBENCH, "Your output: (B)", "B"), (MMBENCH, "E", "E"), (MMBENCH, "a dog", "B"),
    (MMBENCH, "I cannot tell", None), (MMBENCH, "A or B", None),
    (MATHVERSE, "Extracted Answer: 12.5", "12.5"), (MATHVERSE, "null", "null"), (MATHVERSE, "\n \n", None),
])
def test_replies_are_read_as_the_reference_reads_gpts(item, reply, parsed):
    assert parse_reply(item.benchmark, item, reply) == parsed


class ScriptedJudge:
    """The `LLMJudge` surface the extractor uses, with replies given in advance and 4 chars per token."""

    def __init__(self, replies, context_tokens=4096):
        self.replies, self.context_tokens, self.prompts = list(replies), context_tokens, []
        self.generation_config = type("Config", (), {"max_new_tokens": 8})()

    def render_chat(self, content, bare_suffix=""):
        return f"<user>{content}</user>"

    def prompt_tokens(self, rendered):
        return len(rendered) // 4

    def generate(self, prompts):
        self.prompts += prompts
        return [self.replies.pop(0) for _ in prompts]


def test_extract_labels_each_answer_and_scores_with_the_models_reading():
    judge = ScriptedJudge(["42", "no idea"])
    items = [INTEGER, INTEGER, INTEGER]
    responses = ["42", "It is forty-two.", "<think>hmm</think><answer>some</answer>"]
    extractions = LocalExtractor(judge).extract("mathvista", items, responses)
    assert [e.extractor for e in extractions] == ["rule", "llm", "rule_fallback"]
    assert extractions[1] == Extraction("llm", "42", "42") and extractions[2].reply == "no idea"
    assert "Model response: some\n\nExtracted answer:" in judge.prompts[1]  # the answer region, not the reasoning
    assert "Question: How many?" in judge.prompts[0] and MATHVISTA_DEMOS[0] in judge.prompts[0]
    records = eval_cli.score_benchmark(
        "mathvista", [INTEGER, CHOICE], {"1": "It is forty-two.", "2": "hmm"},
        [Extraction("llm", "42", "42"), Extraction("rule_fallback", "??")],
    )
    assert [(r["extractor"], r["extracted"], r["correct"]) for r in records["records"]] == [("llm", "42", True), ("rule_fallback", "3/11", False)]
    assert records["records"][1]["llm_reply"] == "??" and records["extractors"] == {"llm": 1, "rule_fallback": 1}


def test_benchmarks_without_a_gpt_extractor_stay_rule_based():
    judge = ScriptedJudge([])
    item = EvalItem("ai2d", "1", "q", options=["x", "y"], answer="A", multiple_choice=True)
    assert LocalExtractor(judge).extract("ai2d", [item], ["anything"]) == [Extraction("rule")]
    assert judge.prompts == []


def test_a_short_context_drops_examples_then_the_front_of_the_response():
    prompt = extraction_prompt("mathvista", INTEGER)
    long_context = LocalExtractor(ScriptedJudge([], context_tokens=4096)).fit(prompt, "It is 42.")
    assert all(demo in long_context for demo in MATHVISTA_DEMOS)
    shorter = LocalExtractor(ScriptedJudge([], context_tokens=160)).fit(prompt, "It is 42.")
    assert MATHVISTA_DEMOS[0] in shorter and MATHVISTA_DEMOS[-1] not in shorter  # the last examples go first
    shortest = LocalExtractor(ScriptedJudge([], context_tokens=70)).fit(prompt, "It is 42.")
    assert not any(demo in shortest for demo in MATHVISTA_DEMOS)
    assert shortest.endswith("Model response: It is 42.\n\nExtracted answer:</user>")
    tail = LocalExtractor(ScriptedJudge([], context_tokens=70)).fit(prompt, "x" * 5000 + " so it is 42.")
    assert tail.endswith("so it is 42.\n\nExtracted answer:</user>") and len(tail) // 4 <= 70 - 8
    with pytest.raises(ValueError, match="too few"):
        LocalExtractor(ScriptedJudge([], context_tokens=20)).fit(prompt, "42")


# ---- the real loading and generation code, on tiny judges


def rig(path: Path, token: str) -> Path:
    """Make greedy decoding always pick `token` (every block adds 0; each state is e_0; one lm_head row)."""
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32)
    token_id = AutoTokenizer.from_pretrained(path).convert_tokens_to_ids(token)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[token_id, 0] = 1.0
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return build_tiny_llm_judge(tmp_path_factory.mktemp("extractor"), seed=0)


def test_rigged_judges_reply_42_or_nothing(tmp_path):
    answers_42 = rig(build_tiny_llm_judge(tmp_path / "says42", extra_tokens=("42",)), "42")
    extractor = load_extractor(answers_42, "cpu", batch_size=2, max_new_tokens=1)
    items, responses = [INTEGER, INTEGER, MMBENCH], ["There are forty-two.", "42", "a puppy, I think"]
    by_name = {name: extractor.extract(name, [it for it in items if it.benchmark == name],
                                       [r for it, r in zip(items, responses) if it.benchmark == name]) for name in ("mathvista", "mmbench")}
    assert by_name["mathvista"] == [Extraction("llm", "42", "42"), Extraction("rule")]
    assert by_name["mmbench"] == [Extraction("rule_fallback", "42", None)]  # "42" is no letter: the rules score it
    result = eval_cli.score_benchmark("mathvista", [INTEGER], {"1": "There are forty-two."}, by_name["mathvista"][:1])
    assert result["records"][0]["correct"] is True and result["extractors"] == {"llm": 1}

    silent = rig(build_tiny_llm_judge(tmp_path / "silent"), "<|im_end|>")  # end of text at once: an empty reply
    assert load_extractor(silent, "cpu", max_new_tokens=4).extract("mathverse", [MATHVERSE], ["x = 12.5"]) == [
        Extraction("rule_fallback", "", None)]


def test_eval_with_the_tiny_extractor_model_records_the_extractor_per_answer(tiny_qwen_dir, judge_dir, tmp_path):
    root = write_benchmarks(tmp_path / "data")
    output = tmp_path / "out.json"
    eval_cli.main(["--ckpt", str(tiny_qwen_dir), "--data-root", str(root), "--output", str(output), "--limit", "2",
                   "--max-new-tokens", "8", "--batch-size", "2", "--benchmarks", "mathvista,mmbench,mathverse,ai2d",
                   "--prompt", "direct", "--extractor", "llm", "--extractor-model", str(judge_dir), "--extractor-batch-size", "3"])
    report = json.loads(output.read_text())
    assert report["extractor"] == {"kind": "llm", "model": str(judge_dir)}
    for name, result in report["benchmarks"].items():
        kinds = [r["extractor"] for r in result["records"]]
        assert sum(result["extractors"].values()) == result["n_items"] == len(kinds)
        assert set(kinds) <= ({"rule"} if name == "ai2d" else {"rule", "llm", "rule_fallback"})
        for record in result["records"]:
            assert ("llm_reply" in record) == (record["extractor"] != "rule")
    assert any(r["extractor"] != "rule" for r in report["benchmarks"]["mathverse"]["records"])  # MathVerse always asks
