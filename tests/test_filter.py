"""The data engine (docs/method.md §5) and the mix composer on synthetic data and the tiny model.

Scripted responses give groups constant or spread by construction; the "parity" sampler runs the
real sampler and maps each sampled text to a right or a wrong answer by a hash, so kept sets are
non-trivial and still depend on the seeded sampling (resume, 2 ranks = 1 rank).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from mixedr1.config import PROBLEM_TYPES
from mixedr1.data import compose as compose_cli
from mixedr1 import data_engine as filter_cli
from mixedr1.data.prompt import model_frame_box
from mixedr1.data.synth import write_synthetic_dataset
from mixedr1.models import load_processor
from nodes import node_env, run_two_nodes, write_launcher

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLER = filter_cli.sample_completions
K = 3


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    return tiny_qwen_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_per_type=2, seed=0).train  # 10 items


def run(tiny, data, out, *extra):
    argv = ["--model", str(tiny), "--data", str(data), "--out", str(out), "--samples", str(K),
            "--max-new-tokens", "6", "--batch-size", "2", *extra]
    return filter_cli.main(argv, poll_s=0.1)


def input_lines(data) -> dict[str, str]:
    return {json.loads(line)["id"]: line for line in Path(data).read_text().splitlines() if line.strip()}


def results(out: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(out.parent.glob(out.stem + ".results.rank*.jsonl"))
            for line in path.read_text().splitlines()]


def correct(record) -> str:
    """A formatted right answer (grounding: a formatted box that misses, so only the format scores)."""
    answer = "[0, 0, 1, 1]" if record.problem_type == "grounding" else str(record.answer)
    return f"<think>I look.</think><answer>{answer}</answer>"


def parity_sampler(hf, batch, params, generator, tokenizer):
    """The real sampler; each sampled text becomes `correct` or garbage by the parity of its hash."""
    texts, clipped = REAL_SAMPLER(hf, batch, params, generator, tokenizer)
    G = params.group_size
    return [correct(batch.records[i // G]) if zlib.crc32(t.encode()) % 2 == 0 else "no idea" for i, t in enumerate(texts)], clipped


def install_parity_sampler():
    """For the torchrun launcher: the same patch as the in-process runs."""
    filter_cli.sample_completions = parity_sampler


# ----------------------------------------------------------------------------------------------
# Decisions on scripted groups


def test_constant_groups_are_dropped_and_spread_groups_kept(tiny, data, tmp_path, monkeypatch):
    processor = load_processor(tiny)
    records = {item.record.id: item.record for item in filter_cli.read_items(Path(data), Path(data).parent)}

    def partial_box(record) -> str:  # the model-frame box moved right by half its width: IoU 1/3
        x1, y1, x2, y2 = model_frame_box(record, processor)
        shift = (x2 - x1) / 2
        return f"<think>t</think><answer>[{x1 + shift}, {y1}, {x2 + shift}, {y2}]</answer>"

    def answer(text: str) -> str:
        return f"<think>t</think><answer>{text}</answer>"

    r = lambda name: records[f"train-{name}"]  # noqa: E731
    wrong_letter = "A" if r("mcq-00001").answer != "A" else "B"
    plan = {
        "yorn-00000": ([answer(r("yorn-00000").answer)] * 3, "too_easy"),
        "yorn-00001": ([answer(r("yorn-00001").answer), answer("maybe"), "garbage"], "kept"),
        "mcq-00000": (["garbage"] * 3, "too_hard"),  # all zero total
        "mcq-00001": ([answer(wrong_letter)] * 3, "too_hard"),  # formatted, all wrong: R = 1 each
        "chart-00000": ([answer(r("chart-00000").answer)] * 3, "too_easy"),
        "chart-00001": ([f"<answer>{r('chart-00001').answer}</answer>"] * 3, "other_constant"),  # right, unformatted
        "grounding-00000": ([partial_box(r("grounding-00000"))] * 3, "other_constant"),  # the same IoU 1/3
        "grounding-00001": ([partial_box(r("grounding-00001")), "garbage", "garbage"], "kept"),
        "open_ended-00000": ([answer(r("open_ended-00000").answer)] * 3, "too_easy"),  # BMAS at its max, 2
        "open_ended-00001": ([answer(r("open_ended-00001").answer), answer("A dog."), answer(r("open_ended-00001").answer)], "kept"),
    }

    def scripted(hf, batch, params, generator, tokenizer):
        return [t for rec in batch.records for t in plan[rec.id.removeprefix("train-")][0]], [False] * (len(batch.records) * K)

    monkeypatch.setattr(filter_cli, "sample_completions", scripted)
    out = tmp_path / "kept.jsonl"
    report = run(tiny, data, out)

    decisions = {e["id"].removeprefix("train-"): e["decision"] for e in results(out)}
    assert decisions == {name: expected for name, (_, expected) in plan.items()}
    lines = input_lines(data)
    assert out.read_text() == "".join(lines[i] + "\n" for i in lines if decisions[i.removeprefix("train-")] == "kept")
    total = report["total"]
    assert (total["seen"], total["kept"], total["too_easy"], total["too_hard"], total["other_constant"]) == (10, 3, 3, 2, 2)
    assert report["by_problem_type"]["mcq"]["too_hard"] == 2 and report["by_source"]["synthetic"]["seen"] == 10
    spreads = {e["id"].removeprefix("train-"): max(e["rewards"]) - min(e["rewards"]) for e in results(out)}
    assert spreads["yorn-00001"] == pytest.approx(2.0)  # R = 1 + 1 vs 0
    assert total["spread"]["max"] == pytest.approx(max(spreads.values()), abs=1e-6)
    assert sum(total["spread"]["histogram"].values()) == 10 and total["spread"]["histogram"]["constant"] == 7
    assert json.loads(filter_cli.report_file(out).read_text()) == report

    # --tol re-decides from the stored rewards without sampling again: a tolerance above every spread drops all.
    monkeypatch.setattr(filter_cli, "sample_completions", lambda *a: pytest.fail("sampled again"))
    assert run(tiny, data, out, "--tol", "10")["total"]["kept"] == 0
    assert out.read_text() == ""


# ----------------------------------------------------------------------------------------------
# The real tiny model


@pytest.fixture(scope="module")
def honest(tiny, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("honest") / "kept.jsonl"
    return out, run(tiny, data, out)


def test_honest_run_counts_add_up(honest):
    out, report = honest
    for group in [report["total"], *report["by_problem_type"].values(), *report["by_source"].values()]:
        assert group["seen"] == group["kept"] + group["too_easy"] + group["too_hard"] + group["other_constant"]
        assert sum(group["spread"]["histogram"].values()) == group["seen"]
    assert report["total"]["seen"] == 10 and set(report["by_problem_type"]) == set(PROBLEM_TYPES)
    entries = results(out)
    assert len(entries) == 10 and all(len(e["rewards"]) == len(e["format"]) == K for e in entries)
    assert len(out.read_text().splitlines()) == report["total"]["kept"]


def test_other_settings_on_the_same_output_are_an_error(honest, tiny, data, tmp_path):
    out, _ = honest
    mine = tmp_path / out.name
    (tmp_path / "kept.results.rank0.jsonl").write_text(filter_cli.results_file(out, 0).read_text())
    with pytest.raises(ValueError, match=r"kept\.results\.rank0\.jsonl:1: .*other settings"):
        run(tiny, data, mine, "--seed", "1")
    with pytest.raises(SystemExit):
        run(tiny, data, mine, "--set", "grpo.beta=0")  # not a setting of the filter


# ----------------------------------------------------------------------------------------------
# Resume and ranks (parity sampler)


class SimulatedKill(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(tiny, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "kept.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(filter_cli, "sample_completions", parity_sampler)
        run(tiny, data, out)
    return out


def test_resume_after_a_kill_is_byte_identical(uninterrupted, tiny, data, tmp_path, monkeypatch):
    kept = uninterrupted.read_text().splitlines()
    assert 0 < len(kept) < 10  # the parity sampler keeps some items and drops others

    sampled: list[str] = []

    def counting(crash_at_call=None):
        def sampler(hf, batch, params, generator, tokenizer):
            if crash_at_call is not None and len(sampled) // 2 == crash_at_call:
                raise SimulatedKill
            sampled.extend(r.id for r in batch.records)
            return parity_sampler(hf, batch, params, generator, tokenizer)
        return sampler

    out = tmp_path / "kept.jsonl"
    monkeypatch.setattr(filter_cli, "sample_completions", counting(crash_at_call=3))
    with pytest.raises(SimulatedKill):
        run(tiny, data, out)
    assert len(sampled) == 6 and len(results(out)) == 6  # three batches of two were finished and flushed
    # A half-written batch: its second line lost, and a torn line after it.
    path = filter_cli.results_file(out, 0)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:5]) + lines[5][:40])

    first_run, sampled[:] = list(sampled), []
    monkeypatch.setattr(filter_cli, "sample_completions", counting())
    run(tiny, data, out)
    assert sampled == first_run[4:6] + [i for i in input_lines(data) if i not in first_run]  # batch 2 again, then the rest
    assert sorted(e["id"] for e in results(out)) == sorted(input_lines(data))  # each item exactly once
    assert out.read_bytes() == uninterrupted.read_bytes()
    assert filter_cli.report_file(out).read_bytes() == filter_cli.report_file(uninterrupted).read_bytes()


@pytest.mark.slow
def test_two_nodes_keep_what_one_process_keeps(uninterrupted, tiny, data, tmp_path):
    """Two ranks as two torchrun "nodes" of one rank each (tests/nodes.py): the same kept items and report."""
    launcher = write_launcher(tmp_path / "launch_filter.py", "from test_filter import install_parity_sampler",
                              "install_parity_sampler()", "from mixedr1 import data_engine",
                              "data_engine.main(sys.argv[1:], poll_s=0.1)")
    out = tmp_path / "kept.jsonl"
    env = node_env()
    run_two_nodes([str(launcher), "--model", str(tiny), "--data", str(data), "--out", str(out), "--samples", str(K),
                   "--max-new-tokens", "6", "--batch-size", "2"], cwd=REPO, env=env, timeout=300)
    assert sorted(p.name for p in tmp_path.glob("kept.results.rank*.jsonl")) == ["kept.results.rank0.jsonl", "kept.results.rank1.jsonl"]
    assert len(filter_cli.results_file(out, 1).read_text().splitlines()) == 4  # batches 1 and 3 of 0..4
    assert out.read_bytes() == uninterrupted.read_bytes()
    assert filter_cli.report_file(out).read_bytes() == filter_cli.report_file(uninterrupted).read_bytes()


# ----------------------------------------------------------------------------------------------
# Composing the mix


def write_pool(tmp_path: Path) -> list[Path]:
    """Two files: 40 yorn, 12 mcq, 5 chart, 0 grounding, 3 open_ended."""
    sizes = {"yorn": 40, "mcq": 12, "chart": 5, "open_ended": 3}
    rows = [{"id": f"{t}-{i}", "problem_type": t, "question": f"q {i}?", "answer": "yes", "images": ["x.png"]}
            for t, n in sizes.items() for i in range(n)]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in rows[::2]))
    second.write_text("".join(json.dumps(r, indent=None, separators=(",", ":")) + "\n" for r in rows[1::2]))
    return [first, second]


def compose(tmp_path, inputs, *extra, name="mix.jsonl"):
    out = tmp_path / name
    report = compose_cli.main(["--in", *map(str, inputs), "--out", str(out), *extra])
    return out.read_text().splitlines(), report["categories"]


def ids_by_type(lines):
    found: dict[str, list[str]] = {}
    for line in lines:
        row = json.loads(line)
        found.setdefault(row["problem_type"], []).append(row["id"])
    return found


def test_compose_counts_seed_and_original_lines(tmp_path, capsys):
    inputs = write_pool(tmp_path)
    lines, summary = compose(tmp_path, inputs, "--counts", "yorn=10,mcq=4,open_ended=all", "--seed", "1")
    found = ids_by_type(lines)
    assert {t: len(v) for t, v in found.items()} == {"yorn": 10, "mcq": 4, "open_ended": 3}
    originals = {json.loads(line)["id"]: line for p in inputs for line in p.read_text().splitlines()}
    assert all(originals[json.loads(line)["id"]] == line for line in lines)  # unchanged lines
    order = list(originals)  # a.jsonl then b.jsonl
    assert [order.index(json.loads(line)["id"]) for line in lines] == sorted(order.index(json.loads(line)["id"]) for line in lines)
    assert summary["chart"] == {"requested": None, "available": 5, "taken": 0, "repeated": 0, "shortfall": 0}
    assert "requested" in capsys.readouterr().out

    again, _ = compose(tmp_path, inputs, "--counts", "yorn=10,mcq=4,open_ended=all", "--seed", "1", name="again.jsonl")
    other, _ = compose(tmp_path, inputs, "--counts", "yorn=10,mcq=4,open_ended=all", "--seed", "2", name="other.jsonl")
    assert again == lines and ids_by_type(other)["yorn"] != found["yorn"]


def test_compose_scale_halves_and_doubles(tmp_path):
    inputs = write_pool(tmp_path)
    half, summary = compose(tmp_path, inputs, "--counts", "yorn=16,mcq=6", "--scale", "0.5", name="half.jsonl")
    assert {t: len(v) for t, v in ids_by_type(half).items()} == {"yorn": 8, "mcq": 3}
    double, summary = compose(tmp_path, inputs, "--counts", "yorn=16,mcq=6", "--scale", "2", name="double.jsonl")
    assert {t: len(v) for t, v in ids_by_type(double).items()} == {"yorn": 32, "mcq": 12}
    assert summary["mcq"]["shortfall"] == 0 and summary["yorn"]["requested"] == 32


def test_compose_reports_a_shortfall_or_repeats(tmp_path, capsys):
    inputs = write_pool(tmp_path)
    lines, summary = compose(tmp_path, inputs, "--counts", "chart=12,grounding=2")
    assert summary["chart"] == {"requested": 12, "available": 5, "taken": 5, "repeated": 0, "shortfall": 7}
    assert summary["grounding"]["shortfall"] == 2 and len(lines) == 5
    assert "short by 7" in capsys.readouterr().out

    lines, summary = compose(tmp_path, inputs, "--counts", "chart=12", "--allow-repeat", name="rep.jsonl")
    ids = ids_by_type(lines)["chart"]
    assert len(ids) == 12 and len(set(ids)) == 12 and summary["chart"]["repeated"] == 7
    assert sum(i.endswith("@rep1") for i in ids) == 5 and sum(i.endswith("@rep2") for i in ids) == 2


def test_compose_preset_and_bad_input(tmp_path):
    assert sum(compose_cli.PRESETS["mixed45k"].values()) == 45000
    assert compose_cli.PRESETS["mixed45k"]["yorn"] == 9000 and compose_cli.PRESETS["mixed45k"]["mcq"] == 20000
    inputs = write_pool(tmp_path)
    _, summary = compose(tmp_path, inputs, "--preset", "mixed45k", "--scale", "0.5")
    assert summary["mcq"]["requested"] == 10000 and summary["mcq"]["taken"] == 12
    inputs[1].write_text(inputs[1].read_text() + inputs[0].read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=r"b\.jsonl:\d+: record id='yorn-0': field 'id': duplicate of .*a\.jsonl:1"):
        compose_cli.compose(inputs, {"yorn": 1})
