"""Dataset loaders: each benchmark's local format and prompt format; chat-template choices."""

import json

import pytest

from specforge_dpace.bench.datasets import (
    ID_FIELDS,
    MATH_SUFFIX,
    TemplateChoice,
    load_dataset,
    make_renderer,
    parse_dataset_arg,
)

RECORDS = {
    "gsm8k": ({"question": "What is 2+3?", "answer": "5"}, ["What is 2+3?", MATH_SUFFIX]),
    "math500": ({"problem": "Solve x^2=4.", "unique_id": "m/1"}, ["Solve x^2=4.", "\\boxed{}"]),
    "humaneval": (
        {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n"},
        ["```python\ndef add(a, b):", "passes the tests"],
    ),
    "mbpp": (
        {"task_id": 11, "text": "Remove a char.", "test_list": ["assert f('a')==''"]},
        ["Remove a char.", "Your code should pass these tests:\nassert f('a')==''"],
    ),
    "mt-bench": (
        {"question_id": 81, "category": "writing", "turns": ["Write a blog post.", "Rewrite it."]},
        ["Write a blog post."],
    ),
    "alpaca": (
        {"instruction": "Summarize.", "input": "Long text here.", "output": "x"},
        ["Summarize.\n\nLong text here."],
    ),
    "prompts": ({"id": "p", "prompt": "Hello there"}, ["Hello there"]),
}


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("kind", sorted(RECORDS))
def test_each_benchmark_format_from_jsonl(tmp_path, kind):
    record, needles = RECORDS[kind]
    second = {k: (f"{v}-2" if k in ID_FIELDS else v) for k, v in record.items()}  # ids must be unique
    prompts = load_dataset(kind, _write_jsonl(tmp_path / "d.jsonl", [record, second]))
    assert len(prompts) == 2 and prompts[0].dataset == kind
    for needle in needles:
        assert needle in prompts[0].message
    if kind == "mt-bench":
        assert "Rewrite it." not in prompts[0].message and prompts[0].prompt_id == "81"


def test_json_list_limit_and_ids(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"question": f"q{i}"} for i in range(5)]))
    prompts = load_dataset("gsm8k", path, limit=3)
    assert [p.prompt_id for p in prompts] == ["0", "1", "2"]


def test_parquet(tmp_path):
    pa = pytest.importorskip(
        "pyarrow", reason="pyarrow not installed here: parquet loading is untested on this machine"
    )
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"question": "q1"}, {"question": "q2"}]), tmp_path / "d.parquet")
    assert [p.message.split("\n")[0] for p in load_dataset("gsm8k", tmp_path / "d.parquet")] == ["q1", "q2"]


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path):
    try:
        import pyarrow  # noqa: F401

        pytest.skip("pyarrow is installed; the missing-dependency message cannot be shown")
    except ImportError:
        pass
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="pyarrow"):
        load_dataset("gsm8k", tmp_path / "d.parquet")


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="none of the fields \\('question',\\)"):
        load_dataset("gsm8k", _write_jsonl(tmp_path / "a.jsonl", [{"problem": "x"}]))
    with pytest.raises(ValueError, match="unknown dataset kind 'gsm9k'"):
        load_dataset("gsm9k", tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match="needs a local file"):
        load_dataset("gsm8k")
    with pytest.raises(ValueError, match="unsupported dataset format '.txt'"):
        (tmp_path / "a.txt").write_text("x")
        load_dataset("gsm8k", tmp_path / "a.txt")
    (tmp_path / "b.jsonl").write_text('{"question": "ok"}\n{broken\n')
    with pytest.raises(ValueError, match="b.jsonl:2"):
        load_dataset("gsm8k", tmp_path / "b.jsonl")


def test_bundled_smoke_set():
    prompts = load_dataset("smoke")
    assert len(prompts) >= 8 and prompts[0].dataset == "smoke" and all(p.message for p in prompts)
    assert parse_dataset_arg("smoke") == ("smoke", None)
    assert parse_dataset_arg("gsm8k=/a/b.jsonl") == ("gsm8k", "/a/b.jsonl")


def _tokenizer_dir(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% if not enable_thinking %}<think></think>{% endif %}{% endif %}"
    )
    fast.save_pretrained(path)
    return path


def test_chat_template_with_thinking_on_and_off(tmp_path):
    tok = str(_tokenizer_dir(tmp_path / "tok"))
    off = make_renderer(TemplateChoice("tokenizer", False), tok)("hi")
    on = make_renderer(TemplateChoice("tokenizer", True), tok)("hi")
    assert off == "<|user|>hi\n<|assistant|><think></think>" and on == "<|user|>hi\n<|assistant|>"
    assert make_renderer(TemplateChoice("raw", None), None)("hi") == "hi"
    assert TemplateChoice("tokenizer", True).describe() == "tokenizer chat template, thinking on"


def test_chat_template_without_a_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--chat-template raw"):
        make_renderer(TemplateChoice("tokenizer", False), str(tmp_path))
