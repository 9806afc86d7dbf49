"""ONNX Runtime as TRAIL's default LM path, on the tiny random Llama: the export cache made on
first use, batched prompt ids, the scorer's cached template opening, greedy decoding that
drops finished rows, the int8 graphs and their validation, and the runtime choice."""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from export.cache import ExportUnavailable, ensure_export, export_key
from export.manifest import (
    INT8_GENERATOR_FILE,
    INT8_SCORER_FILE,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    PROMPT_FILE,
    ModelLoadError,
)
from export.runtime import OrtTrailModel, OrtTrailScorer, choose_precision
from export.sessions import CPU, CUDA
from export.tokenizer import ExportTokenizer
from model.explain import forecast_sentence
from model.prompts import PromptEncoder, build_prompt, chat_pieces, chat_prompt
from model.scorer import TrailScorer
from model.tiny import SHAPES, synthetic_features, validation_features
from model.trail import TrailModel
from streams.cli import main as trail
from streams.registry import cached_trail_scorer, language_model_scorer_factory
from streams.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def first_use(adapter: Path, cache: Path) -> tuple[Path, list[str]]:
    """The first use of the adapter: exported into the cache (fp32), with progress."""
    messages: list[str] = []
    folder = ensure_export(adapter, cache_dir=cache, log=messages.append)
    return folder, messages


@pytest.fixture(scope="module")
def int8_added(first_use: tuple[Path, list[str]], adapter: Path, cache: Path) -> list[str]:
    """The first use that wants int8: its graphs added to the cached fp32 export."""
    messages: list[str] = []
    assert ensure_export(adapter, cache_dir=cache, int8=True, log=messages.append) == first_use[0]
    return messages


@pytest.fixture(scope="module")
def exported(first_use: tuple[Path, list[str]], int8_added: list[str]) -> Path:
    return first_use[0]


@pytest.fixture(scope="module")
def torch_model(adapter: Path) -> TrailModel:
    return TrailModel.load(adapter)


def _features(count: int, seed: int) -> list:
    rng = random.Random(seed)
    return [synthetic_features(rng, shape=SHAPES[i % len(SHAPES)]) for i in range(count)]


# ---------------------------------------------------------------------------- prompt ids
def test_batched_prompt_ids_are_the_chat_templates(torch_model: TrailModel) -> None:
    """Joining the template's pieces, tokenized once, to each tokenized prompt body gives the
    ids of tokenizing the rendered chat template, with and without the forced forecast.

    Catches: pieces cut at the wrong place, a missing piece, continuation ids appended to the
    wrong prompt, or any id that differs from what the adapter was trained on."""
    tokenizer = torch_model.tokenizer
    encoder = torch_model.prompt_encoder
    assert encoder is not None and encoder.joined
    features = _features(40, seed=3)
    openings = [forecast_sentence(f, math.log1p(f.count * 1.5)) for f in features]
    texts = [chat_prompt(tokenizer, f) for f in features]
    assert encoder.texts(features) == texts
    assert torch_model.prompt_ids(features) == [
        tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts
    ]
    assert torch_model.prompt_ids(features, openings) == [
        tokenizer(t + o, add_special_tokens=False)["input_ids"]
        for t, o in zip(texts, openings, strict=True)
    ]


def _pairs(texts: Sequence[str]) -> list[list[int]]:
    """A 'tokenizer' of character pairs: joining separately tokenized texts is not exact."""
    return [[hash(t[i : i + 2]) % 1000 for i in range(0, len(t), 2)] for t in texts]


