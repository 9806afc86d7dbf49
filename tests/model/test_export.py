"""ONNX export and ORT runtime on a tiny random Llama: merge, export, validate, serve, reload."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from export.kv_cache import RowCacheStore
from export.manifest import MANIFEST_FILE, ModelLoadError, write_manifest
from export.onnx_export import export_model
from export.reload import ReloadingScorer
from export.runtime import OrtTrailModel, OrtTrailScorer
from export.sessions import CPU
from model.explain import forecast_sentence
from model.scorer import TrailScorer, adapter_version
from model.tiny import validation_features
from model.trail import TrailModel
from streams.cli import main as trail
from streams.engine import Engine, EngineConfig, WindowResult
from streams.trend.state import TrendConfig
from streams.trend.windows import WindowSpec

DAY = 86_400


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "v1"
    manifest = export_model(adapter, out, prompts=6, log=lambda message: None)
    assert manifest["status"] == "ok", manifest["validation"]
    return out


@pytest.fixture(scope="module")
def torch_model(adapter: Path) -> TrailModel:
    return TrailModel.load(adapter)


def test_manifest_records_validation_versions_and_hashes(exported: Path, adapter: Path) -> None:
    manifest = json.loads((exported / MANIFEST_FILE).read_text())
    validation = manifest["validation"]
    assert validation["score_max_abs_diff"] < 1e-4
    assert validation["greedy_tokens_identical"] is True
    assert validation["prompts_checked"] == 6
    assert manifest["opset"] == 18
    assert manifest["version"].startswith("trail@") and manifest["version"].endswith("+onnx")
    assert manifest["adapter"]["version"] in manifest["version"]
    assert manifest["prior"] == "ewma-1"
    for library in ("torch", "transformers", "peft", "optimum", "onnx", "onnxruntime"):
        assert manifest["versions"][library]
    assert {"scorer.onnx", "generator/model.onnx", "tokenizer/tokenizer.json"} <= set(
        manifest["files"]
    )
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())


def test_scorer_and_generator_match_pytorch(exported: Path, torch_model: TrailModel) -> None:
    runtime = OrtTrailModel(exported, providers=[CPU])
    assert runtime.provider == CPU
    # Fresh prompts (not the validation ones), odd count so that buckets are uneven.
    features = validation_features(11, seed=7)
    prompts = [torch_model.prompt_text(f) for f in features]
    with torch.no_grad():
        reference, _ = torch_model.forward(torch_model.encode(prompts))
    residual = runtime.residuals(prompts, batch_size=4)
    assert np.abs(residual - reference.numpy()).max() < 1e-4
    assert np.abs(residual).max() > 0.01  # the head is not zero: the check means something
    np.testing.assert_allclose(runtime.score(features), torch_model.score(features), atol=1e-4)

    scores = [float(s) for s in torch_model.score(features[:5])]
    assert runtime.explain(features[:5], scores) == torch_model.explain(features[:5], scores)


def _pytorch_greedy_ids(model: TrailModel, prompts: list[str]) -> list[list[int]]:
    """PyTorch's greedy continuation of each prompt on its own (no padding at all), cut
    after ``<|im_end|>``: the reference the ONNX generator must reproduce token for token."""
    tokenizer = model.tokenizer
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = []
    with torch.no_grad():
        for prompt in prompts:
            encoded = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
            generated = model.lm.generate(
                **encoded,
                max_new_tokens=model.config.max_explanation_tokens,
                do_sample=False,
                eos_token_id=end_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            row = generated[0, encoded["input_ids"].shape[1] :].tolist()
            out.append(row[: row.index(end_id) + 1] if end_id in row else row)
    return out


def test_generated_token_ids_match_pytorch(exported: Path, torch_model: TrailModel) -> None:
    """The ONNX runtime's explanation tokens are PyTorch's, id for id: each prompt carries its
    forced forecast sentence as served, PyTorch decodes one prompt at a time, ORT in
    length buckets of left-padded batches. No guard, no sentence trimming in between: with
    the tiny model the published texts are mostly the forced sentence, so comparing texts
    could not fail.

    Catches: an ORT decoding loop that drifts from ``generate(do_sample=False)`` (positions
    counting padding, the cache not fed back, one token too few: ``max_new_tokens`` - 1 in
    ``OrtTrailModel.generate_ids`` was tried), or a bucketed batch whose rows come back to
    the wrong prompts.
    """
    runtime = OrtTrailModel(exported, providers=[CPU])
    features = validation_features(9, seed=11)
    scores = [float(s) for s in torch_model.score(features)]
    prompts = [
        torch_model.prompt_text(f) + forecast_sentence(f, s)
        for f, s in zip(features, scores, strict=True)
    ]
    reference = _pytorch_greedy_ids(torch_model, prompts)
    assert runtime.generate_ids(prompts, batch_size=4) == reference
    # Enough tokens, and different ones per prompt: the comparison above means something.
    assert sum(len(r) for r in reference) >= 5 * len(prompts)
    assert len({tuple(r) for r in reference}) > len(prompts) // 2


def test_explanations_from_the_scorers_cache_match_pytorch(
    exported: Path, torch_model: TrailModel
) -> None:
    """A scored item's explanation starts from the KV cache its scoring computed: only the
    forced forecast sentence is fed to the generator before decoding, and the token ids are
    still PyTorch's. Items beyond the cache budget are generated from their whole prompt.

    Catches: a cache kept at the padded positions of the scorer's batch (the rows' lengths
    differ in every bucket), positions that restart at 0 after the cache, a cache looked up
    for the wrong item, or a reuse that silently never happens.
    """
    validation = json.loads((exported / MANIFEST_FILE).read_text())["validation"]
    assert validation["greedy_after_scorer_cache_identical"] is True
    runtime = OrtTrailModel(exported, providers=[CPU])
    assert runtime.reuses_scorer_cache
    features = validation_features(9, seed=13)
    scores = [float(s) for s in torch_model.score(features)]
    openings = [forecast_sentence(f, s) for f, s in zip(features, scores, strict=True)]
    prompts = runtime.prompt_ids(features)
    rows = runtime.prompt_ids(features, openings)
    reference = _pytorch_greedy_ids(
        torch_model,
        [torch_model.prompt_text(f) + o for f, o in zip(features, openings, strict=True)],
    )
    widths: list[int] = []
    run = runtime.generator.session.run

    def recording_run(names: object, feeds: dict[str, np.ndarray]) -> object:
        widths.append(feeds["input_ids"].shape[1])
        return run(names, feeds)

    runtime.generator.session.run = recording_run  # type: ignore[method-assign]
    runtime.score(features, batch_size=4)
    assert len(runtime.row_caches) == len(features)
    assert runtime.generate_ids_of(rows, prompts=prompts) == reference
    assert max(widths) <= max(len(r) - len(p) for r, p in zip(rows, prompts, strict=True))

    # A budget of three prompts' caches: the first three are reused, the rest fed whole.
    first_three = sum(len(p) for p in prompts[:3]) * runtime.scorer.token_bytes
    runtime.row_caches = RowCacheStore(budget_bytes=first_three)
    runtime.score(features, batch_size=4)
    assert [runtime.row_caches.get(p) is not None for p in prompts] == [True] * 3 + [False] * 6
    widths.clear()
    assert runtime.generate_ids_of(rows, prompts=prompts) == reference
    assert max(widths) == max(len(r) for r in rows[3:])


def test_io_binding_path_matches_plain_runs(exported: Path) -> None:
    """IO binding (the CUDA path) run on the CPU gives the same numbers as plain runs."""
    plain = OrtTrailModel(exported, providers=[CPU], io_binding=False, verify=False)
    bound = OrtTrailModel(exported, providers=[CPU], io_binding=True, verify=False)
    features = validation_features(5, seed=3)
    prompts = [plain.prompt_text(f) for f in features]
    np.testing.assert_array_equal(plain.residuals(prompts), bound.residuals(prompts))
    assert plain.generate_ids(prompts, max_new_tokens=8) == bound.generate_ids(
        prompts, max_new_tokens=8
    )


def test_both_graphs_run_with_the_one_session_options(exported: Path) -> None:
    """The scorer's and the generator's sessions take their options from the one builder: the
    thread count asked for, one inter-op thread, full optimisation, no spinning. Catches a
    session built with ORT's defaults (spinning threads, every core) or a builder that drops
    ``threads``."""
    import onnxruntime as ort

    model = OrtTrailModel(exported, providers=[CPU], threads=1, verify=False)
    for graph in (model.scorer, model.generator):
        options = graph.session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def _copy(exported: Path, to: Path) -> Path:
    shutil.copytree(exported, to)
    return to


def test_missing_corrupt_and_mismatched_exports_are_clear_errors(
    exported: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="no exported model"):
        OrtTrailScorer(tmp_path / "nothing")

    corrupt = _copy(exported, tmp_path / "corrupt")
    data = bytearray((corrupt / "scorer.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    (corrupt / "scorer.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="scorer.onnx does not match its sha256"):
        OrtTrailScorer(corrupt)

    truncated = _copy(exported, tmp_path / "truncated")
    path = truncated / "generator" / "model.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="truncated or replaced"):
        OrtTrailScorer(truncated)

    missing = _copy(exported, tmp_path / "missing")
    (missing / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="tokenizer.json is missing"):
        OrtTrailScorer(missing)

    other = _copy(exported, tmp_path / "other-format")
    manifest = json.loads((other / MANIFEST_FILE).read_text())
    (other / MANIFEST_FILE).write_text(json.dumps({**manifest, "format": "trail-onnx@0"}))
    with pytest.raises(ModelLoadError, match="re-export"):
        OrtTrailScorer(other)

    no_manifest = _copy(exported, tmp_path / "no-manifest")
    (no_manifest / MANIFEST_FILE).unlink()
    with pytest.raises(ModelLoadError, match="manifest.json is missing"):
        OrtTrailScorer(no_manifest)


def test_failed_validation_exits_non_zero_and_is_not_served(
    adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "failed"
    # No export can be closer than -1 to PyTorch: the command must fail with its numbers.
    code = trail(
        ["export", str(adapter), "--out", str(out), "--max-abs-diff", "-1", "--prompts", "2"]
    )
    assert code == 1
    assert "FAILED validation: score max abs diff" in capsys.readouterr().err
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["status"] == "failed"
    assert manifest["validation"]["passed"] is False
    with pytest.raises(ModelLoadError, match="failed its validation"):
        OrtTrailScorer(out)


def test_export_without_adapter_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert trail(["export", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 2
    assert "no TRAIL adapter" in capsys.readouterr().err


def _newer_copy(exported: Path, to: Path, version: str, created_at: str) -> Path:
    """A copy of ``exported`` that claims to be another, newer version (manifest rewritten)."""
    _copy(exported, to)
    manifest = json.loads((to / MANIFEST_FILE).read_text())
    manifest.pop("files")
    write_manifest(to, {**manifest, "version": version, "created_at": created_at})
    return to


def _engine_events(events: Path) -> tuple[list[str], np.ndarray]:
    rows = [line.split(",") for line in events.read_text().splitlines()[1:]]
    rows.sort(key=lambda r: int(r[2]))
    return [r[1] for r in rows], np.array([float(r[2]) for r in rows])


def test_reloading_scorer_swaps_exports_between_windows(
    exported: Path, events: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    _copy(exported, folder / "v1")
    scorer = ReloadingScorer(folder, rescore_top=4, providers=[CPU])
    first = scorer.version
    assert scorer.provider == CPU
    engine = Engine(EngineConfig(TrendConfig(WindowSpec(7 * DAY)), explain_top=1), scorer)
    items, timestamps = _engine_events(events)
    cut = [int(np.searchsorted(timestamps, day * DAY)) for day in (40, 60, 80, len(items))]

    def versions(results: list[WindowResult]) -> set[str]:
        assert results
        return {u.model_version for r in results for u in r.score_updates()}

    assert versions(engine.ingest_ids(items[: cut[0]], timestamps[: cut[0]])) == {first}

    _newer_copy(exported, folder / "v2", "trail@second+onnx", "2999-01-01T00:00:00+00:00")
    results = engine.ingest_ids(items[cut[0] : cut[1]], timestamps[cut[0] : cut[1]])
    assert versions(results) == {"trail@second+onnx"}
    assert all(r.trending().model_version == "trail@second+onnx" for r in results)

    # A newer export that is broken: logged, skipped, and the previous one keeps serving.
    broken = _newer_copy(exported, folder / "v3", "trail@third+onnx", "2999-02-01T00:00:00+00:00")
    (broken / "scorer.onnx").write_bytes(b"not a model" * 10)
    with caplog.at_level(logging.ERROR, logger="trail.export"):
        results = engine.ingest_ids(items[cut[1] : cut[2]], timestamps[cut[1] : cut[2]])
    assert versions(results) == {"trail@second+onnx"}
    assert any("v3" in record.getMessage() for record in caplog.records)

    # Hidden staging folders of an export in progress are never picked up.
    _newer_copy(exported, folder / ".v4.partial", "trail@fourth+onnx", "2999-03-01T00:00:00+00:00")
    results = engine.ingest_ids(items[cut[2] :], timestamps[cut[2] :])
    assert versions(results) == {"trail@second+onnx"}

    # At start, a broken newest export is skipped for the newest one that loads.
    assert ReloadingScorer(folder, providers=[CPU]).version == "trail@second+onnx"


def test_an_asyncio_caller_scores_off_the_event_loop(exported: Path, events: Path) -> None:
    """An asyncio caller runs the ORT scorer's synchronous work in a worker thread
    (``asyncio.to_thread``, as the runtime's docstring says): the scores are a direct call's,
    and the explanations come back whole.

    Catches a scorer bound to the thread that built it (sessions, tokenizer or cached state
    that another thread cannot use or sees half-made)."""
    scorer = OrtTrailScorer(exported, rescore_top=3, providers=[CPU])
    engine = Engine(EngineConfig(TrendConfig(WindowSpec(7 * DAY)), explain_top=0), scorer)
    items, timestamps = _engine_events(events)
    features = engine.ingest_ids(items[:800], timestamps[:800])[-1].features

    async def off_the_loop() -> tuple[np.ndarray, list[str | None]]:
        scores = await asyncio.to_thread(scorer.score, features)
        top = features.take(np.arange(2))
        return scores, await asyncio.to_thread(scorer.explain, top, scores[:2])

    scores, texts = asyncio.run(off_the_loop())
    np.testing.assert_array_equal(scores, scorer.score(features))
    assert all(t is not None and t.startswith("Forecast: about") for t in texts)


def test_replay_with_the_onnx_model_ranks_like_pytorch(
    exported: Path, adapter: Path, events: Path, tmp_path: Path
) -> None:
    common = ["replay", str(events), "--window", "7d", "--scorer", "trail", "--rescore-top", "6"]
    common += ["--test-windows", "3", "--print-top", "0", "--explain-top", "2", "--no-progress"]
    runs = {
        "onnx": ["--model", str(exported)],
        # Explicitly: PyTorch is no longer the default, and ORT against ORT could not fail.
        "torch": ["--adapter", str(adapter), "--lm-runtime", "torch"],
    }
    for name, extra in runs.items():
        out = ["--predictions-out", str(tmp_path / f"{name}.jsonl")]
        out += ["--scores-out", str(tmp_path / f"{name}-scores.jsonl")]
        assert trail([*common, *extra, *out]) == 0
    onnx_rankings = (tmp_path / "onnx.jsonl").read_text()
    assert onnx_rankings == (tmp_path / "torch.jsonl").read_text()
    assert len(onnx_rankings.splitlines()) == 3

    def updates(name: str) -> list[dict[str, object]]:
        lines = (tmp_path / f"{name}-scores.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    onnx_updates, torch_updates = updates("onnx"), updates("torch")
    assert len(onnx_updates) == len(torch_updates) > 0
    assert {u["model_version"] for u in onnx_updates} == {
        json.loads((exported / MANIFEST_FILE).read_text())["version"]
    }
    assert {u["model_version"] for u in torch_updates} == {adapter_version(adapter)}
    for ours, theirs in zip(onnx_updates, torch_updates, strict=True):
        assert (ours["item_id"], ours["rank"]) == (theirs["item_id"], theirs["rank"])
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-4)
        assert ours["explanation"] == theirs["explanation"]


def test_trail_scorer_and_ort_scorer_share_the_protocol(exported: Path, adapter: Path) -> None:
    from streams.scoring import Scorer

    ort_scorer = OrtTrailScorer(exported, rescore_top=2, providers=[CPU])
    assert isinstance(ort_scorer, Scorer)
    assert isinstance(TrailScorer(adapter, rescore_top=2), Scorer)
    assert isinstance(ReloadingScorer(exported, providers=[CPU]), Scorer)
    assert ort_scorer.version == f"{TrailScorer(adapter).version}+onnx"
