"""The source converters (mixedr1/data/convert.py): fixtures written here in each release's public schema
(a few rows each, images drawn with Pillow), converted, then read back by the validating loader.
Every problem type, every conversion rule and every kind of bad row is checked on values."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mixedr1.config import InputError
from mixedr1.data import convert as conv
from mixedr1.data.dataset import load_records


def picture(color: str, size=(64, 48), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def cell(data: bytes) -> dict:
    """An image as Hugging Face's parquet stores it."""
    return {"bytes": data, "path": None}


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def write_image(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def run(tmp_path: Path, source: str, in_dir: Path, *extra: str, name: str | None = None):
    """Convert, then load with the project's loader (every record must pass); returns records by id,
    the report and the skipped rows."""
    out = tmp_path / "data" / f"{name or source}.jsonl"
    report = conv.main(["--source", source, "--in", str(in_dir), "--out", str(out),
                        "--images", str(tmp_path / "data" / "images"), *extra])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    loaded, load_report = load_records(out, out.parent, on_bad_record="error")
    assert len(loaded) == len(records) and load_report.n_bad == 0
    skipped = [json.loads(line) for line in conv.skipped_path(out).read_text().splitlines()]
    assert report["skipped"] == len(skipped) and report["records"] == len(records)
    return {r["id"]: r for r in records}, report, skipped


def skips(skipped: list[dict]) -> set[tuple]:
    return {(s["file"], s["row"], s["field"], s["kind"]) for s in skipped}


def conversation(question: str, reply: str) -> list[dict]:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": reply}]


# ----------------------------------------------------------------------------------------------
# yes/no


def test_yes_no_sources(tmp_path):
    # MapQA as LLaVA-OneVision-Data ships it: id, image, conversations, data_source
    mapqa = tmp_path / "raw" / "mapqa"
    write_parquet(mapqa / "MapQA(MathV360K)" / "train-00000-of-00001.parquet", [
        {"id": "m1", "image": cell(picture("red")), "conversations": conversation("Does Ohio have the highest value?", "Yes"), "data_source": "MapQA"},
        {"id": "m2", "image": cell(picture("blue")), "conversations": conversation("Is Utah lower than Iowa?", "Answer: No."), "data_source": "MapQA"},
        {"id": "m3", "image": cell(picture("green")), "conversations": conversation("Which state is darkest?", "Texas"), "data_source": "MapQA"},
        {"id": "m4", "image": None, "conversations": conversation("Is it?", "Yes"), "data_source": "MapQA"},
    ])
    records, report, skipped = run(tmp_path, "mapqa", mapqa)
    assert {i: (r["problem_type"], r["question"], r["answer"], r["source"]) for i, r in records.items()} == {
        "mapqa-m1": ("yorn", "Does Ohio have the highest value?", "yes", "MapQA"),
        "mapqa-m2": ("yorn", "Is Utah lower than Iowa?", "no", "MapQA"),
    }
    assert "options" not in records["mapqa-m1"]
    assert skips(skipped) == {("MapQA(MathV360K)/train-00000-of-00001.parquet", 3, "conversations", "not_yes_no"),
                              ("MapQA(MathV360K)/train-00000-of-00001.parquet", 4, "image", "missing_field")}
    assert report["rows"] == 4 and report["images_written"] == 2

    # CLEVR's own release: {"questions": [...]}, images/<split>/<file>; only yes/no answers
    clevr = tmp_path / "raw" / "CLEVR_v1.0"
    write_image(clevr / "images" / "train" / "CLEVR_train_000000.png", picture("gray"))
    questions = [("Is there a red cube?", "yes"), ("Are there more balls than cubes?", "no"),
                 ("How many spheres are there?", "1"), ("What colour is the cube?", "red")]
    write_json(clevr / "questions" / "CLEVR_train_questions.json", {"info": {}, "questions": [
        {"image_index": 0, "image_filename": "CLEVR_train_000000.png", "split": "train", "question_index": i,
         "question": q, "answer": a, "question_family_index": 3} for i, (q, a) in enumerate(questions)]})
    write_json(clevr / "questions" / "CLEVR_val_questions.json", {"questions": []})  # not read: default is train
    records, report, skipped = run(tmp_path, "clevr", clevr)
    assert {i: r["answer"] for i, r in records.items()} == {"clevr-train-0": "yes", "clevr-train-1": "no"}
    assert [(s["row"], s["kind"]) for s in skipped] == [(3, "not_yes_no"), (4, "not_yes_no")]
    assert report["settings"]["inputs"][0][0] == "questions/CLEVR_train_questions.json" and len(report["settings"]["inputs"]) == 1

    # FigureQA's release: qa_pairs.json and png/<image_index>.png; answers 0/1
    figureqa = tmp_path / "raw" / "figureqa" / "train1"
    write_image(figureqa / "png" / "0.png", picture("white"))
    write_json(figureqa / "qa_pairs.json", {"version": "1", "qa_pairs": [
        {"image_index": 0, "question_id": 0, "question_string": "Is Red the maximum?", "answer": 1, "color1_name": "Red"},
        {"image_index": 0, "question_id": 1, "question_string": "Is Blue the minimum?", "answer": 0, "color1_name": "Blue"},
        {"image_index": 7, "question_id": 0, "question_string": "Is Red smooth?", "answer": 1, "color1_name": "Red"},
    ]})
    records, _, skipped = run(tmp_path, "figureqa", figureqa)
    assert {i: r["answer"] for i, r in records.items()} == {"figureqa-0-0": "yes", "figureqa-0-1": "no"}
    assert skips(skipped) == {("qa_pairs.json", 3, "image", "no_image")}
    assert "png/7.png" in skipped[0]["reason"]

    # VSR: jsonl with COCO image names, the images under --image-root (here in train2017/)
    vsr = tmp_path / "raw" / "vsr_random"
    coco = tmp_path / "raw" / "coco"
    write_image(coco / "train2017" / "000000000139.jpg", picture("orange", fmt="JPEG"))
    (vsr).mkdir(parents=True)
    (vsr / "train.jsonl").write_text("\n".join([
        json.dumps({"image": "000000000139.jpg", "image_link": "http://x", "caption": "The cat is left of the dog.", "label": 1, "relation": "left of"}),
        json.dumps({"image": "000000000139.jpg", "image_link": "http://x", "caption": "The dog is on the cat.", "label": 0, "relation": "on"}),
        "{not json",
    ]) + "\n")
    records, report, skipped = run(tmp_path, "vsr", vsr, "--image-root", str(coco))
    assert sorted((r["question"], r["answer"]) for r in records.values()) == [
        ("Is the following statement about the image true? The cat is left of the dog.", "yes"),
        ("Is the following statement about the image true? The dog is on the cat.", "no")]
    assert skips(skipped) == {("train.jsonl", 3, "<line>", "bad_json")}
    assert report["images_written"] == 1 and all(r["images"][0].endswith(".jpg") for r in records.values())


# ----------------------------------------------------------------------------------------------
# multiple choice


def test_multiple_choice_sources(tmp_path):
    # GeoQA+ / UniGeo in LLaVA-OneVision-Data: options lettered in the question, the letter in the reply
    geo = tmp_path / "raw" / "geoqa"
    write_parquet(geo / "train-00000-of-00001.parquet", [
        {"id": "g1", "image": cell(picture("white")), "data_source": "GeoQA+",
         "conversations": conversation("First perform reasoning, then finally select the question from the choices in the following format: Answer: xxx.\n"
                                       "Question: In the figure, what is angle ABC?\nChoices:\nA: 30°\nB: 45°\nC: 60°\nD: 90°", "The angle is half of 120°.\nAnswer: C")},
        {"id": "g2", "image": cell(picture("black")), "data_source": "GeoQA+",
         "conversations": conversation("Find x. Choices: A: 2 B: 4 C: 8", "The answer is B.")},
        {"id": "g3", "image": cell(picture("gray")), "data_source": "GeoQA+",
         "conversations": conversation("Find the length of AB.", "5")},
        {"id": "g4", "image": cell(picture("gray")), "data_source": "GeoQA+",
         "conversations": conversation("Find y.\n(A) 1\n(B) 2", "Answer: E")},
    ])
    records, _, skipped = run(tmp_path, "geoqa", geo)
    assert records["geoqa-g1"]["question"] == "Question: In the figure, what is angle ABC?"
    assert (records["geoqa-g1"]["options"], records["geoqa-g1"]["answer"]) == (["30°", "45°", "60°", "90°"], "C")
    assert (records["geoqa-g2"]["question"], records["geoqa-g2"]["options"], records["geoqa-g2"]["answer"]) == ("Find x.", ["2", "4", "8"], "B")
    assert skips(skipped) == {("train-00000-of-00001.parquet", 3, "question", "no_options"),
                              ("train-00000-of-00001.parquet", 4, "conversations", "bad_answer")}
    records, _, _ = run(tmp_path, "unigeo", geo)
    assert set(records) == {"unigeo-g1", "unigeo-g2"} and records["unigeo-g1"]["source"] == "UniGeo"

    # AI2D's release: per-image question files, a test-id list, abcLabel questions, "{}" and repeated options
    ai2d = tmp_path / "raw" / "ai2d"
    write_image(ai2d / "images" / "1.png", picture("yellow"))
    write_image(ai2d / "images" / "2.png", picture("purple"))
    (ai2d / "ai2d_test_ids.csv").write_text("2\n")
    write_json(ai2d / "questions" / "1.png.json", {"imageName": "1.png", "questions": {
        "Which stage is the egg?": {"answerTexts": ["larva", "{}", "egg", "larva", "adult"], "correctAnswer": 2, "abcLabel": False, "questionId": "1.png-0"},
        "What does label B show?": {"answerTexts": ["B", "C"], "correctAnswer": 0, "abcLabel": True, "questionId": "1.png-1"},
        "Broken?": {"answerTexts": ["x", "y"], "correctAnswer": 5, "abcLabel": False, "questionId": "1.png-2"},
    }})
    write_json(ai2d / "questions" / "2.png.json", {"imageName": "2.png", "questions": {
        "Test question?": {"answerTexts": ["a", "b"], "correctAnswer": 0, "abcLabel": False, "questionId": "2.png-0"}}})
    records, _, skipped = run(tmp_path, "ai2d", ai2d)
    assert list(records) == ["ai2d-1.png-0"]
    assert (records["ai2d-1.png-0"]["options"], records["ai2d-1.png-0"]["answer"]) == (["larva", "egg", "adult"], "B")
    assert skips(skipped) == {("questions/1.png.json", 2, "abcLabel", "needs_lettered_image"),
                              ("questions/1.png.json", 3, "correctAnswer", "bad_answer"),
                              ("questions/2.png.json", 1, "imageName", "test_split")}

    # ScienceQA (derek-thomas/ScienceQA): image questions only; answer is an index into choices
    sqa = tmp_path / "raw" / "ScienceQA" / "data"
    base = {"task": "closed choice", "grade": "grade2", "subject": "natural science", "topic": "t", "category": "c",
            "skill": "s", "lecture": "", "solution": ""}
    write_parquet(sqa / "train-00000-of-00001.parquet", [
        {**base, "image": cell(picture("cyan")), "question": "Which animal is shown?", "choices": ["cat", "dog", "fish"], "answer": 2, "hint": "Look at the fins."},
        {**base, "image": None, "question": "Which word is a noun?", "choices": ["run", "tree"], "answer": 1, "hint": ""},
        {**base, "image": cell(picture("cyan")), "question": "Pick one.", "choices": ["a", "b"], "answer": 4, "hint": ""},
    ])
    write_parquet(sqa / "test-00000-of-00001.parquet", [  # not read by default (train only)
        {**base, "image": cell(picture("red")), "question": "Test?", "choices": ["a", "b"], "answer": 0, "hint": ""}])
    records, report, skipped = run(tmp_path, "scienceqa", sqa)
    (record,) = records.values()
    assert (record["question"], record["options"], record["answer"]) == ("Context: Look at the fins.\nWhich animal is shown?", ["cat", "dog", "fish"], "C")
    assert skips(skipped) == {("train-00000-of-00001.parquet", 2, "image", "text_only"),
                              ("train-00000-of-00001.parquet", 3, "answer", "bad_answer")}
    assert report["rows"] == 3


# ----------------------------------------------------------------------------------------------
# chart / document


def test_chart_and_document_sources(tmp_path):
    chart = tmp_path / "raw" / "ChartQA" / "data"
    write_parquet(chart / "train-00000-of-00001.parquet", [
        {"image": cell(picture("red")), "query": "What is the value of bar B?", "label": ["12.50"], "human_or_machine": 0},
        {"image": cell(picture("red")), "query": "Which year is highest?", "label": ["2019"], "human_or_machine": 1},
        {"image": cell(picture("blue")), "query": "No label?", "label": [], "human_or_machine": 1},
    ])
    records, report, skipped = run(tmp_path, "chartqa", chart)
    assert [(r["question"], r["answer"]) for r in records.values()] == [("What is the value of bar B?", "12.50"), ("Which year is highest?", "2019")]
    assert list(records) == ["chartqa-train-00000-of-00001-1", "chartqa-train-00000-of-00001-2"]
    assert report["images_written"] == 1  # both questions share the chart: stored once
    assert skips(skipped) == {("train-00000-of-00001.parquet", 3, "label", "bad_answer")}

    for source, config, extra in (("docvqa", "DocVQA", {"question_types": ["form"], "docId": 3, "ucsf_document_id": "x", "ucsf_document_page_no": "1"}),
                                  ("infovqa", "InfographicVQA", {"answer_type": ["single span"], "image_url": "u", "operation/reasoning": [], "ocr": ""})):
        folder = tmp_path / "raw" / source / config
        write_parquet(folder / "train-00000-of-00001.parquet", [
            {"questionId": "7", "question": "What is the date?", "image": cell(picture("white")), "answers": ["1 May 1999", "May 1, 1999"], "data_split": "train", **extra},
            {"questionId": "8", "question": "Total?", "image": cell(picture("white")), "answers": [" 1,234 "], "data_split": "train", **extra},
            {"questionId": "9", "question": "Unanswered?", "image": cell(picture("white")), "answers": None, "data_split": "test", **extra},
        ])
        records, _, skipped = run(tmp_path, source, folder)
        assert {i: r["answer"] for i, r in records.items()} == {f"{source}-7": "1 May 1999", f"{source}-8": "1,234"}
        assert skips(skipped) == {("train-00000-of-00001.parquet", 3, "answers", "no_answer")}

    hiertt = tmp_path / "raw" / "multihiertt"
    write_parquet(hiertt / "train-00000-of-00001.parquet", [
        {"id": "h1", "image": cell(picture("white")), "conversations": conversation("What is the total revenue in 2019?", "Adding the rows gives it.\nAnswer: 1,234.5"), "data_source": "multihiertt"},
        {"id": "h2", "image": cell(picture("white")), "conversations": conversation("Explain the table.", "x" * 80), "data_source": "multihiertt"},
    ])
    records, _, skipped = run(tmp_path, "multihiertt", hiertt)
    assert {i: (r["problem_type"], r["answer"]) for i, r in records.items()} == {"multihiertt-h1": ("chart", "1,234.5")}
    assert skips(skipped) == {("train-00000-of-00001.parquet", 2, "conversations", "long_answer")}


# ----------------------------------------------------------------------------------------------
# grounding and open-ended


def test_refcocog_boxes_in_original_pixels(tmp_path):
    coco = tmp_path / "raw" / "coco"
    write_image(coco / "train2014" / "COCO_train2014_000000000009.jpg", picture("green", size=(64, 48), fmt="JPEG"))
    info = json.dumps({"width": 64, "height": 48, "file_name": "COCO_train2014_000000000009.jpg"})
    ref = tmp_path / "raw" / "refcocog" / "data"

    def row(ref_id, bbox, sentences):
        return {"ref_id": ref_id, "image_id": 9, "split": "train", "ann_id": ref_id, "category_id": 1,
                "sentences": [{"raw": s, "sent": s.lower(), "sent_id": i, "tokens": s.split()} for i, s in enumerate(sentences)],
                "raw_anns": json.dumps({"bbox": bbox, "id": ref_id}), "raw_image_info": info, "raw_sentences": "[]",
                "file_name": f"COCO_train2014_000000000009_{ref_id}.jpg", "image_path": "coco/train2014/COCO_train2014_000000000009.jpg"}

    write_parquet(ref / "train-00000-of-00001.parquet", [
        row(1, [10, 5, 20, 15], ["The man in a Red shirt.", "person on the left"]),
        row(2, [40.5, 30, 24, 18.4], ["the dog"]),  # overhangs the 64x48 image: clipped
        row(3, [0.1, 0.2, 0.3, 0.3], ["normalised box"]),
        row(4, [70, 10, 30, 10], ["outside"]),
    ])
    records, report, skipped = run(tmp_path, "refcocog", ref, "--image-root", str(coco))
    assert {i: (r["question"], r["answer"]) for i, r in records.items()} == {
        "refcocog-1-0": ("Locate the object described as: The man in a Red shirt.", [10, 5, 30, 20]),  # xywh -> xyxy
        "refcocog-1-1": ("Locate the object described as: person on the left", [10, 5, 30, 20]),
        "refcocog-2-0": ("Locate the object described as: the dog", [40.5, 30, 64, 48]),
    }
    assert skips(skipped) == {("train-00000-of-00001.parquet", 3, "bbox", "bad_box"), ("train-00000-of-00001.parquet", 4, "bbox", "bad_box")}
    assert report["images_written"] == 1
    loaded, _ = load_records(tmp_path / "data" / "refcocog.jsonl", tmp_path / "data")
    assert loaded[0].answer == (10.0, 5.0, 30.0, 20.0) and loaded[0].image_sizes() == [(48, 64)]

    # lmms-lab/RefCOCOg: the image inside the parquet, expressions in `answer`
    lmms = tmp_path / "raw" / "lmms_refcocog" / "data"
    write_parquet(lmms / "val-00000-of-00001.parquet", [
        {"question_id": "q5", "image": cell(picture("blue", size=(100, 80))), "question": "Describe the region.",
         "answer": ["a blue block"], "segmentation": [1.0, 2.0], "bbox": [5, 6, 50, 40], "iscrowd": 0, "file_name": "x.jpg"}])
    records, _, _ = run(tmp_path, "refcocog", lmms, "--files", "**/val-*.parquet", name="lmms")
    assert {i: r["answer"] for i, r in records.items()} == {"refcocog-q5-0": [5, 6, 55, 46]}


def test_allava_open_ended(tmp_path):
    allava = tmp_path / "raw" / "ALLaVA-4V"
    write_image(allava / "allava_laion" / "images" / "100.jpeg", picture("pink", fmt="JPEG"))
    write_json(allava / "allava_laion" / "ALLaVA-Caption-LAION-4V.json", [
        {"id": "allava_laion_cap_100", "image": "allava_laion/images/100.jpeg",
         "conversations": [{"from": "human", "value": "<image>\nPlease depict the image in words."},
                           {"from": "gpt", "value": " A pink square fills the frame, with nothing else in view. "}]},
        {"id": "allava_laion_cap_101", "image": "allava_laion/images/101.jpeg",
         "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Missing picture."}]},
        {"id": "allava_laion_cap_102", "image": "allava_laion/images/100.jpeg", "conversations": [{"from": "human", "value": "Only a question"}]},
    ])
    write_json(allava / "allava_laion" / "ALLaVA-Instruct-LAION-4V.json", [])  # not read by default
    records, _, skipped = run(tmp_path, "allava", allava)
    assert {i: (r["problem_type"], r["question"], r["answer"]) for i, r in records.items()} == {
        "allava-allava_laion_cap_100": ("open_ended", "Please depict the image in words.", "A pink square fills the frame, with nothing else in view.")}
    assert skips(skipped) == {("allava_laion/ALLaVA-Caption-LAION-4V.json", 2, "image", "no_image"),
                              ("allava_laion/ALLaVA-Caption-LAION-4V.json", 3, "conversations", "missing_field")}


