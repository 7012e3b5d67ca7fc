"""The one JSON Lines reader (rewarddance.manifest) and the readers built on it: line numbers as in the file,
bad lines named by file and line, raised or skipped and reported in file order."""

from __future__ import annotations

import json

import pytest

from rewarddance.manifest import ManifestError, read_jsonl


def _write(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_read_jsonl_numbers_lines_as_the_file_does(tmp_path):
    f = _write(tmp_path / "m.jsonl", ['{"a": 1}', "", "   ", '{"a": 2}'])
    assert list(read_jsonl(f)) == [(1, {"a": 1}), (4, {"a": 2})]


@pytest.mark.parametrize(
    "line, problem", [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object, got list")]
)
def test_read_jsonl_names_file_and_line_of_a_bad_line(tmp_path, line, problem):
    f = _write(tmp_path / "m.jsonl", ['{"a": 1}', "", line])
    with pytest.raises(ManifestError, match=rf"m\.jsonl:3: {problem}"):
        list(read_jsonl(f))

    class Mine(ValueError):
        pass

    with pytest.raises(Mine, match=r"m\.jsonl:3:"):  # a caller's own exception class
        list(read_jsonl(f, error=Mine))


def test_read_jsonl_skips_and_reports_bad_lines_in_file_order(tmp_path):
    f = _write(tmp_path / "m.jsonl", ['{"a": 1}', "oops", '"text"', '{"a": 2}', "{"])
    bad: list[dict] = []
    seen = []
    for line_no, row in read_jsonl(f, skip_bad=True, bad=bad):
        seen.append((line_no, row["a"], [b["line"] for b in bad]))  # the bad lines before this row are reported
    assert seen == [(1, 1, []), (4, 2, [2, 3])]
    assert [b["line"] for b in bad] == [2, 3, 5]
    assert all(b["error"].startswith(f"{f}:{b['line']}: ") for b in bad)


def test_pretrain_folder_names_the_line_of_a_bad_record_after_a_blank_line(tmp_path):
    from PIL import Image

    from rewarddance.training.refl import read_pretrain_folder

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    _write(tmp_path / "manifest.jsonl", [json.dumps({"image": "a.png", "prompt": "p"}), "", json.dumps({"image": "b"})])
    with pytest.raises(ValueError, match=r"manifest\.jsonl:3: needs 'image' and 'prompt'"):
        read_pretrain_folder(tmp_path)


def test_reference_manifest_errors_name_file_and_line(tmp_path):
    from rewarddance.reference_sets import load_references

    good = json.dumps({"prompt": "p", "images": ["images/0.png"]})
    _write(tmp_path / "manifest.jsonl", [good, '{"prompt": "q", "ima'])  # a torn last line
    with pytest.raises(ManifestError, match=r"manifest\.jsonl:2: not valid JSON"):
        load_references(tmp_path)
    _write(tmp_path / "manifest.jsonl", [good, json.dumps({"images": []})])
    with pytest.raises(ManifestError, match=r"manifest\.jsonl:2: missing field\(s\) prompt"):
        load_references(tmp_path)
    _write(tmp_path / "manifest.jsonl", [good])
    assert load_references(tmp_path) == {"p": [tmp_path / "images/0.png"]}


def test_refl_prompt_file_errors_name_file_and_line(tmp_path):
    from rewarddance.training.refl import read_prompts

    f = _write(tmp_path / "prompts.jsonl", [json.dumps({"prompt": "a red circle"}), "", '{"prompt": "a bl'])
    with pytest.raises(ManifestError, match=r"prompts\.jsonl:3: not valid JSON"):
        read_prompts(f)
    _write(f, [json.dumps({"prompt": "a red circle"}), json.dumps({"text": "a blue square"})])
    with pytest.raises(ManifestError, match=r"prompts\.jsonl:2: needs a 'prompt' string"):
        read_prompts(f)
    _write(f, [json.dumps({"prompt": "a red circle"}), "", json.dumps({"prompt": "a blue square", "seed": 3})])
    assert read_prompts(f) == ["a red circle", "a blue square"]
