"""DatasetTask: problems from anything ``datasets.load_dataset`` reads, here local JSON and CSV files (the same
call reads a hub dataset, which the tests cannot reach)."""

import json
import re

import pytest

from lit_reason.tasks import DatasetTask, RecordFields

pytest.importorskip("datasets", reason='DatasetTask needs datasets: pip install -e ".[test]"')


def test_local_files_by_split_through_load_dataset(tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.csv"
    train.write_text("".join(json.dumps({"q": f"What is {i} + 1?", "a": i + 1}) + "\n" for i in range(12)))
    test.write_text('q,a\n"Capital of France?",Paris\n"Largest planet?",Jupiter\n')
    numeric = DatasetTask("json", data_files={"train": str(train)}, test_split=None, fields=RecordFields("q", "a"),
                          validation_size=2)  # fmt: skip
    assert len(numeric.problems("train")) == 10 and len(numeric.problems("validation")) == 2
    assert numeric.problems("test") == [] and numeric.problems("train")[0].is_correct("#### 1")
    text_train = tmp_path / "train.csv"
    text_train.write_text('q,a\n"Capital of Italy?",Rome\n"Smallest planet?",Mercury\n')
    text = DatasetTask(
        "csv", data_files={"train": str(text_train), "test": str(test)}, validation_split="test", test_split=None,
        fields=RecordFields("q", "a", answer_type="text"),
    )  # fmt: skip
    assert [p.answer for p in text.problems("validation")] == ["Paris", "Jupiter"]
    assert text.problems("validation")[0].is_correct("#### paris")
    ids = [p.id for split in ("train", "validation", "test") for p in text.problems(split)]
    assert len(set(ids)) == len(ids) == 4


def test_errors_name_the_file_row_and_split(tmp_path):
    train = tmp_path / "train.jsonl"
    rows = [{"question": "fine?", "answer": "1"}, {"question": "q?", "answer": "x"}]
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = DatasetTask("json", data_files={"train": str(train)}, test_split=None, validation_size=0)
    # Rows count from 1, as a person finds them: the JSONL file's second line, the CSV file's second row.
    row_two = f"{train} row 2 (1-based; in JSONL, blank lines not counted): field 'answer' holds no number"
    with pytest.raises(ValueError, match=re.escape(row_two)):
        task.problems("train")
    table = tmp_path / "train.csv"
    table.write_text("question,answer\nfine?,1\nq?,x\n")
    with pytest.raises(ValueError, match=re.escape(f"{table} row 2 (1-based, after the header): field 'answer'")):
        DatasetTask("csv", data_files={"train": str(table)}, test_split=None, validation_size=0).problems("train")
    train.write_text(json.dumps(rows[0]) + "\n")
    missing = DatasetTask("json", data_files={"train": str(train)}, test_split="test", validation_size=0)
    with pytest.raises(ValueError, match=r"DatasetTask json, test_split 'test' \(json\[test\]\): .*split"):
        missing.problems("train")


def test_unreadable_lines_of_a_local_jsonl_file_are_named(tmp_path):
    # datasets said "An error occurred while generating the dataset", or raised a bare UnicodeDecodeError.
    train = tmp_path / "train.jsonl"
    task = DatasetTask("json", data_files={"train": str(train)}, test_split=None, validation_size=0)
    train.write_text('{"question": "a?", "answer": 1}\n{"question": "b?" "answer": 2}\n')
    with pytest.raises(ValueError, match=re.escape(f"{train}:2: not valid JSON")):
        task.problems("train")
    train.write_bytes(b'{"question": "a?", "answer": 1}\n{"question": "caf\xe9?", "answer": 2}\n')
    with pytest.raises(ValueError, match=re.escape(f"{train}:2: not UTF-8 text (byte 0xe9 at column 18)")):
        task.problems("train")


def test_csv_text_answers_are_read_as_written(tmp_path):
    # pandas read "007" as 7, "1e-7" as 1e-07 (then "0"), "True" as a boolean and "NA" as nothing.
    table = tmp_path / "train.csv"
    table.write_text("question,answer\nCode?,007\nTiny?,1e-7\nTrue?,True\nSymbol of sodium?,NA\n")
    task = DatasetTask("csv", data_files={"train": str(table)}, test_split=None, validation_size=0,
                       fields=RecordFields(answer_type="text", normalization="exact"))  # fmt: skip
    assert [p.answer for p in task.problems("train")] == ["007", "1e-7", "True", "NA"]
    # An empty cell is still nothing: a training row without its solution is refused, not trained on as "".
    table.write_text("question,answer,solution\nSum?,2,\n")
    with pytest.raises(ValueError, match=r"row 1 \(1-based, after the header\): field 'solution'"):
        DatasetTask("csv", data_files={"train": str(table)}, test_split=None, validation_size=0,
                    fields=RecordFields(solution="solution")).problems("train")  # fmt: skip
