"""The evaluation protocol around the scorers: MM-Math's loader in its public layout, the generation
caps eval.py passes per benchmark, the "+SFT baseline" rows (SFT target without <think>, direct
prompt), and the training reward's letter matching (the helper the scorers share)."""

from __future__ import annotations

import importlib
import io
import json
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from experiments import launch  # noqa: E402
from experiments.toy_benchmarks import write_benchmarks  # noqa: E402
from mixedr1.config import ConfigError, load_config  # noqa: E402
from mixedr1.data.dataset import Record  # noqa: E402
from mixedr1.data.prompt import build_sft_target  # noqa: E402
from mixedr1.evaluation import BENCHMARKS, BenchmarkDataError  # noqa: E402
from mixedr1.rewards.matching import mcq_reward, parse_choice  # noqa: E402

eval_cli = importlib.import_module("eval")


def png_bytes(color: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_mm_math(root: Path) -> Path:
    """MM-Math as THU-KEG/MM_Math ships it: MM_Math.jsonl (question, file_name, solution, year,
    difficult, knowledge) and the images, one unzipped into a sub-folder, the others still in a zip."""
    folder = root / "MM_Math"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(png_bytes("red"))
    with zipfile.ZipFile(folder / "Image.zip", "w") as archive:
        archive.writestr("MM_Math/b.png", png_bytes("blue"))
        archive.writestr("MM_Math/c.png", png_bytes("green"))
    rows = [
        {"question": "In the figure, find AB.", "file_name": "a.png", "solution": r"AB = 2\sqrt{3}, so \boxed{2\sqrt{3}}.",
         "year": "七年级上学期", "difficult": "容易", "knowledge": ["Properties of Shapes"]},
        {"question": "Solve for x and y.", "file_name": "b.png", "solution": r"\boxed{x=1}, \boxed{y=\frac{1}{2}}",
         "year": "八年级下学期", "difficult": "困难", "knowledge": ["Functions"]},
        {"question": "Two figures.", "file_name": ["c.png", "a.png"], "solution": "No box in this solution.",
         "year": "九年级上学期", "difficult": "普通", "knowledge": []},
    ]
    (folder / "MM_Math.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return root


def test_mm_math_loader_reads_the_public_layout(tmp_path):
    items = BENCHMARKS["mm_math"].load(write_mm_math(tmp_path))
    assert [it.item_id for it in items] == ["0", "1", "2"]
    assert [len(it.images) for it in items] == [1, 1, 2]
    assert items[1].images[0].convert("RGB").getpixel((0, 0)) == (0, 0, 255)  # read from the zip
    assert [it.answer for it in items] == [r"2\sqrt{3}", r"x=1,y=\frac{1}{2}", ""]
    assert items[0].meta["difficulty"] == "容易" and items[1].meta["grade"] == "八年级下学期"
    assert not any(it.multiple_choice or it.options for it in items)


def test_mm_math_loader_errors_name_file_line_and_key(tmp_path):
    root = write_mm_math(tmp_path)
    path = root / "MM_Math" / "MM_Math.jsonl"
    path.write_text(path.read_text(encoding="utf-8") + '{"question": "q", "file_name": "a.png"}\n', encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match=r"MM_Math\.jsonl line 4: missing key\(s\) \['solution'\]"):
        BENCHMARKS["mm_math"].load(root)
    path.write_text('{"question": "q", "file_name": "zz.png", "solution": "\\\\boxed{1}"}\n', encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match=r"line 1: image 'zz.png' .* is neither under"):
        BENCHMARKS["mm_math"].load(root)
    with pytest.raises(BenchmarkDataError, match="MM_Math"):
        BENCHMARKS["mm_math"].load(tmp_path / "MM_Math")  # the benchmark folder itself is not the data root


class FakeGenerator:
    """Stands in for `eval.generate_texts`: records each batch's cap and answers with fixed text."""

    def __init__(self, text: str):
        self.text, self.caps = text, {}

    def __call__(self, model, processor, items, mode, params):
        for item in items:
            self.caps[item.benchmark] = params.max_new_tokens
        return [self.text for _ in items]


def test_eval_caps_generation_per_benchmark_and_scores_mm_math(tiny_qwen_dir, tmp_path, monkeypatch):
    root = write_mm_math(write_benchmarks(tmp_path / "data"))
    fake = FakeGenerator(r"Step by step... \boxed{2\sqrt{3}}")
    monkeypatch.setattr(eval_cli, "generate_texts", fake)
    argv = ["--ckpt", str(tiny_qwen_dir), "--data-root", str(root), "--limit", "2", "--benchmarks", "mmmu,ai2d,mathvista,mm_math"]
    results = eval_cli.main(argv + ["--prompt", "direct", "--output", str(tmp_path / "direct.json")])
    assert fake.caps == {"mmmu": 16, "ai2d": 16, "mathvista": 1024, "mm_math": 1024}
    report = json.loads((tmp_path / "direct.json").read_text())
    assert report["max_new_tokens"] == fake.caps and report["unscorable"] == dict.fromkeys(fake.caps, 0)
    assert [r["correct"] for r in results["mm_math"]["records"]] == [True, False]  # 2√3 = AB; item 1 wants x and y
    assert results["mm_math"]["metrics"]["per_difficulty"] == {"容易": 100.0, "困难": 0.0}
    cached = [json.loads(line) for line in (tmp_path / "direct.predictions.rank0.jsonl").read_text().splitlines()]
    assert {(c["benchmark"], c["max_new_tokens"]) for c in cached} == set(fake.caps.items())

    fake.caps = {}
    eval_cli.main(argv + ["--prompt", "thinking", "--output", str(tmp_path / "thinking.json")])
    assert set(fake.caps.values()) == {1024}
    eval_cli.main(argv + ["--prompt", "direct", "--max-new-tokens", "7", "--output", str(tmp_path / "fixed.json")])
    assert set(fake.caps.values()) == {7}


def test_extractor_flags_are_checked_before_anything_loads(tmp_path, capsys):
    with pytest.raises(SystemExit):
        eval_cli.parse_args(["--ckpt", "x", "--data-root", "y", "--extractor", "llm"])
    assert "--extractor llm needs --extractor-model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_cli.parse_args(["--ckpt", "x", "--data-root", "y", "--extractor", "llm", "--extractor-model", str(tmp_path / "none")])
    assert "is not a local model directory" in capsys.readouterr().err
    assert eval_cli.parse_args(["--ckpt", "x", "--data-root", "y"]).extractor == "rule"


# ---- the "+SFT baseline" rows: no <think> in the target, the direct prompt at evaluation


def _mcq_record():
    return Record(id="r1", problem_type="mcq", question="Which?", answer="B", images=(), options=("x", "y"))


def test_sft_target_with_and_without_canned_thinking():
    record = _mcq_record()
    assert build_sft_target(record) == "<think>I compare the image with each option and pick the one that fits.</think><answer>B</answer>"
    assert build_sft_target(record, think="none") == "<answer>B</answer>"
    with pytest.raises(ValueError, match="train.sft_think"):
        build_sft_target(record, think="short")


def test_sft_think_option_loads_and_is_checked():
    cfg = load_config(REPO / "configs/sft_baseline.yaml", ["train.sft_think=none"])
    assert cfg.train.algorithm == "sft" and cfg.train.sft_think == "none"
    assert load_config(REPO / "configs/demo.yaml").train.sft_think == "canned"
    with pytest.raises(ConfigError, match="train.sft_think"):
        load_config(REPO / "configs/demo.yaml", ["train.sft_think=none"])  # a GRPO warm-up needs <think>
    with pytest.raises(ConfigError, match="sft_think"):
        load_config(REPO / "configs/sft_baseline.yaml", ["train.sft_think=brief"])


def test_sft_baseline_rows_train_without_thinking_and_evaluate_direct():
    sft_rows = [row for e in launch.EXPERIMENTS.values() for row in e.rows if row.config and "train.algorithm=sft" in row.overrides]
    assert {r.name for r in sft_rows} == {"qwen25vl_3b_sft", "qwen25vl_7b_sft", "internvl25_4b_sft"}
    for row in sft_rows:
        assert row.prompt == "direct" and "train.sft_think=none" in row.overrides, row.name


# ---- the training reward's letter matching (the same helper as the scorers' step 2)


@pytest.mark.parametrize("prediction, reward", [
    ("(B)", 1.0), ("B) 5 apples", 1.0), ("B. 5 apples.", 1.0),  # a letter alone or with its own option text
    ("(B) 5 apples is close, but the answer is C.", 0.0),  # was 1.0: the leading letter beat the conclusion
    ("B, because 5 > 3", 0.0), ("B) 7 apples", 0.0),
])
def test_mcq_reward_takes_a_leading_letter_only_with_its_own_text(prediction, reward):
    assert mcq_reward(prediction, "B", ["3 apples", "5 apples", "7 apples"]) == reward


def test_parse_choice_without_options_takes_only_a_bare_letter():
    assert parse_choice("(C)", None) == "C" and parse_choice("C.", None) == "C"
    assert parse_choice("(A) red does not match. Therefore, the answer is C.", None) is None
