"""experiments/: the launcher's commands, the paper's numbers, the report, and the notebooks run
headless on a small CPU rehearsal (tiny model, 2 training steps, 2 questions per toy benchmark)."""

from __future__ import annotations

import importlib
import json
import os
import shlex
from pathlib import Path

import pytest

from experiments import launch, rehearsal, report
from experiments.paper_numbers import AVG_DIFFERS_IN_PAPER, PAPER
from mixedr1.config import load_config
from mixedr1.families import family_of_dir, family_of_processor
from mixedr1.models.processors import load_processor

ROOT = Path(__file__).resolve().parents[1]
eval_cli = importlib.import_module("eval")
TORCHRUN = ["torchrun", "--standalone", "--nproc_per_node", "8"]


def dry_run(capsys, monkeypatch, *argv: str) -> list[list[str]]:
    """The commands `launch.py ... --dry-run` prints, split like a shell would."""
    monkeypatch.chdir(ROOT)
    launch.main([*argv, "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.startswith("#")]


def by_key(commands: list[list[str]]) -> tuple[dict, dict]:
    """{row key: argv} of the train commands (from output_dir) and the eval commands (from --output)."""
    trains, evals = {}, {}
    for argv in commands:
        if argv[len(TORCHRUN)] == "train.py":
            out = next(a for a in argv if a.startswith("output_dir=")).removeprefix("output_dir=")
            trains[str(Path(out).parent.relative_to("results"))] = argv
        else:
            out = argv[argv.index("--output") + 1]
            evals[str(Path(out).parent.relative_to("results"))] = argv
    return trains, evals


# ---- launch.py --dry-run -------------------------------------------------------------------------

def test_dry_run_prints_a_loadable_command_for_every_row(capsys, monkeypatch):
    commands = dry_run(capsys, monkeypatch, "all")
    assert all(argv[: len(TORCHRUN)] == TORCHRUN and argv[len(TORCHRUN)] in ("train.py", "eval.py") for argv in commands)
    trains, evals = by_key(commands)
    every_row = {f"{e.name}/{r.name}" for e in launch.EXPERIMENTS.values() for r in e.rows}
    assert set(evals) == every_row  # every row is evaluated
    trained_rows = {k for k in every_row if launch.lookup(k).kind == "train"}
    assert set(trains) == trained_rows  # and every train row trains (borrowed runs are the same commands)

    configs = {}
    for key, argv in trains.items():
        config_file, overrides = argv[len(TORCHRUN) + 1], argv[len(TORCHRUN) + 2 :]
        assert config_file.startswith("configs/") and (ROOT / config_file).is_file(), config_file
        cfg = configs[key] = load_config(ROOT / config_file, overrides)  # raises on a bad key or value
        assert cfg.output_dir == f"results/{key}/train" and cfg.train.resume
        assert cfg.data.data_root == "data/mixed45k" and cfg.data.scale == 1
        expected = {"table3/scale_0.5": "20k.jsonl", "table3/scale_2": "90k.jsonl"}.get(key, "mixed45k.jsonl")
        assert cfg.data.train_file == expected, key
        assert cfg.model.path == "models/" + launch.MODEL_DIRS[launch.lookup(key).model]
    # Each row's difference from its config reached the config.
    assert configs["table2/yorn"].data.problem_types == ["yorn"]
    assert configs["table2/grounding"].data.problem_types == ["yorn", "mcq", "chart", "grounding"]
    assert (configs["table3/scale_0.5"].train.steps, configs["table3/scale_2"].train.steps) == (350, 1400)
    assert configs["table1/qwen25vl_7b_sft"].train.algorithm == "sft"
    assert configs["table3/internvl25_4b_mixed_r1"].model.path == "models/InternVL2_5-4B-hf"
    for design in ("modernbert", "sbert", "llm_judge", "bipartite", "bmas"):
        reward = configs[f"table4/{design}"].reward
        assert reward.open_ended == design
        assert reward.judge_model == (f"models/{launch.JUDGE_DIRS[design]}" if design in launch.JUDGE_DIRS else None)

    for key, argv in evals.items():
        args = eval_cli.parse_args(argv[len(TORCHRUN) + 1 :])  # eval.py accepts it
        experiment, row = launch.EXPERIMENTS[key.split("/")[0]], launch.lookup(key)
        assert args.benchmarks == list(experiment.benchmarks) and args.prompt == row.prompt
        assert str(args.output) == f"results/{key}/eval.json" and args.data_root == "benchmarks"
        if row.kind == "base":
            assert args.ckpt == "models/" + launch.MODEL_DIRS[row.model]
        else:  # the final checkpoint of its own run or of the run it borrows
            cfg = configs[row.checkpoint_of or key]
            assert args.ckpt == f"{cfg.output_dir}/checkpoints/step-{cfg.train.sft_warmup_steps + cfg.train.steps:06d}"
    assert evals["table2/open_ended"][evals["table2/open_ended"].index("--ckpt") + 1].startswith("results/table1/qwen25vl_3b_mixed_r1/")


def test_dry_run_options_reach_the_commands(capsys, monkeypatch):
    commands = dry_run(capsys, monkeypatch, "table4", "--rows", "sbert", "--nproc", "4", "--results", "/r", "--model-dir", "/m",
                       "--judge-dir", "/j", "--data", "/d", "--train-file", "t.jsonl", "--bench-root", "/b",
                       "--set", "train.steps=5", "--eval-args", "--batch-size 16")
    assert len(commands) == 2
    train, evaluate = commands
    assert train[:5] == ["torchrun", "--standalone", "--nproc_per_node", "4", "train.py"]
    cfg = load_config(ROOT / train[5], train[6:])
    assert (cfg.model.path, cfg.reward.judge_model, cfg.data.data_root, cfg.data.train_file, cfg.output_dir, cfg.train.steps) == (
        "/m/Qwen2.5-VL-3B-Instruct", "/j/all-MiniLM-L6-v2", "/d", "t.jsonl", "/r/table4/sbert/train", 5)
    args = eval_cli.parse_args(evaluate[5:])
    assert (args.ckpt, args.data_root, args.batch_size) == ("/r/table4/sbert/train/checkpoints/step-000005", "/b", 16)


def test_internvl_rows_train_with_the_internvl_config_as_shipped(capsys, monkeypatch, tiny_internvl_dir):
    trains, _ = by_key(dry_run(capsys, monkeypatch, "table3"))
    internvl_rows = {f"table3/{r.name}" for r in launch.EXPERIMENTS["table3"].rows
                     if r.model == "internvl25_4b" and r.kind == "train"}
    assert internvl_rows == {"table3/internvl25_4b_sft", "table3/internvl25_4b_mixed_r1"}
    main = load_config(ROOT / "configs/mixed_r1_qwen25vl_7b.yaml")
    sft = load_config(ROOT / "configs/sft_baseline.yaml")
    for key in internvl_rows:
        argv = trains[key][len(TORCHRUN) + 1 :]
        assert argv[0] == "configs/mixed_r1_internvl25_4b.yaml"
        assert not any("pixels" in a for a in argv)  # the config is run as shipped, not patched
        cfg = load_config(ROOT / argv[0], argv[1:])
        assert (cfg.model.min_pixels, cfg.model.max_pixels, cfg.model.trust_remote_code) == (None, None, False)
        assert cfg.model.path == "models/InternVL2_5-4B-hf" and cfg.train.prompts_per_step == 64
        # The config's model settings load an InternVL processor (Qwen's pixel bound would raise here).
        processor = load_processor(tiny_internvl_dir, min_pixels=cfg.model.min_pixels, max_pixels=cfg.model.max_pixels)
        assert family_of_processor(processor).name == "internvl"
    with pytest.raises(ValueError, match="max_pixels only apply to Qwen"):
        load_processor(tiny_internvl_dir, max_pixels=main.model.max_pixels)

    grpo = load_config(ROOT / "configs/mixed_r1_internvl25_4b.yaml", trains["table3/internvl25_4b_mixed_r1"][len(TORCHRUN) + 2 :])
    # The paper's settings, as on Qwen2.5-VL-7B: 64 prompts x G=8, T=1, beta=0.04, lr 3e-6, 700 steps.
    assert (grpo.rollout, grpo.grpo, grpo.reward, grpo.optim) == (main.rollout, main.grpo, main.reward, main.optim)
    assert (grpo.train.algorithm, grpo.train.steps, grpo.data.scale) == ("grpo", 700, 1.0)
    sft_row = load_config(ROOT / "configs/mixed_r1_internvl25_4b.yaml", trains["table3/internvl25_4b_sft"][len(TORCHRUN) + 2 :])
    # The SFT row's overrides are configs/sft_baseline.yaml's SFT settings (launch.SFT_OVERRIDES).
    assert (sft_row.train.algorithm, sft_row.train.steps, sft_row.optim) == ("sft", sft.train.steps, sft.optim)
    assert sft_row.optim.lr == 1e-5 and sft_row.optim.schedule == "cosine"


# ---- the paper's numbers -----------------------------------------------------------------------

def test_paper_numbers_cover_the_registry_and_their_averages():
    for name, experiment in launch.EXPERIMENTS.items():
        assert set(PAPER[name]) == {r.name for r in experiment.rows}, name
        for row, numbers in PAPER[name].items():
            assert set(numbers) <= set(report.columns(experiment)), (name, row)
            if "avg" in numbers and (name, row) not in AVG_DIFFERS_IN_PAPER:
                rest = [v for k, v in numbers.items() if k != "avg"]
                assert numbers["avg"] == pytest.approx(sum(rest) / len(rest), abs=0.07), (name, row)
    assert PAPER["table1"]["qwen25vl_7b_mixed_r1"]["mathvision"] == 30.3  # spot checks against docs/method.md §6
    assert PAPER["table4"]["bmas"] == {"avg": 44.7, "mathvista": 57.4, "mathvision": 20.1, "mmmu": 47.0, "mmstar": 54.3}


# ---- report.py on a hand-written results folder ---------------------------------------------------

def write_eval(results: Path, key: str, scores: dict, limit=None) -> None:
    path = results / key / "eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"limit": limit, "summary": {b: {"metric": "accuracy", "score": s} for b, s in scores.items()}}))


def test_report_puts_our_numbers_beside_the_papers(tmp_path):
    write_eval(tmp_path, "table2/yorn", {"mathvista": 50.0, "mathvision": 25.0, "mmmu": 40.0, "mmstar": 45.0, "ai2d": 99.0})
    write_eval(tmp_path, "table2/mcq", {"mathvista": 60.0}, limit=3)  # a partial row: no average
    rows = {r["row"]: r for r in report.table_rows(tmp_path, "table2")}
    yorn = rows["yorn"]["cells"]
    assert yorn["mathvista"] == {"ours": 50.0, "paper": 57.2, "diff": pytest.approx(-7.2)}
    assert yorn["avg"]["ours"] == 40.0 and yorn["avg"]["diff"] == pytest.approx(40.0 - 44.2)  # ai2d is not a Table 2 column
    assert rows["mcq"]["cells"]["avg"]["ours"] is None and rows["mcq"]["cells"]["mathvista"]["ours"] == 60.0
    assert rows["baseline"]["cells"]["mmstar"] == {"ours": None, "paper": 55.7, "diff": None}
    text = report.markdown_table(tmp_path, "table2")
    assert "| + YORN | thinking | 40.0 / 44.2 (-4.2) | 50.0 / 57.2 (-7.2) | 25.0 / 20.6 (+4.4) | 40.0 / 45.0 (-5.0) | 45.0 / 53.9 (-8.9) |" in text
    assert "| Qwen2.5-VL-3B (baseline) | direct | – / 46.3 | – / 61.8 |" in text
    assert "first 3 questions" in text and "Not run yet: Qwen2.5-VL-3B (baseline), + Chart, + IoU, + Open-Ended." in text
    assert "TOY-SCALE" not in text
    # Table 3 has no average column, in the paper's layout.
    assert report.markdown_table(tmp_path, "table3").splitlines()[3] == "| row | prompt | MathVista | MathVision | MMStar |"


def test_smooth_and_series():
    assert report.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    metrics = [{"step": 1, "a": 1.0}, {"step": 2, "a": float("nan")}, {"step": 3}, {"step": 4, "a": 2.0}]
    assert report.series(metrics, "a") == ([1, 4], [1.0, 2.0])


# ---- a small rehearsal, then the notebooks on it ----------------------------------------------------

REHEARSAL_ROWS = [  # every kind of row: base, SFT, GRPO, a borrowed checkpoint, an external judge, BMAS, InternVL
    "table1/qwen25vl_3b_direct", "table1/qwen25vl_3b_sft", "table2/yorn", "table2/open_ended",
    "table3/scale_0.5", "table3/scale_1", "table3/internvl25_4b_mixed_r1", "table4/llm_judge", "table4/bmas",
]


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    cwd, environ = os.getcwd(), dict(os.environ)
    try:
        info = rehearsal.main(["--results", str(results), "--rows", ",".join(REHEARSAL_ROWS), "--steps", "2",
                               "--items", "2", "--synth-items", "4", "--base-sft-steps", "3"])
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
    return results, info


def test_rehearsal_writes_the_fixed_layout(rehearsed):
    results, info = rehearsed
    assert info["toy"] and info["steps"] == 2 and info["seconds"]["total"] > 0
    trained = {"table1/qwen25vl_3b_sft", "table2/yorn", "table1/qwen25vl_3b_mixed_r1", "table3/scale_0.5",
               "table3/internvl25_4b_mixed_r1", "table4/llm_judge", "table4/bmas"}
    for key in REHEARSAL_ROWS:
        report_json = json.loads((results / key / "eval.json").read_text())
        experiment = launch.EXPERIMENTS[key.split("/")[0]]
        assert set(report_json["summary"]) == set(experiment.benchmarks) and report_json["limit"] == 2
        launched = json.loads((results / key / "launch.json").read_text())
        assert launched[-1]["kind"] == "eval" and " eval.py --ckpt " in launched[-1]["command"]
    for key in trained:
        run = results / key / "train"
        assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
        assert (run / "checkpoints" / "step-000002" / "model.safetensors").is_file()
        assert load_config(run / "config.yaml").rollout.group_size == 4  # the toy sizes, after the row's overrides
    assert load_config(results / "table4/llm_judge/train/config.yaml").reward.open_ended == "llm_judge"
    assert load_config(results / "table2/yorn/train/config.yaml").data.problem_types == ["yorn"]
    assert not (results / "table2/open_ended/train").exists()  # it evaluates table1's run
    ckpt = json.loads((results / "table2/open_ended/eval.json").read_text())["checkpoint"]
    assert ckpt == str(results / "table1/qwen25vl_3b_mixed_r1/train/checkpoints/step-000002")
    for name in ("table1", "table2", "table3", "table4", "others"):
        assert (results / "report" / f"{name}.md").read_text().startswith("### ")
    assert (results / "report" / "figure4.png").stat().st_size > 10_000


def test_rehearsal_trains_internvl_with_the_shipped_config(rehearsed):
    results, info = rehearsed
    assert set(info["base_models"]) == {"qwen2_5_vl", "internvl"}  # a tiny model of each family the rows need
    assert not any("pixels" in o for o in info["toy_train_overrides"])  # toy sizes only, no config patches
    key = "table3/internvl25_4b_mixed_r1"
    train = shlex.split(json.loads((results / key / "launch.json").read_text())[0]["command"])
    args = train[train.index("train.py") + 1 :]
    assert args[0] == "configs/mixed_r1_internvl25_4b.yaml"
    run = results / key / "train"
    cfg = load_config(run / "config.yaml")
    # The run's config is the shipped file plus the command's overrides (paths, toy sizes), nothing else.
    assert cfg == load_config(ROOT / args[0], args[1:])
    assert (cfg.model.min_pixels, cfg.model.max_pixels) == (None, None) and cfg.rollout.group_size == 4
    assert family_of_dir(cfg.model.path).name == "internvl"  # trained from the tiny InternVL base model
    assert json.loads((run / "checkpoints/step-000002/config.json").read_text())["model_type"] == "internvl"
    # Its toy base model was made by the InternVL SFT row's config and overrides, also unpatched.
    base_sft = load_config(Path(info["base_models"]["internvl"]).parents[1] / "config.yaml")
    assert (base_sft.train.algorithm, base_sft.model.max_pixels, base_sft.train.steps) == ("sft", None, 3)
    for metrics in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        assert 0 < metrics["completions/mean_length"] <= 32 and metrics["entropy"] > 0
        assert -3 <= metrics["reward/total"] <= 3  # accuracy in [-2, 2] (BMAS) plus format in [0, 1]
    evaluated = json.loads((results / key / "eval.json").read_text())
    assert evaluated["checkpoint"] == str(run / "checkpoints" / "step-000002")
    assert all(0 <= s["score"] <= 100 for s in evaluated["summary"].values())


def notebook_outputs(path: Path) -> tuple[str, int]:
    """All markdown/plain-text outputs of an executed notebook, and its number of PNG outputs."""
    import nbformat

    texts, images = [], 0
    for cell in nbformat.read(path, as_version=4).cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", output
            data = output.get("data", {})
            texts += [data.get("text/markdown", ""), data.get("text/plain", ""), output.get("text", "")]
            images += "image/png" in data
    return "\n".join(texts), images


def test_tables_notebook_renders_every_table_from_the_results(rehearsed):
    results, _ = rehearsed
    executed = report.execute_notebook(ROOT / "experiments" / "tables.ipynb", results)
    text, _ = notebook_outputs(executed)
    assert "TOY-SCALE REHEARSAL" in text
    for name, experiment in launch.EXPERIMENTS.items():
        assert experiment.title in text and (results / "report" / f"{name}.md").is_file()
        for row in report.table_rows(results, name):
            cells = " | ".join(report.format_cell(row["cells"][c]) for c in report.columns(experiment))
            assert f"| {row['label']} | {row['prompt']} | {cells} |" in text, row["label"]
    # Our numbers in the rendered table are eval.json's.
    scores = json.loads((results / "table4/bmas/eval.json").read_text())["summary"]
    bmas = next(r for r in report.table_rows(results, "table4") if r["row"] == "bmas")["cells"]
    assert all(bmas[b]["ours"] == scores[b]["score"] for b in launch.EXPERIMENTS["table4"].benchmarks)
    assert "Not run yet: Mixed-R1 (7B)." in text


def test_curves_notebook_draws_figure4_and_training_curves(rehearsed):
    results, _ = rehearsed
    executed = report.execute_notebook(ROOT / "experiments" / "curves.ipynb", results)
    _, images = notebook_outputs(executed)
    pngs = {p.name: p.stat().st_size for p in (results / "report").glob("*.png")}
    assert {"figure4.png", "curves_table1.png", "curves_table2.png", "curves_table3.png", "curves_table4.png"} <= set(pngs)
    assert "curves_others.png" not in pngs  # its one row (Mixed-R1 7B) was not run
    assert all(size > 10_000 for size in pngs.values())
    assert images == 5  # Figure 4 and one figure per table with a training run
    runs = report.experiment_runs(results, "table4")
    assert set(runs) == {"Qwen2.5-0.5B (LLM judge)", "BMAS (ours)"}
    assert all(report.series(m, "accuracy/open_ended")[0] == [1, 2] for m in runs.values())