# ----------------------------------------------------------------------------------------------
# the R1 lineage


def test_r1_lineage_records_load_directly(tmp_path):
    r1 = tmp_path / "raw" / "released"
    write_parquet(r1 / "r1v" / "train-00000-of-00001.parquet", [  # R1-V: image, problem, solution
        {"image": cell(picture("gray")), "problem": "How many cubes are there?", "solution": "<answer> 3 </answer>", "thinking": ""},
        {"image": cell(picture("gray")), "problem": "Is there a sphere?", "solution": "<answer>Yes</answer>", "thinking": ""},
    ])
    write_parquet(r1 / "easyr1" / "train-00000-of-00001.parquet", [  # EasyR1: images [image], problem, answer
        {"images": [cell(picture("olive"))], "problem": "<image>Which is larger?\nA. 3\nB. 5", "answer": "B"},
    ])
    write_image(r1 / "imgs" / "a.png", picture("navy", size=(100, 50)))
    (r1 / "vlm_r1.jsonl").write_text("\n".join(json.dumps(row) for row in [
        {"id": 1, "image": "imgs/a.png", "conversations": [{"from": "human", "value": "<image>Describe the scene."},
                                                           {"from": "gpt", "value": "<think>look</think><answer>A navy rectangle.</answer>"}]},
        {"id": 2, "image": "imgs/a.png", "problem": "Please provide the bounding box of: the left half",
         "solution": [0, 0, 50, 50], "data_source": "refcoco"},
        {"id": 3, "image": ["imgs/a.png"], "problem": "What colour?", "options": ["A. red", "B. navy"],
         "solution": "<answer>B</answer>", "problem_type": "multiple choice"},
        {"id": 4, "image": "imgs/a.png", "problem": "Box?", "solution": "<answer>{\"bbox_2d\": [10, 10, 40, 30]}</answer>", "problem_type": "grounding"},
        {"id": 5, "image": "imgs/a.png", "problem": "Odd?", "solution": "<answer>x</answer>", "problem_type": "regression"},
        {"id": 6, "image": "imgs/a.png", "problem": "Yes?", "solution": "<answer>maybe</answer>", "problem_type": "yes/no"},
    ]) + "\n")
    records, _, skipped = run(tmp_path, "r1", r1)
    got = {i: (r["problem_type"], r["answer"], r.get("options"), r["source"]) for i, r in records.items()}
    assert got["r1-1"] == ("open_ended", "A navy rectangle.", None, "R1")
    assert got["r1-2"] == ("grounding", [0, 0, 50, 50], None, "refcoco")
    assert got["r1-3"] == ("mcq", "B", ["red", "navy"], "R1")
    assert got["r1-4"] == ("grounding", [10, 10, 40, 30], None, "R1")
    r1v = {r["question"]: (r["problem_type"], r["answer"]) for r in records.values() if r["question"].startswith(("How", "Is"))}
    assert r1v == {"How many cubes are there?": ("chart", "3"), "Is there a sphere?": ("yorn", "yes")}
    (easy,) = [r for r in records.values() if r["question"] == "Which is larger?"]
    assert (easy["problem_type"], easy["options"], easy["answer"]) == ("mcq", ["3", "5"], "B")
    assert records["r1-1"]["question"] == "Describe the scene."
    assert skips(skipped) == {("vlm_r1.jsonl", 5, "problem_type", "unknown_type"), ("vlm_r1.jsonl", 6, "answer", "not_yes_no")}


