"""eval.py end to end on a tiny random Qwen2.5-VL and tiny parquet files in each benchmark's real schema.

The fixtures use the Hugging Face column names and arrow types of EVAL.md's datasets (images as
`{"bytes", "path"}` structs holding PNGs, MMMU's `options` as a string, MathVista's nullable
`choices` / `unit` / `precision`, MMBench's circular rotations at index + 1e6, AI2D's index answers).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mixedr1.evaluation import BENCHMARKS, TABLE1, BenchmarkDataError  # noqa: E402
from mixedr1.evaluation.benchmarks import limit_items  # noqa: E402
from experiments.toy_benchmarks import write_benchmarks  # noqa: E402

eval_cli = importlib.import_module("eval")
REAL_GENERATE = eval_cli.generate_texts

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_benchmarks(tmp_path_factory.mktemp("benchmarks"))


@pytest.fixture(scope="module")
def ckpt(tiny_qwen_dir):
    return tiny_qwen_dir


def run(ckpt, data_root, output, *extra):
    argv = ["--ckpt", str(ckpt), "--data-root", str(data_root), "--output", str(output),
            "--limit", "2", "--max-new-tokens", "16", "--batch-size", "2", *extra]
    eval_cli.main(argv)
    return json.loads(Path(output).read_text())


class SimulatedKill(Exception):
    pass


class CountingGenerator:
    """Wraps `eval.generate_texts`: counts the items generated and can crash after some batches."""

    def __init__(self, crash_after_batches=None):
        self.items, self.batches, self.crash_after_batches = [], 0, crash_after_batches

    def __call__(self, model, processor, items, mode, params):
        if self.crash_after_batches is not None and self.batches == self.crash_after_batches:
            raise SimulatedKill("simulated kill")
        self.batches += 1
        self.items += [(item.benchmark, item.item_id) for item in items]
        return REAL_GENERATE(model, processor, items, mode, params)


def test_every_benchmark_scored_and_written(ckpt, data_root, tmp_path, monkeypatch):
    counter = CountingGenerator()
    monkeypatch.setattr(eval_cli, "generate_texts", counter)
    report = run(ckpt, data_root, tmp_path / "out.json")
    assert set(report["benchmarks"]) == set(TABLE1)
    expected_items = {"mathvista": 2, "mathvision": 2, "mmbench": 4, "mmmu": 2, "mmstar": 2, "ai2d": 2}
    for name, result in report["benchmarks"].items():
        assert result["metric"] == BENCHMARKS[name].metric
        assert 0.0 <= result["score"] <= 100.0
        assert len(result["records"]) == result["n_items"] == expected_items[name]
        for record in result["records"]:
            assert isinstance(record["prediction"], str) and isinstance(record["correct"], bool)
            assert "extracted" in record and "answer" in record
    assert report["benchmarks"]["mathvista"]["metric"] == "mathvista_rule_based"
    assert report["benchmarks"]["mmbench"]["metrics"]["questions"] == 2  # rows 0, 1 and their rotations
    assert len(counter.items) == sum(expected_items.values())
    table = (tmp_path / "out.md").read_text()
    assert "| model | prompt | Avg | MathVista | MathVision | MMBench | MMMU | MMStar | AI2D |" in table
    assert table == report["table1_markdown"]
    # Everything cached: a second run generates nothing and gives the same results.
    again = CountingGenerator()
    monkeypatch.setattr(eval_cli, "generate_texts", again)
    assert run(ckpt, data_root, tmp_path / "out.json")["benchmarks"] == report["benchmarks"]
    assert again.items == []


def test_resume_after_a_crash_generates_only_the_rest(ckpt, data_root, tmp_path, monkeypatch):
    names = "mathvista,mmbench,mmmu"
    full = run(ckpt, data_root, tmp_path / "full.json", "--benchmarks", names)

    crashing = CountingGenerator(crash_after_batches=2)
    monkeypatch.setattr(eval_cli, "generate_texts", crashing)
    with pytest.raises(SimulatedKill):
        run(ckpt, data_root, tmp_path / "resumed.json", "--benchmarks", names)
    done = set(crashing.items)
    assert len(done) == 4 and not (tmp_path / "resumed.json").exists()

    resumed = CountingGenerator()
    monkeypatch.setattr(eval_cli, "generate_texts", resumed)
    report = run(ckpt, data_root, tmp_path / "resumed.json", "--benchmarks", names)
    total = sum(full["benchmarks"][n]["n_items"] for n in names.split(","))
    assert len(resumed.items) == total - len(done)
    assert not done & set(resumed.items)
    assert report["benchmarks"] == full["benchmarks"]


def test_a_torn_cache_line_is_regenerated(ckpt, data_root, tmp_path, monkeypatch):
    report = run(ckpt, data_root, tmp_path / "out.json", "--benchmarks", "ai2d")
    cache = tmp_path / "out.predictions.rank0.jsonl"
    lines = cache.read_text().splitlines(keepends=True)
    cache.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
    counter = CountingGenerator()
    monkeypatch.setattr(eval_cli, "generate_texts", counter)
    assert run(ckpt, data_root, tmp_path / "out.json", "--benchmarks", "ai2d")["benchmarks"] == report["benchmarks"]
    assert counter.items == [("ai2d", "1")]


def test_direct_prompt_is_cached_apart_from_thinking(ckpt, data_root, tmp_path, monkeypatch):
    run(ckpt, data_root, tmp_path / "out.json", "--benchmarks", "mmstar")
    counter = CountingGenerator()
    monkeypatch.setattr(eval_cli, "generate_texts", counter)
    report = run(ckpt, data_root, tmp_path / "out.json", "--benchmarks", "mmstar", "--prompt", "direct")
    assert report["prompt"] == "direct" and len(counter.items) == 2


def test_missing_file_names_the_expected_path(tmp_path):
    root = write_benchmarks(tmp_path / "data")
    (root / "MMStar/mmstar.parquet").unlink()
    with pytest.raises(BenchmarkDataError, match=r"MMStar.*mmstar\.parquet.*Lin-Chen/MMStar"):
        eval_cli.main(["--ckpt", str(tmp_path / "no-model"), "--data-root", str(root), "--benchmarks", "mmstar"])


def test_missing_column_names_file_and_columns(tmp_path):
    root = write_benchmarks(tmp_path / "data")
    path = root / "ai2d/data/test-00000-of-00001.parquet"
    pq.write_table(pq.read_table(path).drop(["answer"]), path)
    with pytest.raises(BenchmarkDataError) as error:
        eval_cli.main(["--ckpt", str(tmp_path / "no-model"), "--data-root", str(root), "--benchmarks", "ai2d"])
    message = str(error.value)
    assert str(path) in message and "['answer']" in message and "'options'" in message


def test_malicious_mmmu_options_are_an_error_never_run(tmp_path):
    root = write_benchmarks(tmp_path / "data")
    path = root / "MMMU/data/validation-00000-of-00001.parquet"
    table = pq.read_table(path)
    marker = tmp_path / "pwned"
    evil = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    options = pa.array([evil, "[]", "['first', 'second']"], pa.string())
    pq.write_table(table.set_column(table.schema.get_field_index("options"), "options", options), path)
    with pytest.raises(BenchmarkDataError, match=r"row 0 column 'options': options is not a Python list literal"):
        BENCHMARKS["mmmu"].load(root)
    assert not marker.exists()


def test_loaders_read_the_real_schema(data_root):
    mathvista = {it.item_id: it for it in BENCHMARKS["mathvista"].load(data_root)}
    assert mathvista["1"].options == ["3/11", "8/11", "6/11", "3/5"] and mathvista["1"].answer == "8/11"
    assert mathvista["3"].question.endswith("(Unit: cm)") and mathvista["3"].meta["precision"] == 1.0
    mmbench = BENCHMARKS["mmbench"].load(data_root)
    assert [it.options for it in mmbench][:3] == [["red", "blue", "green"], ["cat", "dog"], ["summer", "winter"]]
    assert mmbench[1].question == "Look closely. Which animal?" and mmbench[0].question == "What color?"
    assert len(limit_items(mmbench, 1)) == 2  # question 0 and its rotation 1000000
    mmmu = {it.item_id: it for it in BENCHMARKS["mmmu"].load(data_root)}
    assert len(mmmu["validation_Physics_3"].images) == 2 and mmmu["validation_Math_2"].multiple_choice is False
    ai2d = BENCHMARKS["ai2d"].load(data_root)
    assert [it.answer for it in ai2d] == ["A", "A", "B"] and [it.item_id for it in ai2d] == ["0", "1", "2"]
    assert BENCHMARKS["mmstar"].load(data_root)[0].images[0].size == (40, 30)


@pytest.mark.slow
def test_torchrun_two_nodes_match_one_process(ckpt, data_root, tmp_path):
    """Items are split across ranks by index and gathered to rank 0: the results equal a single
    process's (batch size 1, so every item is computed alone in both runs). The two ranks are two
    torchrun "nodes" of one rank each (tests/nodes.py), as `torchrun --nnodes 2` runs them."""
    from nodes import node_env, run_two_nodes

    names = "mmbench,ai2d"
    single = run(ckpt, data_root, tmp_path / "single.json", "--benchmarks", names, "--batch-size", "1")
    output = tmp_path / "ranks.json"
    # CPU for both ranks (a one-GPU machine has no cuda:1); gloo is the backend there.
    env = node_env()
    run_two_nodes([str(REPO / "eval.py"), "--ckpt", str(ckpt), "--data-root", str(data_root), "--output", str(output),
                   "--benchmarks", names, "--limit", "2", "--max-new-tokens", "16", "--batch-size", "1"],
                  cwd=REPO, env=env, timeout=600)
    report = json.loads(output.read_text())
    assert report["benchmarks"] == single["benchmarks"]
    caches = sorted(p.name for p in tmp_path.glob("ranks.predictions.rank*.jsonl"))
    assert caches == ["ranks.predictions.rank0.jsonl", "ranks.predictions.rank1.jsonl"]
    assert sum(len(tmp_path.joinpath(c).read_text().splitlines()) for c in caches) == 6  # 4 MMBench rows + 2 AI2D


def test_optional_benchmarks_run_and_score(ckpt, data_root, tmp_path):
    report = run(ckpt, data_root, tmp_path / "out.json", "--benchmarks", "mathverse,mmmu_pro,mmiq,m3cot", "--limit", "1")
    expected = {"mathverse": 1, "mmmu_pro": 2, "mmiq": 1, "m3cot": 1}  # MMMU-Pro: question 1 in both settings
    for name, result in report["benchmarks"].items():
        assert result["n_items"] == expected[name] and 0.0 <= result["score"] <= 100.0
    assert set(report["benchmarks"]["mmmu_pro"]["metrics"]["per_setting"]) == {"standard", "vision"}
    table = (tmp_path / "out.md").read_text()
    assert table.splitlines()[0].endswith("| AI2D | MathVerse | MMMU-Pro | MM-IQ | M3CoT |")


def test_optional_loaders_read_the_real_schema(data_root):
    mathverse = BENCHMARKS["mathverse"].load(data_root)
    assert [it.multiple_choice for it in mathverse] == [True, False] and mathverse[1].answer == "12.5"
    pro = BENCHMARKS["mmmu_pro"].load(data_root)
    assert [it.item_id for it in pro] == ["standard:test_Art_1", "standard:test_Math_2", "vision:test_Art_1", "vision:test_Math_2"]
    assert len(pro[0].options) == 10
    # vision: the options exist only inside the screenshot; the prompt shows none, the scorer has them
    assert pro[2].options == [] and pro[2].meta["options"] == ["a", "b", "c"]
    assert [it.item_id for it in limit_items(pro, 1)] == ["standard:test_Art_1", "vision:test_Art_1"]
    mmiq = BENCHMARKS["mmiq"].load(data_root)
    assert [it.item_id for it in mmiq] == ["7", "8"] and mmiq[1].meta["category"] == "Spatial Relationship"
    m3cot = BENCHMARKS["m3cot"].load(data_root)
    assert m3cot[1].question == "Which number?\nContext: A number line." and m3cot[0].question == "Which force?"


def test_duplicate_ids_are_an_error(tmp_path):
    root = write_benchmarks(tmp_path / "data")
    path = root / "MathVista/data/testmini-00000-of-00001-abc.parquet"
    pq.write_table(pq.read_table(path), path.with_name("testmini-00001-of-00001-abc.parquet"))  # the same rows twice
    with pytest.raises(BenchmarkDataError, match=r"mathvista: duplicate item ids: '1' \(.*testmini-00001-of-00001-abc\.parquet row 0\)"):
        eval_cli.main(["--ckpt", str(tmp_path / "no-model"), "--data-root", str(root), "--benchmarks", "mathvista"])