def test_encoder_falls_back_to_whole_texts_when_joining_is_not_exact() -> None:
    """A tokenizer whose tokens can span the pieces' boundaries (here: character pairs) is
    detected at construction, and whole texts are tokenized instead: the ids stay exact.

    Catches: an encoder that always joins (its ids would differ from the template's)."""
    from model.prompts import ChatPieces

    pieces = ChatPieces(prefix="<s>system\nx<e>\n<s>user\n", suffix="<e>\n<s>assistant\n")
    encoder = PromptEncoder(pieces, _pairs)
    assert not encoder.joined
    features = _features(6, seed=4)
    openings = ["Forecast: about 3 events next week. "] * 6
    assert encoder.encode(features) == _pairs([pieces.wrap(build_prompt(f)) for f in features])
    assert encoder.encode_with(features, openings) == _pairs(
        [pieces.wrap(build_prompt(f)) + o for f, o in zip(features, openings, strict=True)]
    )


def test_templates_that_change_the_content_have_no_pieces() -> None:
    """Only a template that pastes the user's text unchanged can be rendered once."""

    def render(upper: bool) -> SimpleNamespace:
        def apply(messages: list, tokenize: bool, add_generation_prompt: bool) -> str:
            body = messages[1]["content"]
            return f"<s>{messages[0]['content']}|{body.upper() if upper else body}|<a>"

        return SimpleNamespace(apply_chat_template=apply)

    pieces = chat_pieces(render(upper=False))
    assert pieces is not None and pieces.suffix == "|<a>"
    assert chat_pieces(render(upper=True)) is None


def test_export_tokenizer_matches_transformers(exported: Path, torch_model: TrailModel) -> None:
    """The runtime's tokenizer (``tokenizers`` on tokenizer.json, no transformers) encodes and
    decodes exactly as the transformers tokenizer: ids, skipped special tokens, cleaned-up
    spaces, and no padding left over from the export's batched generate."""
    tokenizer = torch_model.tokenizer
    ours = ExportTokenizer(exported / "tokenizer")
    texts = [chat_prompt(tokenizer, f) for f in _features(8, seed=5)] + ["It 's up , a lot ."]
    expected = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert ours.encode_batch(texts) == expected
    assert len({len(ids) for ids in expected}) > 1  # different lengths: padding would show
    rows = [ids[-12:] + [ours.end_id] for ids in expected]
    assert ours.decode_batch(rows) == [tokenizer.decode(r, skip_special_tokens=True) for r in rows]
    assert (ours.end_id, ours.pad_id) == (
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.pad_token_id,
    )


# ---------------------------------------------------------------------------- the export
def test_first_use_exports_once_into_the_cache_with_progress(
    first_use: tuple[Path, list[str]], int8_added: list[str], adapter: Path, cache: Path
) -> None:
    """The first use exports with a line per step; int8 is added to that export when wanted
    (not exported again); later uses export nothing.

    Catches: a cache that exports on every run, or whose key ignores the adapter."""
    folder, messages = first_use
    assert folder == cache / "exports" / export_key(adapter, None)
    assert any("first use" in m and "exporting it to ONNX once" in m for m in messages)
    steps = [m for m in messages if m.startswith("[")]
    assert [s.split("]")[0] for s in steps] == [f"[{i}/7" for i in range(1, 8)]
    assert any("int8: skipped" in m for m in messages)
    assert any("adding int8 graphs" in m for m in int8_added)
    assert not any("first use" in m for m in int8_added)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["format"] == MANIFEST_FORMAT and manifest["status"] == "ok"
    assert manifest["validation"]["prompt_ids_identical"] is True
    assert manifest["validation"]["greedy_tokens_identical"] is True
    assert {PROMPT_FILE, INT8_SCORER_FILE, INT8_GENERATOR_FILE} <= set(manifest["files"])
    assert manifest["int8"]["status"] in ("ok", "failed")

    again: list[str] = []
    stamp = (folder / MANIFEST_FILE).stat().st_mtime_ns
    assert ensure_export(adapter, cache_dir=cache, int8=True, log=again.append) == folder
    assert again == [] and (folder / MANIFEST_FILE).stat().st_mtime_ns == stamp
    other = adapter.parent / "other-adapter"
    shutil.copytree(adapter, other, dirs_exist_ok=True)
    head = other / "score_head.safetensors"
    head.write_bytes(head.read_bytes()[:-1] + bytes([head.read_bytes()[-1] ^ 1]))
    assert export_key(other, None) != export_key(adapter, None)


