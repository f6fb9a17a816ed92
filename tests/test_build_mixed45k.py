"""experiments/build_mixed45k.py end to end on tiny fixtures: three sources written in their public
schema (tests/test_convert.py's writers), the tiny random Qwen, and a scripted sampler that makes each
item kept, all right or all wrong by its id, so every count of the report is known. Then: a rerun
skips every stage and rewrites nothing; a changed source reruns only what depends on it; torchrun
with 2 ranks gives the same files. The composer's nested presets are checked on a pool of their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import build_mixed45k as build
from mixedr1 import data_engine
from mixedr1.config import InputError
from mixedr1.data import compose
from mixedr1.data import convert as conv
from test_convert import cell, conversation, picture, write_parquet
from nodes import node_env, run_two_nodes, write_launcher

REPO = Path(__file__).resolve().parents[1]
K = 3

# What the scripted sampler makes of each record (any other id: all wrong).
PLAN = {
    "mapqa-m1": "kept", "mapqa-m2": "right", "mapqa-m3": "wrong",
    "geoqa-g1": "kept", "geoqa-g2": "kept", "geoqa-g3": "wrong",
    **{f"chartqa-data.train-00000-of-00001-{i}": "kept" for i in range(1, 5)}, "chartqa-data.train-00000-of-00001-5": "right",
    "mapqa-m5": "kept",  # the row added by the "changed input" step
}


def scripted_sampler(hf, batch, params, generator, tokenizer):
    """K formatted answers per record: right ones, wrong ones, or one right and the rest wrong."""
    texts = []
    for record in batch.records:
        right, wrong = f"<think>t</think><answer>{record.answer}</answer>", "<think>t</think><answer>zzz</answer>"
        plan = PLAN.get(record.id, "wrong")
        texts += [right] * K if plan == "right" else [wrong] * K if plan == "wrong" else [right] + [wrong] * (K - 1)
    return texts, [False] * len(texts)


def install_scripted_sampler():
    """For the torchrun launcher: the same patch as the in-process runs."""
    data_engine.sample_completions = scripted_sampler


def write_mapqa(folder: Path, extra_row: bool = False) -> None:
    rows = [
        {"id": "m1", "image": cell(picture("red")), "conversations": conversation("Is Ohio the highest?", "Yes"), "data_source": "MapQA"},
        {"id": "m2", "image": cell(picture("blue")), "conversations": conversation("Is Utah lower than Iowa?", "No"), "data_source": "MapQA"},
        {"id": "m3", "image": cell(picture("green")), "conversations": conversation("Is Texas the lowest?", "Answer: yes"), "data_source": "MapQA"},
        {"id": "m4", "image": cell(picture("green")), "conversations": conversation("Which state is darkest?", "Texas"), "data_source": "MapQA"},
    ]
    if extra_row:
        rows.append({"id": "m5", "image": cell(picture("gray")), "conversations": conversation("Is Maine the highest?", "No"), "data_source": "MapQA"})
    write_parquet(folder / "MapQA(MathV360K)" / "train-00000-of-00001.parquet", rows)


def write_raw(raw: Path) -> Path:
    """Three sources in their public schema and the sources YAML naming them; returns the YAML."""
    write_mapqa(raw / "mapqa")  # 3 yes/no + 1 not yes/no
    write_parquet(raw / "geoqa" / "train-00000-of-00001.parquet", [  # 3 mcq + 1 without options
        {"id": f"g{i}", "image": cell(picture(color)), "data_source": "GeoQA+",
         "conversations": conversation(f"Find angle {i}.\nChoices:\nA: 30\nB: 45\nC: 60", "Answer: B")}
        for i, color in ((1, "white"), (2, "black"), (3, "gray"))
    ] + [{"id": "g4", "image": cell(picture("gray")), "data_source": "GeoQA+", "conversations": conversation("Find AB.", "5")}])
    write_parquet(raw / "ChartQA" / "data" / "train-00000-of-00001.parquet", [  # 5 chart
        {"image": cell(picture("red", size=(64 + i, 48))), "query": f"What is bar {i}?", "label": [f"{i}.5"], "human_or_machine": 0}
        for i in range(1, 6)
    ])
    sources = raw / "sources.yaml"
    sources.write_text(
        "root: .\n"
        "sources:\n"
        "  - {name: mapqa, source: mapqa, in: mapqa}\n"
        "  - {name: geoqa, source: geoqa, in: geoqa}\n"
        "  - {name: chartqa, source: chartqa, in: ChartQA, limit: 100}\n"
    )
    return sources


def argv(sources: Path, model: Path, out: Path) -> list[str]:
    return ["--sources", str(sources), "--model", str(model), "--out", str(out), "--preset", "mixed45k", "20k", "90k",
            "--scale", "0.001", "--samples", str(K), "--batch-size", "2", "--max-new-tokens", "4"]


def snapshot(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_raw(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def built(raw, tiny_qwen_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "mixed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data_engine, "sample_completions", scripted_sampler)
        report = build.main(argv(raw, tiny_qwen_dir, out))
    return out, report


def counts(report: dict, name: str, ptype: str) -> tuple:
    c = report["sources"][name]["by_problem_type"][ptype]
    return c["candidates"], c["kept"], c["dropped_all_right"], c["dropped_all_wrong"], c["dropped_other"]


def test_report_counts_match_the_items(built, capsys):
    out, report = built
    assert report["stages"] == {"convert": dict.fromkeys(["mapqa", "geoqa", "chartqa"], "ran"),
                                "filter": dict.fromkeys(["mapqa", "geoqa", "chartqa"], "ran"),
                                "compose": dict.fromkeys(["mixed45k", "20k", "90k"], "ran")}
    # candidates, kept, dropped all right, dropped all wrong, dropped other
    assert counts(report, "mapqa", "yorn") == (3, 1, 1, 1, 0)
    assert counts(report, "geoqa", "mcq") == (3, 2, 0, 1, 0)
    assert counts(report, "chartqa", "chart") == (5, 4, 1, 0, 0)
    assert report["total"] == {"candidates": 11, "kept": 7, "dropped_all_right": 2, "dropped_all_wrong": 2, "dropped_other": 0}
    mapqa = report["sources"]["mapqa"]
    assert (mapqa["rows"], mapqa["not_converted"], mapqa["not_converted_by_kind"]) == (4, 1, {"not_yes_no": 1})
    assert report["sources"]["geoqa"]["not_converted_by_kind"] == {"no_options": 1}
    assert json.loads((out / "report.json").read_text()) == {k: v for k, v in report.items() if k != "stages"}

    # The kept files hold exactly the planned items, as the candidates' own lines.
    for name in ("mapqa", "geoqa", "chartqa"):
        kept = {r["id"] for r in lines(build.kept_file(out, name))}
        assert kept == {i for i in (r["id"] for r in lines(build.candidates_file(out, name))) if PLAN.get(i) == "kept"}
    # Presets at scale 0.001: mixed45k asks yorn 9, mcq 20, chart 6, grounding 5, open_ended 5; 20k half; 90k double.
    mixes = report["mixes"]
    assert mixes["mixed45k"]["categories"]["chart"] == {"requested": 6, "available": 4, "taken": 6, "repeated": 2, "shortfall": 0}
    assert mixes["20k"]["categories"]["chart"] == {"requested": 3, "available": 4, "taken": 3, "repeated": 0, "shortfall": 0}
    assert mixes["90k"]["categories"]["chart"]["repeated"] == 8 and mixes["90k"]["categories"]["yorn"]["taken"] == 18
    assert mixes["90k"]["categories"]["grounding"] == {"requested": 10, "available": 0, "taken": 0, "repeated": 0, "shortfall": 10}
    mix = lines(build.mix_file(out, "mixed45k"))
    assert len(mix) == mixes["mixed45k"]["items"] == 9 + 20 + 6
    assert sorted(r["id"] for r in mix if "@rep" not in r["id"] and r["problem_type"] == "chart") == \
        sorted(r["id"] for r in lines(build.kept_file(out, "chartqa")))
    assert (out / "images").is_dir() and all((out / r["images"][0]).is_file() for r in mix)  # OUT is the data root


def test_rerun_skips_every_stage_and_rewrites_nothing(built, raw, tiny_qwen_dir, monkeypatch):
    out, first = built
    before = snapshot(out)
    for module, name in ((conv, "convert"), (data_engine, "main"), (compose, "compose"), (compose, "write_mix")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("a finished stage ran again"))
    report = build.main(argv(raw, tiny_qwen_dir, out))
    assert set(report["stages"]["convert"].values()) == set(report["stages"]["filter"].values()) == \
        set(report["stages"]["compose"].values()) == {"skipped"}
    assert snapshot(out) == before
    assert {k: v for k, v in report.items() if k != "stages"} == {k: v for k, v in first.items() if k != "stages"}


def test_a_changed_source_reruns_what_depends_on_it(tiny_qwen_dir, tmp_path, monkeypatch):
    sources, out = write_raw(tmp_path / "raw"), tmp_path / "mixed"
    monkeypatch.setattr(data_engine, "sample_completions", scripted_sampler)
    build.main(argv(sources, tiny_qwen_dir, out))
    before = snapshot(out)
    write_mapqa(tmp_path / "raw" / "mapqa", extra_row=True)  # one more row in one source
    report = build.main(argv(sources, tiny_qwen_dir, out))
    assert report["stages"]["convert"] == {"mapqa": "ran", "geoqa": "skipped", "chartqa": "skipped"}
    assert report["stages"]["filter"] == {"mapqa": "ran", "geoqa": "skipped", "chartqa": "skipped"}
    assert set(report["stages"]["compose"].values()) == {"ran"}  # mapqa's kept items changed
    assert counts(report, "mapqa", "yorn") == (4, 2, 1, 1, 0) and report["total"]["candidates"] == 12
    after = snapshot(out)
    assert all(after[path] == before[path] for path in before if path.startswith(("geoqa.", "chartqa.")))
    assert {r["id"] for r in lines(build.kept_file(out, "mapqa"))} == {"mapqa-m1", "mapqa-m5"}
    results = [json.loads(line) for p in build.rank_files(build.kept_file(out, "mapqa"), "results") for line in p.read_text().splitlines()]
    assert sorted(r["id"] for r in results) == ["mapqa-m1", "mapqa-m2", "mapqa-m3", "mapqa-m5"]  # old results deleted, all sampled again


def test_nested_presets_take_new_items_first_and_count_repeats(tmp_path, capsys):
    """Table 3 style: halve / keep / double each category of a 'Mixed-45K' of 10 yorn, 8 mcq, 4 chart,
    from a pool of 40 yorn, 12 mcq, 5 chart: smaller mixes are subsets, the doubled one takes items
    not in the base first and repeats only what the pool lacks."""
    pool = tmp_path / "kept.jsonl"
    rows = [{"id": f"{t}-{i}", "problem_type": t, "question": "q?", "answer": "yes", "images": ["x.png"]}
            for t, n in (("yorn", 40), ("mcq", 12), ("chart", 5)) for i in range(n)]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"yorn": 10, "mcq": 8, "chart": 4}
    mixes = {scale: compose.compose([pool], base, scale, seed=3, allow_repeat=True) for scale in (0.5, 1, 2)}

    def ids(scale, ptype):
        return [json.loads(line)["id"] for line in mixes[scale][0] if json.loads(line)["problem_type"] == ptype]

    for ptype in base:
        half, full, double = (set(ids(s, ptype)) for s in (0.5, 1, 2))
        assert half < full and full <= {i.split("@")[0] for i in double}
    # yorn: the pool (40) holds 20, so the doubled mix is 10 new items beyond the base, no repeat.
    assert len(set(ids(2, "yorn")) - set(ids(1, "yorn"))) == 10 and mixes[2][1]["yorn"]["repeated"] == 0
    # mcq: 16 asked of 12: all 4 not in the base first, then 4 repeats, and the repeats are the
    # first of the draw order, which is the halved mix.
    originals = [i for i in ids(2, "mcq") if "@rep" not in i]
    repeats = [i.removesuffix("@rep1") for i in ids(2, "mcq") if "@rep" in i]
    assert len(originals) == 12 and len(set(originals) - set(ids(1, "mcq"))) == 4
    assert sorted(repeats) == sorted(ids(0.5, "mcq")) and mixes[2][1]["mcq"]["repeated"] == 4
    # chart: 8 asked of 5: 1 new item, then 3 repeats.
    assert mixes[2][1]["chart"] == {"requested": 8, "available": 5, "taken": 8, "repeated": 3, "shortfall": 0}
    assert compose.notes(mixes[2][1]) == [
        "compose: mcq: asked for 16, the pool has 12: every one taken, and 4 had to repeat",
        "compose: chart: asked for 8, the pool has 5: every one taken, and 3 had to repeat"]
    # The presets: Table 3's rows are Mixed-45K halved and doubled per category.
    assert compose.PRESETS["20k"] == {t: n // 2 for t, n in compose.MIXED45K.items()}
    assert compose.PRESETS["90k"] == {t: 2 * n for t, n in compose.MIXED45K.items()}
    assert sum(compose.PRESETS["mixed45k"].values()) == 45000


def test_sources_yaml_errors_name_file_entry_and_field(raw, tmp_path):
    shipped = build.read_sources(REPO / "configs" / "sources.yaml", check_folders=False)
    assert {e.source for e in shipped} == set(conv.CONVERTERS) - {"r1"}  # every source of the paper
    cases = [
        ("sources:\n  - {name: a, source: nosuch, in: x}\n", r"sources\[0\] \(name 'a'\): field 'source': expected one of"),
        ("sources:\n  - {name: a, source: mapqa}\n", r"sources\[0\] \(name 'a'\): field 'in'"),
        ("sources:\n  - {name: a, source: mapqa, in: nowhere}\n", r"field 'in': folder not found: .*nowhere"),
        (f"sources:\n  - {{name: a, source: mapqa, in: {raw.parent / 'mapqa'}}}\n  - {{name: a, source: vsr, in: {raw.parent}}}\n",
         r"sources\[1\] \(name 'a'\): field 'name': 'a' is already the name of sources\[0\]"),
        (f"sources:\n  - {{name: a, source: mapqa, in: {raw.parent / 'mapqa'}, limit: 0}}\n", r"field 'limit': expected a whole number"),
        (f"sources:\n  - {{name: a, source: mapqa, in: {raw.parent / 'mapqa'}, limt: 5}}\n", r"unknown field\(s\) \['limt'\]"),
        ("sources:\n  - {name: a b, source: mapqa, in: x}\n", r"sources\[0\]: field 'name'"),
        ("source: []\n", r"expected a mapping with a non-empty list `sources:`"),
    ]
    for i, (text, message) in enumerate(cases):
        path = tmp_path / f"s{i}.yaml"
        path.write_text(text)
        with pytest.raises(InputError, match=message) as error:
            build.read_sources(path)
        assert str(error.value).startswith(str(path))


@pytest.mark.slow
def test_two_nodes_build_what_one_process_builds(built, raw, tiny_qwen_dir, tmp_path):
    """Two ranks as two torchrun "nodes" of one rank each (tests/nodes.py): the same files."""
    one, _ = built
    launcher = write_launcher(tmp_path / "launch_build.py", "from test_build_mixed45k import install_scripted_sampler",
                              "install_scripted_sampler()", "from experiments import build_mixed45k",
                              "build_mixed45k.POLL_S = 0.1", "build_mixed45k.main(sys.argv[1:])")
    out = tmp_path / "mixed"
    env = node_env()
    run_two_nodes([str(launcher), *argv(raw, tiny_qwen_dir, out)], cwd=REPO, env=env, timeout=300)
    for name in ("mapqa", "geoqa", "chartqa"):
        kept = build.kept_file(out, name)
        assert [p.name for p in build.rank_files(kept, "results")] == [f"{name}.kept.results.rank0.jsonl", f"{name}.kept.results.rank1.jsonl"]
        assert kept.read_bytes() == build.kept_file(one, name).read_bytes()
    for preset in ("mixed45k", "20k", "90k"):
        assert build.mix_file(out, preset).read_bytes() == build.mix_file(one, preset).read_bytes()
    assert json.loads((out / "report.json").read_text())["total"] == json.loads((one / "report.json").read_text())["total"]
