"""Toy benchmark files: a few questions per benchmark, in each benchmark's real parquet schema.

    python experiments/toy_benchmarks.py DIR     # writes DIR/MathVista/..., DIR/MMBench/..., ...

`write_benchmarks(root)` lays out the Hugging Face column names and arrow types that eval.py's
loaders read (images as `{"bytes", "path"}` structs holding PNGs, MMMU's `options` as a string,
MathVista's nullable `choices` / `unit` / `precision`, MMBench's circular rotations at index + 1e6,
AI2D's index answers): three questions per Table 1 benchmark (MMBench: two with a rotation), two per
optional benchmark (MathVerse, MMMU-Pro, MM-IQ, M3CoT). `eval.py --limit N` takes fewer.

Moved here from `tests/test_eval_e2e.py` (the same code, unchanged) so that the CPU rehearsal of the
experiments (`experiments/rehearsal.py`) and tests can share it; the questions are placeholders and
the scores a model gets on them mean nothing.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(color: str, size=(40, 30)) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": f"{color}.png"}


def write(path: Path, columns: dict, types: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([(name, types[name]) for name in columns])
    pq.write_table(pa.table(columns, schema=schema), path)


def write_benchmarks(root: Path) -> Path:
    """Three questions per benchmark (MMBench: two with a rotation), in the files' real layout."""
    s, i64, f64, strings = pa.string(), pa.int64(), pa.float64(), pa.list_(pa.string())
    write(
        root / "MathVista/data/testmini-00000-of-00001-abc.parquet",
        {
            "pid": ["1", "2", "3"],
            "question": ["What fraction is blue?", "How many cubes?", "What is the length?"],
            "image": ["images/1.jpg", "images/2.jpg", "images/3.jpg"],
            "decoded_image": [png("blue"), png("red"), png("green")],
            "choices": [["3/11", "8/11", "6/11", "3/5"], None, None],
            "unit": [None, None, "cm"],
            "precision": [None, None, 1.0],
            "answer": ["8/11", "4", "3.5"],
            "question_type": ["multi_choice", "free_form", "free_form"],
            "answer_type": ["text", "integer", "float"],
            "query": ["q1", "q2", "q3"],
        },
        {"pid": s, "question": s, "image": s, "decoded_image": IMAGE, "choices": strings, "unit": s,
         "precision": f64, "answer": s, "question_type": s, "answer_type": s, "query": s},
    )
    for split in ("test", "testmini"):
        write(
            root / f"MathVision/data/{split}-00000-of-00001.parquet",
            {
                "id": ["1", "2", "3"],
                "question": ["Which shape?", "How many?", "Angle?"],
                "options": [["A", "B", "C", "D", "E"], [], []],
                "image": ["images/1.jpg"] * 3,
                "decoded_image": [png("red"), png("blue"), png("white")],
                "answer": ["C", "7", "30"],
                "solution": [None, None, None],
                "level": [2, 3, 1],
                "subject": ["logic", "counting", "metric geometry - angle"],
            },
            {"id": s, "question": s, "options": strings, "image": s, "decoded_image": IMAGE, "answer": s,
             "solution": s, "level": i64, "subject": s},
        )
    write(
        root / "MMBench/en/dev-00000-of-00001.parquet",
        {
            "index": [0, 1, 2, 1000000, 1000001],
            "question": ["What color?", "Which animal?", "Which season?", "What color?", "Which animal?"],
            "hint": ["nan", "Look closely.", None, "nan", "Look closely."],
            "A": ["red", "cat", "summer", "blue", "dog"],
            "B": ["blue", "dog", "winter", "red", "cat"],
            "C": ["green", None, "nan", "green", None],
            "D": [None, None, "nan", None, None],
            "answer": ["A", "B", "A", "B", "A"],
            "category": ["color", "animal", "season", "color", "animal"],
            "image": [png("red"), png("gray"), png("yellow"), png("red"), png("gray")],
            "source": ["x"] * 5,
            "L2-category": ["perception"] * 5,
            "comment": [None] * 5,
            "split": ["dev"] * 5,
        },
        {"index": i64, "question": s, "hint": s, "A": s, "B": s, "C": s, "D": s, "answer": s, "category": s,
         "image": IMAGE, "source": s, "L2-category": s, "comment": s, "split": s},
    )
    mmmu = {
        "id": ["validation_Art_1", "validation_Math_2", "validation_Physics_3"],
        "question": ["<image 1> Which painting style?", "Compute the area of <image 1>.", "Compare <image 1> and <image 2>."],
        "options": ["['Baroque', 'Cubism', 'Impressionism']", "[]", "['first', 'second']"],
        "explanation": ["", "", ""],
        "image_1": [png("orange"), png("purple"), png("black")],
        "image_2": [None, None, png("white")],
    }
    types = {"id": s, "question": s, "options": s, "explanation": s, "image_1": IMAGE, "image_2": IMAGE}
    for k in range(3, 8):
        mmmu[f"image_{k}"] = [None, None, None]
        types[f"image_{k}"] = IMAGE
    mmmu.update(
        img_type=["['Paintings']"] * 3, answer=["B", "12", "A"], topic_difficulty=["Easy"] * 3,
        question_type=["multiple-choice", "open", "multiple-choice"], subfield=["Art", "Math", "Physics"],
    )
    types.update(img_type=s, answer=s, topic_difficulty=s, question_type=s, subfield=s)
    write(root / "MMMU/data/validation-00000-of-00001.parquet", mmmu, types)
    write(
        root / "MMStar/mmstar.parquet",
        {
            "index": [0, 1, 2],
            "question": [f"Which option?\nOptions: A: {a}, B: {b}, C: c, D: d" for a, b in (("x", "y"), ("p", "q"), ("m", "n"))],
            "image": [png("red"), png("blue"), png("green")],
            "answer": ["A", "B", "C"],
            "category": ["coarse perception", "math", "math"],
            "l2_category": ["image style & quality", "geometry", "statistical reasoning"],
            "meta_info": [{"source": "x", "split": "val", "image_path": "0.jpg"}] * 3,
        },
        {"index": i64, "question": s, "image": IMAGE, "answer": s, "category": s, "l2_category": s,
         "meta_info": pa.struct([("source", s), ("split", s), ("image_path", s)])},
    )
    write(
        root / "ai2d/data/test-00000-of-00001.parquet",
        {
            "question": ["Which stage comes first?", "What eats grass?", "Which is a producer?"],
            "options": [["egg", "larva", "pupa", "adult"], ["cow", "lion", "hawk", "snake"], ["sun", "grass", "fox", "owl"]],
            "answer": ["0", "0", "1"],
            "image": [png("white"), png("green"), png("yellow")],
        },
        {"question": s, "options": strings, "answer": s, "image": IMAGE},
    )
    write_optional_benchmarks(root)
    return root