# ----------------------------------------------------------------------------------------------
# images, reruns, limits, errors


def test_images_are_content_addressed_and_a_rerun_writes_nothing(tmp_path):
    chart = tmp_path / "raw" / "chart"
    red = picture("red")
    write_parquet(chart / "train-00000-of-00001.parquet", [
        {"image": cell(red), "query": "A?", "label": ["1"], "human_or_machine": 0},
        {"image": cell(b"not an image at all"), "query": "B?", "label": ["2"], "human_or_machine": 0},
        {"image": cell(picture("red", size=(1000, 4))), "query": "C?", "label": ["3"], "human_or_machine": 0},  # aspect 250 > 200
        {"image": cell(red), "query": "D?", "label": ["4"], "human_or_machine": 0},
    ])
    records, report, skipped = run(tmp_path, "chartqa", chart)
    digest = hashlib.sha256(red).hexdigest()
    assert {r["images"][0] for r in records.values()} == {f"images/{digest[:2]}/{digest}.png"}
    assert [(s["row"], s["kind"]) for s in skipped] == [(2, "bad_image"), (3, "bad_image")]
    assert "aspect ratio" in skipped[1]["reason"]
    files = sorted(p for p in (tmp_path / "data" / "images").rglob("*") if p.is_file())
    assert [p.name for p in files] == [f"{digest}.png"] and files[0].read_bytes() == red  # nothing kept of bad images
    before = (tmp_path / "data" / "chartqa.jsonl").read_bytes()
    _, again, _ = run(tmp_path, "chartqa", chart)
    assert again["images_written"] == 0 and (tmp_path / "data" / "chartqa.jsonl").read_bytes() == before
    assert conv.finished(tmp_path / "data" / "chartqa.jsonl", again["settings"])

    records, report, _ = run(tmp_path, "chartqa", chart, "--limit", "1", name="one")
    assert len(records) == 1 and report["rows"] == 1 and report["settings"]["limit"] == 1