def test_int8_section_states_its_validation_and_tolerance(exported: Path) -> None:
    int8 = json.loads((exported / MANIFEST_FILE).read_text())["int8"]
    validation = int8["validation"]
    for key in ("score_max_abs_diff", "score_mean_abs_diff", "faithfulness_fp32"):
        assert isinstance(validation[key], float)
    assert len(validation["top10_overlap_per_window"]) == 2
    assert set(validation["tolerance"]) == {
        "score_max_abs_diff",
        "min_top10_overlap",
        "max_faithfulness_drop",
        "max_trusted_drop",
    }
    assert int8["status"] == ("ok" if validation["passed"] else "failed")
    scorer = validation["scorer_only"]
    assert int8["scorer_status"] == ("ok" if scorer["passed"] else "failed")
    assert len(scorer["top10_overlap_per_window"]) == 2
    assert int8["quantized_matmuls"] > 0
    # The residuals are compared, which int8 always moves a little; clamped scores were
    # compared before, and a prior of zero made every one of them 0 in both precisions.
    assert scorer["score_max_abs_diff"] > 0 and validation["score_max_abs_diff"] > 0
    assert (exported / INT8_SCORER_FILE).stat().st_size < (exported / "scorer.onnx").stat().st_size


# ---------------------------------------------------------------------------- serving
def test_batched_scores_and_explanations_match_pytorch(
    exported: Path, torch_model: TrailModel
) -> None:
    """Scores with the template's opening cached and passed as the past, and explanations
    from batched prompt ids, are PyTorch's (scores to 1e-4, texts identical)."""
    runtime = OrtTrailModel(exported, providers=[CPU], precision="fp32")
    assert runtime.encoder is not None and runtime.encoder.joined
    assert runtime._prefix == runtime.encoder.prefix_ids and runtime._prefix_past
    features = validation_features(11, seed=7)
    reference = torch_model.score(features)
    np.testing.assert_allclose(runtime.score(features, batch_size=4), reference, atol=1e-4)
    scores = [float(s) for s in reference[:6]]
    assert runtime.explain(features[:6], scores) == torch_model.explain(features[:6], scores)
    assert all(runtime.timings[k] > 0 for k in ("prompt_s", "score_s", "generate_s"))


def test_greedy_rows_leave_the_batch_with_the_same_tokens(exported: Path) -> None:
    """Dropping finished rows from the batch (and their cache) changes no token.

    Catches: the cache, mask or positions of the remaining rows misaligned after a row
    leaves (their tokens would change), or a row's tokens given to another."""
    runtime = OrtTrailModel(exported, providers=[CPU], precision="fp32", verify=False)
    features = validation_features(9, seed=11)
    openings = [forecast_sentence(f, math.log1p(f.ew_1)) for f in features]
    rows = runtime.prompt_ids(features, openings)
    args = {"max_new_tokens": 24, "eos_id": runtime.end_id, "pad_id": runtime.pad_id}
    for eos in (runtime.end_id, _frequent_token(runtime, rows, args)):
        args["eos_id"] = eos
        compact = runtime.generator.greedy(rows, compact=True, **args)
        padded = runtime.generator.greedy(rows, compact=False, **args)
        assert compact == padded
    # The second end token finished rows at different steps: rows really left the batch.
    assert len({len(r) for r in compact}) > 1 and min(len(r) for r in compact) < 24


def _frequent_token(runtime: OrtTrailModel, rows: list[list[int]], args: dict) -> int:
    """A token the model writes in some rows but not all (an 'end' that comes at mixed times)."""
    generated = runtime.generator.greedy(rows, compact=False, **{**args, "eos_id": -1})
    counts: dict[int, int] = {}
    for row in generated:
        for token in set(row):
            counts[token] = counts.get(token, 0) + 1
    mixed = [t for t, n in counts.items() if 0 < n < len(rows)]
    assert mixed, "every row wrote the same tokens: the check could not fail"
    return max(mixed, key=lambda t: counts[t])