def write_optional_benchmarks(root: Path) -> None:
    """MathVerse, MMMU-Pro (standard + vision), MM-IQ, M3CoT, MM-Math: two questions each."""
    s, i64, strings = pa.string(), pa.int64(), pa.list_(pa.string())
    write(
        root / "MathVerse/testmini.parquet",
        {
            "sample_index": ["1", "2"],
            "problem_index": ["1", "1"],
            "problem_version": ["Text Dominant", "Vision Only"],
            "question": ["Find x.\nChoices:\nA:5\nB:6\nC:7\nD:8", "Find the area."],
            "image": [png("white"), png("black")],
            "answer": ["B", "12.5"],
            "question_type": ["multi-choice", "free-form"],
            "metadata": [{"split": "testmini", "source": "GeoQA"}] * 2,
            "query_wo": ["Please directly answer the question and provide the correct option letter.\nQuestion: Find x.", "Please directly answer the question.\nQuestion: Find the area."],
            "query_cot": ["cot1", "cot2"],
            "question_for_eval": ["Find x.", "Find the area."],
        },
        {"sample_index": s, "problem_index": s, "problem_version": s, "question": s, "image": IMAGE, "answer": s,
         "question_type": s, "metadata": pa.struct([("split", s), ("source", s)]), "query_wo": s, "query_cot": s,
         "question_for_eval": s},
    )
    standard = {
        "id": ["test_Art_1", "test_Math_2"],
        "question": ["<image 1> Which style?", "What is 2+2? <image 1>"],
        "options": [str([f"style {k}" for k in range(10)]), "['1', '2', '3', '4', '5', '6', '7', '8', '9', '10']"],
        "explanation": ["", ""],
        "image_1": [png("orange"), png("blue")],
    }
    types = {"id": s, "question": s, "options": s, "explanation": s, "image_1": IMAGE}
    for k in range(2, 8):
        standard[f"image_{k}"] = [None, None]
        types[f"image_{k}"] = IMAGE
    standard.update(img_type=["['Paintings']"] * 2, answer=["C", "D"], topic_difficulty=["Easy"] * 2, subject=["Art", "Math"])
    types.update(img_type=s, answer=s, topic_difficulty=s, subject=s)
    write(root / "MMMU_Pro/standard (10 options)/test-00000-of-00001.parquet", standard, types)
    write(
        root / "MMMU_Pro/vision/test-00000-of-00001.parquet",
        {"id": ["test_Art_1", "test_Math_2"], "image": [png("orange"), png("blue")],
         "options": ["['a', 'b', 'c']", "['1', '2', '3', '4']"], "answer": ["A", "D"], "subject": ["Art", "Math"]},
        {"id": s, "image": IMAGE, "options": s, "answer": s, "subject": s},
    )
    write(
        root / "MM-IQ/test-00000-of-00001.parquet",
        {"category": ["Logical Operation", "Spatial Relationship"],
         "question": ["Choose the most appropriate option from the given four choices to fill in the question mark."] * 2,
         "question_en": ["q"] * 2, "question_zh": ["问"] * 2, "image": [png("gray"), png("red")], "MD5": ["x", "y"],
         "data_id": [7, 8], "answer": ["A", "D"], "split": ["test"] * 2},
        {"category": s, "question": s, "question_en": s, "question_zh": s, "image": IMAGE, "MD5": s, "data_id": i64,
         "answer": s, "split": s},
    )
    write(
        root / "M3CoT/data/test-00000-of-00001.parquet",
        {"id": ["physics-1", "math-2"], "category": ["physics", "algebra"], "image_id": ["1", "2"],
         "question": ["Which force?", "Which number?"], "choices": [["push", "pull"], ["1", "2", "3"]],
         "context": ["", "A number line."], "answer": ["B", "C"], "rationale": ["", ""], "split": ["test"] * 2,
         "image": [png("white"), png("green")], "domain": ["science", "mathematics"], "topic": ["x", "y"]},
        {"id": s, "category": s, "image_id": s, "question": s, "choices": strings, "context": s, "answer": s,
         "rationale": s, "split": s, "image": IMAGE, "domain": s, "topic": s},
    )

    # MM-Math ships JSON lines and its images (THU-KEG/MM_Math), not parquet.
    (root / "MM_Math").mkdir(parents=True, exist_ok=True)
    rows = [
        {"question": "Find AB.", "file_name": "a.png", "solution": r"\boxed{3}", "year": "七年级上学期", "difficult": "容易", "knowledge": []},
        {"question": "Find x.", "file_name": "b.png", "solution": r"\boxed{\frac{1}{2}}", "year": "八年级下学期", "difficult": "困难", "knowledge": []},
    ]
    for name, color in (("a.png", "white"), ("b.png", "black")):
        (root / "MM_Math" / name).write_bytes(png(color)["bytes"])
    (root / "MM_Math" / "MM_Math.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python experiments/toy_benchmarks.py OUT_DIR")
    print(write_benchmarks(Path(sys.argv[1])))