def test_bad_command_lines_name_the_problem(tmp_path):
    chart = tmp_path / "raw" / "chart"
    write_parquet(chart / "train-00000-of-00001.parquet", [{"image": cell(picture("red")), "query": "A?", "label": ["1"]}])
    out = tmp_path / "data" / "c.jsonl"
    with pytest.raises(InputError, match="--images .* must lie inside"):
        conv.convert("chartqa", chart, out, tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match=r"no file matches \*\*/test-\*\.parquet"):
        conv.convert("chartqa", chart, out, tmp_path / "data" / "images", files=["**/test-*.parquet"])
    with pytest.raises(SystemExit):
        conv.main(["--source", "nosuch", "--in", str(chart), "--out", str(out), "--images", str(tmp_path / "data")])


# ----------------------------------------------------------------------------------------------
# the rules as pure functions


def test_answer_rules():
    assert [conv.yes_no(v) for v in (True, 0, 1, "Yes", " no. ", "TRUE", "false")] == ["yes", "no", "yes", "yes", "no", "yes", "no"]
    for bad in ("1", "maybe", 2, None):
        with pytest.raises(conv.Skip):
            conv.yes_no(bad)
    opts = ["red", "Blue", "green"]
    assert [conv.letter_for(v, opts) for v in (0, 2, "B", "(C)", "B.", "1", " blue ")] == ["A", "C", "B", "C", "B", "B", "B"]
    for bad in (3, "D", "b", "purple", True):
        with pytest.raises(conv.Skip):
            conv.letter_for(bad, opts)
    assert conv.answer_text(12) == "12" and conv.answer_text(0.1) == "0.1" and conv.answer_text(" 12.50 ") == "12.50"
    assert [conv.short_answer(t) for t in ("<think>x</think><answer> 7 </answer>", "so.\nThe answer is C.", "Answer: 1,234.5", "Yes", "A red cube.")] == \
        ["7", "C.", "1,234.5", "Yes", "A red cube."]
    assert conv.split_options("Q?\nOptions:\n(A) x\n(B) y\nAnswer with the option's letter.") == ("Q?", ["x", "y"])
    assert conv.strip_option_label("(B) navy") == "navy" and conv.strip_option_label("B.5 cm") == "B.5 cm"
    assert conv.xywh_to_xyxy([1, 2, 3, 4]) == [1, 2, 4, 6]
    assert conv.check_box([0, 0, 10.004, 5], 10, 5) == [0, 0, 10, 5]
    assert conv.parse_box("[1, 2, 3, 4]") == [1, 2, 3, 4] and conv.parse_box('[{"bbox_2d": [1, 2, 3, 4], "label": "x"}]') == [1, 2, 3, 4]
    assert conv.parse_box("a cat") is None