def test_precision_follows_the_int8_validation() -> None:
    """``auto`` serves int8 only on the CPU, only what passed its validation, and only what
    the defaults allow; asking for int8 that failed is a clear error."""
    ok = {"int8": {"status": "ok", "scorer_status": "ok"}}
    scorer_only = {"int8": {"status": "failed", "scorer_status": "ok"}}
    failed = {"int8": {"status": "failed", "scorer_status": "failed"}}
    on = {"int8_on_cpu": True, "int8_generation": False}
    assert choose_precision(ok, "auto", [CPU], **on) == "int8-scorer"
    assert choose_precision(ok, "auto", [CPU], int8_on_cpu=True, int8_generation=True) == "int8"
    assert choose_precision(scorer_only, "auto", [CPU], int8_on_cpu=True, int8_generation=True) == (
        "int8-scorer"
    )
    assert choose_precision(ok, "auto", [CPU], int8_on_cpu=False) == "fp32"
    assert choose_precision(failed, "auto", [CPU], **on) == "fp32"
    # Graphs whose validation never finished (a crash) are not served.
    validating = {"int8": {"status": "validating", "scorer_status": "validating"}}
    assert choose_precision(validating, "auto", [CPU], **on) == "fp32"
    assert choose_precision({}, "auto", [CPU], **on) == "fp32"
    assert choose_precision(ok, "auto", [CUDA, CPU], **on) == "fp32"  # int8 is a CPU path
    assert choose_precision(ok, "fp32", [CPU], **on) == "fp32"
    assert choose_precision(ok, "int8", [CUDA, CPU]) == "int8"  # asked for: served
    assert choose_precision(scorer_only, "int8-scorer", [CPU]) == "int8-scorer"
    with pytest.raises(ModelLoadError, match="failed their validation"):
        choose_precision(scorer_only, "int8", [CPU])
    with pytest.raises(ModelLoadError, match="no int8 graphs"):
        choose_precision({}, "int8-scorer", [CPU])


def test_int8_graphs_serve_when_asked(exported: Path) -> None:
    """The int8 graphs load and score close to fp32 (the tiny random model is far from the
    real one's tolerance, so this asserts what is served, not the verdict): ``int8-scorer``
    scores with the int8 graph and explains exactly as fp32; ``int8`` explains with int8."""
    manifest = json.loads((exported / MANIFEST_FILE).read_text())
    copy = exported.parent / "int8-ok"
    shutil.copytree(exported, copy, dirs_exist_ok=True)
    manifest["int8"] |= {"status": "ok", "scorer_status": "ok"}
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    scorers = {
        p: OrtTrailScorer(copy, rescore_top=3, providers=[CPU], precision=p)
        for p in ("fp32", "int8-scorer", "int8")
    }
    assert {p: s.precision for p, s in scorers.items()} == {p: p for p in scorers}
    assert scorers["int8"].version == scorers["fp32"].version + "+int8"
    assert scorers["int8-scorer"].version == scorers["fp32"].version + "+int8-scorer"
    features = validation_features(6, seed=2)
    scores = {p: s.model.score(features) for p, s in scorers.items()}
    assert not np.array_equal(scores["int8-scorer"], scores["fp32"])  # really other graphs
    assert np.corrcoef(scores["int8-scorer"], scores["fp32"])[0, 1] > 0.5
    forecasts = [float(v) for v in scores["fp32"]]
    texts = {p: s.model.explain(features, forecasts) for p, s in scorers.items()}
    assert texts["int8-scorer"] == texts["fp32"]


# ---------------------------------------------------------------------------- the runtime
def test_trail_runs_on_onnx_runtime_by_default(adapter: Path, cache: Path, exported: Path) -> None:
    settings = Settings(adapter=adapter, cache_dir=cache)
    scorer = language_model_scorer_factory("trail", settings)()
    assert isinstance(scorer, OrtTrailScorer) and scorer.model_dir == exported
    torch_scorer = language_model_scorer_factory(
        "trail", Settings(adapter=adapter, cache_dir=cache, lm_runtime="torch")
    )()
    assert isinstance(torch_scorer, TrailScorer)


