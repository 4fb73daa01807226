"""Prediction files: hostile lines are one-line errors, lines end at newlines only, torn lines."""

from __future__ import annotations

import json

import pytest

from nuwa_export.errors import NuwaError
from nuwa_export.eval import records


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[" * 200_000 + "]" * 200_000 + "\n", r"p.jsonl line 1 is not valid JSON \(nested too deeply\)"),
        ('{"index": 0, "answer": "x", "ms": ' + "1" * 5000 + "}\n", r"p.jsonl line 1 is not valid JSON \(a number with too many digits"),
        ('{"index": 0, "answer": "x"}\n{"index": 1, "answer": "y"\n', r"p.jsonl line 2 is not valid JSON"),
    ],
)
def test_hostile_lines_are_one_line_errors(tmp_path, text, match):
    f = tmp_path / "p.jsonl"
    f.write_text(text)
    with pytest.raises(NuwaError, match=match) as e:
        records.read_predictions(f, 10)
    assert "\n" not in str(e.value)


def test_answers_with_line_separators_survive_a_round_trip(tmp_path):
    """Answers are written unescaped (ensure_ascii=False): U+2028, U+0085 and \\r stay inside a line."""
    f = tmp_path / "p.jsonl"
    answers = ["a\u2028b", "c\x85d\x1ce", "f\rg", "lone \udc80 surrogate"]
    with records.Appender(f) as out:
        for i, a in enumerate(answers):
            out.write({"index": i, "answer": a})
    assert f.read_bytes().count(b"\n") == 4
    got = records.read_predictions(f, 10)
    assert [got[i]["answer"] for i in range(4)] == answers


def test_a_torn_line_is_skipped_on_reading_and_cut_before_appending(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"index": 0, "answer": "x"}\n{"index": 1, "answ')
    before = f.read_bytes()
    assert list(records.read_predictions(f, 10, repair=True)) == [0]
    assert f.read_bytes() == before  # reading never changes the file
    with pytest.raises(NuwaError, match="line 2 is not valid JSON"):
        records.read_predictions(f, 10)
    with records.Appender(f) as out:
        out.write({"index": 1, "answer": "y"})
    assert [json.loads(ln)["index"] for ln in f.read_text().splitlines()] == [0, 1]
    f.write_text('{"index": 5, "ans')  # a torn only line
    records.Appender(f).close()
    assert f.read_bytes() == b""


def test_unreadable_predictions(tmp_path):
    with pytest.raises(NuwaError, match="predictions file not found"):
        records.read_predictions(tmp_path, 10)
    with pytest.raises(NuwaError, match=r"cannot read .*nnnn.jsonl \(File name too long\)"):
        records.read_predictions(tmp_path / ("n" * 300 + ".jsonl"), 10)