def test_a_failed_export_falls_back_to_pytorch_only_in_auto(
    adapter: Path, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cached export that failed its validation is not retried on every run: ``auto``
    serves PyTorch and says why, ``ort`` refuses with the folder to delete."""
    folder = tmp_path / "exports" / exported.name
    shutil.copytree(exported, folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    (folder / MANIFEST_FILE).write_text(json.dumps({**manifest, "status": "failed"}))
    scorer = cached_trail_scorer(adapter, Settings(adapter=adapter, cache_dir=tmp_path))
    assert isinstance(scorer, TrailScorer)
    assert "scoring with PyTorch" in capsys.readouterr().err
    with pytest.raises(ExportUnavailable, match="delete that folder"):
        cached_trail_scorer(adapter, Settings(cache_dir=tmp_path, lm_runtime="ort"))


def test_replay_default_runtime_ranks_like_pytorch(
    adapter: Path,
    cache: Path,
    exported: Path,
    events: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``trail replay --scorer trail`` serves the cached ONNX export (no export again) and
    ranks exactly as ``--runtime torch``."""
    monkeypatch.setenv("TRAIL_CACHE_DIR", str(cache))
    common = ["replay", str(events), "--window", "7d", "--scorer", "trail", "--rescore-top", "6"]
    common += ["--test-windows", "3", "--print-top", "0", "--explain-top", "2", "--no-progress"]
    common += ["--adapter", str(adapter), "--lm-runtime", "ort-fp32"]
    stamp = (exported / MANIFEST_FILE).stat().st_mtime_ns
    for name, extra in {"ort": [], "torch": ["--runtime", "torch"]}.items():
        out = ["--predictions-out", str(tmp_path / f"{name}.jsonl")]
        assert trail([*common, *extra, *out]) == 0
    assert (exported / MANIFEST_FILE).stat().st_mtime_ns == stamp
    ort_rankings = (tmp_path / "ort.jsonl").read_text()
    assert ort_rankings == (tmp_path / "torch.jsonl").read_text()
    assert len(ort_rankings.splitlines()) == 3


def test_a_corrupt_cached_export_is_exported_again(
    adapter: Path, exported: Path, tmp_path: Path
) -> None:
    """The cache is TRAIL's own: a file there that no longer matches its hash (a disk error, a
    partial copy) is not served; ``auto`` exports the adapter again, once, and serves that."""
    folder = tmp_path / "exports" / exported.name
    shutil.copytree(exported, folder)
    scorer_file = folder / "scorer.onnx"
    data = bytearray(scorer_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    scorer_file.write_bytes(bytes(data))
    messages: list[str] = []
    settings = Settings(adapter=adapter, cache_dir=tmp_path, lm_runtime="auto")
    scorer = cached_trail_scorer(adapter, settings, log=messages.append)
    assert isinstance(scorer, OrtTrailScorer) and scorer.model_dir == folder
    assert any("scorer.onnx does not match its sha256" in m for m in messages)
    assert any("first use" in m for m in messages)


def test_export_command_writes_and_names_the_int8_verdicts(
    adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``trail export --int8`` adds the int8 graphs with their verdicts and says which
    runtime would serve each."""
    out = tmp_path / "export"
    assert trail(["export", str(adapter), "--out", str(out), "--int8", "--prompts", "2"]) == 0
    err = capsys.readouterr().err
    int8 = json.loads((out / MANIFEST_FILE).read_text())["int8"]
    for runtime, status in (("ort-int8-scorer", "scorer_status"), ("ort-int8", "status")):
        line = next(line for line in err.splitlines() if f"--lm-runtime {runtime})" in line)
        assert line.endswith("passed" if int8[status] == "ok" else "FAILED (not served)")
