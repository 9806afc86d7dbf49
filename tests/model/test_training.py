"""TRAIL training and scoring on a tiny random Llama: seconds, not minutes."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from model.scorer import TrailScorer
from model.trail import TrailConfig, TrailModel
from model.training import TrainConfig, preferred, split_snapshots, step_loss, train
from streams.cli import main as trail

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def weekly(command: str, log: Path, scorer: str, *extra: str) -> int:
    """The exit code of ``trail COMMAND LOG`` in weekly windows, ranked by ``scorer``."""
    return trail([command, str(log), "--window", "7d", "--scorer", scorer, *extra, "--no-progress"])


@pytest.fixture(scope="module")
def snapshots(events: Path) -> Path:
    """Real snapshots of the toy log, written by `trail replay`."""
    out = events.parent / "snapshots"
    written = weekly(
        "replay", events, "last-window", "--snapshots-out", str(out), "--print-top", "0"
    )
    assert written == 0
    return out


@pytest.mark.parametrize(
    ("label", "prior"), [("count", "ewma-1"), ("returning", "returning-users")]
)
def test_losses_go_down_on_a_toy_set(
    tiny_model: Path, snapshots: Path, label: str, prior: str
) -> None:
    torch.manual_seed(0)
    config = TrainConfig(
        batch_size=6, windows_per_batch=2, holdout=2, val_windows=1, rescore_top=6, label=label
    )
    split = split_snapshots([snapshots], config, prior)
    # Every layer adapted: the tiny random model has only two.
    model = TrailModel.from_base(
        TrailConfig(base_model=str(tiny_model), lora_top_fraction=1.0, lora_rank=16, prior=prior)
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    fixed = [split.train[0][:3], split.train[1][:3]]
    first = None
    for _ in range(80):
        loss, parts = step_loss(model, fixed, config, random.Random(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first or parts
    assert parts["loss"] < 0.8 * first["loss"]
    assert parts["mse"] < 0.5 * first["mse"]
    if label == "count":
        # The text losses do not depend on the label; on this toy set the returning label's
        # larger ranking gradient leaves them flat within 80 steps, so they are checked once.
        assert parts["lm"] < 0.95 * first["lm"]
        assert parts["expl"] < 0.5 * first["expl"]


def test_train_writes_adapter_and_manifest_and_resumes(
    tiny_model: Path, snapshots: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    config = TrainConfig(
        steps=4,
        batch_size=4,
        holdout=2,
        val_windows=1,
        rescore_top=6,
        eval_every=2,
        checkpoint_every=2,
    )
    manifest = train(
        [snapshots],
        out,
        model_config=TrailConfig(base_model=str(tiny_model)),
        config=config,
        progress=False,
    )
    assert manifest["steps"] == 4
    assert "val_precision@10" in manifest["validation"]
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "score_head.safetensors").is_file()
    # Resuming a finished run does no more steps and keeps the history.
    again = train(
        [snapshots],
        out,
        model_config=TrailConfig(base_model=str(tiny_model)),
        config=config,
        progress=False,
    )
    assert len(again["validation_history"]) == len(manifest["validation_history"])

    # The adapter serves as the engine's scorer, with explanations.
    evaluation = tmp_path / "eval.json"
    scorer = TrailScorer(out, rescore_top=5)
    assert scorer.version.startswith("trail@")
    log = snapshots.parent / "events.csv"
    served = ["--adapter", str(out), "--lm-runtime", "torch", "--test-windows", "2"]
    assert weekly("replay", log, "trail", *served, "--print-top", "2", "--explain-top", "2") == 0
    assert weekly("evaluate", log, "trail", *served, "--json", str(evaluation)) == 0
    trail_results = json.loads(evaluation.read_text())["results"]["trail"]
    # Two windows, ten explanations each; the tiny model writes no checkable claim, so the
    # guard replaced every text (with the verbalizer's, which always makes claims).
    assert trail_results["explanations"] == 20.0
    assert trail_results["explanations_without_claims"] == 0.0
    assert trail_results["guard_replaced"] == 1.0
    assert trail_results["raw_faithfulness"] == 0.0
    assert trail_results["raw_contradiction_rate"] == 0.0
    assert trail_results["model_version"] == scorer.version


def test_missing_adapter_is_a_clear_error(tmp_path: Path, capsys) -> None:
    events = tmp_path / "e.csv"
    events.write_text("user_id,item_id,timestamp\nu,1,1\nu,2,900000\nu,1,1900000\n")
    assert weekly("replay", events, "trail", "--adapter", str(tmp_path / "none")) == 2
    assert "no TRAIL adapter" in capsys.readouterr().err


def _train_cli(snapshots: Path, out: Path, tiny_model: Path, *extra: str) -> list[str]:
    """``trail train`` on the tiny model, two cheap steps; returns the argument list."""
    return [
        "train",
        str(snapshots),
        "--out",
        str(out),
        "--base-model",
        str(tiny_model),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--holdout",
        "2",
        "--val-windows",
        "1",
        "--rescore-top",
        "6",
        "--no-progress",
        *extra,
    ]


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def test_planted_pickle_checkpoint_never_runs(
    tiny_model: Path, snapshots: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``checkpoint.pt`` planted in ``--out`` is refused in one line; its code never runs.

    Catches: the resume of ``trail train --out DIR`` with ``torch.load(..., weights_only=False)``
    (on that code the planted pickle creates the marker file while it is loaded).
    """
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "planted-code-ran"
    # A protocol-0 pickle that calls open(marker, "w") when it is unpickled.
    payload = f"cbuiltins\nopen\n(S'{marker}'\nS'w'\ntR.".encode()
    (out / "checkpoint.pt").write_bytes(payload)
    assert trail(_train_cli(snapshots, out, tiny_model)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "checkpoint.pt" in line and "never loaded" in line and "--no-resume" in line, line
    assert not marker.exists()
    # Starting over is the fix the line names, and it works (the pickle still unread).
    assert trail(_train_cli(snapshots, out, tiny_model, "--no-resume")) == 0
    assert not marker.exists()
    assert (out / "checkpoint.safetensors").is_file()


def test_unusable_checkpoint_is_one_clear_line(
    tiny_model: Path, snapshots: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A garbage ``checkpoint.safetensors``, or one of another model, stops ``trail train``
    with one line naming it and ``--no-resume``.

    Catches: a resume that crashes with a safetensors or ``copy_`` size-mismatch traceback.
    """
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    assert trail(_train_cli(snapshots, out, tiny_model)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "checkpoint.safetensors is not a readable checkpoint" in line and "--no-resume" in line

    assert trail(_train_cli(snapshots, out, tiny_model, "--no-resume")) == 0
    capsys.readouterr()
    # LoRA rank 4 against the rank-8 checkpoint just written.
    assert trail(_train_cli(snapshots, out, tiny_model, "--lora-rank", "4")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "written for another model" in line and "--no-resume" in line, line


def test_resumed_run_is_the_uninterrupted_run(
    tiny_model: Path, snapshots: Path, tmp_path: Path
) -> None:
    """Two steps, a stop, two more from the checkpoint: the same weights, bit for bit, and
    the same losses as four steps in one go.

    Catches: a checkpoint that drops the optimizer's moments, a weight, or either RNG (Adam's
    step after a resume, the dropout masks or the sampled batches would differ).
    """

    def config(steps: int) -> TrainConfig:
        # A warmup longer than the run: the learning rate of a step then does not depend on
        # the planned number of steps, so the 2-step and 4-step runs share steps 1 and 2.
        return TrainConfig(
            steps=steps,
            batch_size=4,
            holdout=2,
            rescore_top=6,
            warmup=10,
            # No validation: a 2-step run validates (and selects) at its last step, which a
            # 4-step run never does, so the selected weights would differ by design.
            val_windows=0,
            checkpoint_every=2,
        )

    model_config = TrailConfig(base_model=str(tiny_model), lora_top_fraction=1.0)

    def run(folder: str, steps: int) -> dict[str, Any]:
        return train(
            [snapshots],
            tmp_path / folder,
            model_config=model_config,
            config=config(steps),
            progress=False,
        )

    whole = run("whole", 4)
    run("resumed", 2)
    resumed = run("resumed", 4)
    assert resumed["final_loss"] == whole["final_loss"]
    for name in ("adapter_model.safetensors", "score_head.safetensors"):
        a = load_file(tmp_path / "whole" / name)
        b = load_file(tmp_path / "resumed" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # The adapter is not still at its initialisation: the comparison above means something.
    head = load_file(tmp_path / "whole" / "score_head.safetensors")
    assert head["proj.weight"].count_nonzero() > 0


def _poison(path: Path) -> None:
    """Rewrite one window's snapshot file with other signals and other next-window counts."""
    table = pq.read_table(path)
    rows = table.to_pylist()
    for row in rows:
        row["next_count"] = row["next_count"] * 5 + 7
        row["next_returning"] = row["next_returning"] + 3
        row["count"] = row["count"] + 11
        row["total"] = row["total"] + 11
        row["ew_1"] = row["ew_1"] * 3 + 1
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def _window_files(folder: Path) -> list[Path]:
    """The snapshot files of ``folder``, oldest window first (numerically, not as text)."""
    return sorted(
        folder.glob("window_end=*/*.parquet"), key=lambda p: int(p.parent.name.split("=")[1])
    )


def test_training_never_reads_the_evaluation_hold_out(
    tiny_model: Path, snapshots: Path, tmp_path: Path
) -> None:
    """The last ``holdout`` (8) windows of a snapshot folder are the evaluation windows:
    poisoning their files (signals and next-window counts) changes nothing that training
    writes: not a bit of the weights, not the validation numbers, not the manifest.

    Catches: a split that reads the held-out windows (each tried once on ``split_snapshots``:
    ``usable = ends``; ``len(ends) - holdout + 1``; the held-out windows trained on beside the
    training windows, the description left right; the last window validated on).
    """
    folder = tmp_path / "snapshots"
    shutil.copytree(snapshots, folder)
    config = TrainConfig(steps=4, batch_size=4, rescore_top=6, eval_every=2, checkpoint_every=4)
    assert config.holdout == 8 and config.val_windows == 2
    model_config = TrailConfig(base_model=str(tiny_model), lora_top_fraction=1.0)

    def run(out: str) -> dict[str, Any]:
        manifest = train(
            [folder], tmp_path / out, model_config=model_config, config=config, progress=False
        )
        manifest.pop("seconds_this_run")
        return manifest

    files = _window_files(folder)
    assert len(files) >= config.holdout + config.val_windows + 2, len(files)
    clean = run("clean")
    split = clean["data"][str(folder)]
    held_out = [int(p.parent.name.split("=")[1]) for p in files[-config.holdout :]]
    assert split["held_out_windows"] == [held_out[0], held_out[-1]]
    assert split["validation_windows"][-1] < held_out[0]

    for path in files[-config.holdout :]:
        _poison(path)
    # The poison is there to be read: a split that holds out fewer windows sees it.
    leaky = replace(config, holdout=config.holdout - 1)
    before = split_snapshots([snapshots], leaky, model_config.prior)
    after = split_snapshots([folder], leaky, model_config.prior)
    assert [e.next_count for e in after.validation[-1]] != [
        e.next_count for e in before.validation[-1]
    ]

    poisoned = run("poisoned")
    assert poisoned == clean  # validation numbers, data description, file hashes, all of it
    assert clean["validation"]["val_precision@10"] >= 0.0  # a validation really ran
    for name in ("adapter_model.safetensors", "score_head.safetensors"):
        a = load_file(tmp_path / "clean" / name)
        b = load_file(tmp_path / "poisoned" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_published_explanations_are_judged_by_the_forecast_they_state(
    tiny_model: Path, events: Path, tmp_path: Path
) -> None:
    """Every explanation TRAIL publishes passed the guard (or is the verbalizer's, true by
    construction), so ``trail evaluate`` must report them all faithful, with no contradiction.

    Catches: an evaluation that judges a text against another number than the one it states
    (today the ranker's score: an item ranked low reads as "falling", so "rising" counts as a
    contradiction). Strict: once the evaluation is fixed this passes, and the marker goes.
    """
    adapter = tmp_path / "adapter"
    torch.manual_seed(0)
    TrailModel.from_base(TrailConfig(base_model=str(tiny_model))).save(adapter)
    report = tmp_path / "eval.json"
    common = ["--window", "7d", "--test-windows", "2", "--rescore-top", "6", "--no-progress"]
    command = ["evaluate", str(events), *common, "--scorer", "trail", "--adapter", str(adapter)]
    command += ["--lm-runtime", "torch"]
    assert trail([*command, "--json", str(report)]) == 0
    results = json.loads(report.read_text())["results"]["trail"]
    assert results["explanations"] == 20.0
    assert results["contradiction_rate"] == 0.0
    assert results["faithfulness"] == 1.0


def test_adapter_gets_the_selected_steps_weights(
    tiny_model: Path, snapshots: Path, tmp_path: Path
) -> None:
    """The adapter written is the validation step that :func:`preferred` keeps (ranking by
    ``captured@10`` first, faithfulness where the rankings tie within their error), not simply
    the last step, and the manifest says which step and why.

    Catches: a selection that is recorded but whose weights are not the ones saved, or a run
    that saves its last step whatever validation said.
    """
    config = TrainConfig(
        steps=6,
        batch_size=4,
        holdout=2,
        val_windows=1,
        rescore_top=6,
        eval_every=2,
        faithfulness_items=2,
        lr=5e-2,
        head_lr=5e-2,
    )
    manifest = train(
        [snapshots],
        tmp_path / "run",
        model_config=TrailConfig(base_model=str(tiny_model), lora_top_fraction=1.0),
        config=config,
        progress=False,
    )
    history = manifest["validation_history"]
    assert [v["step"] for v in history] == [2, 4, 6]
    best = history[0]
    for validation in history[1:]:
        if preferred(validation, best):
            best = validation
    assert manifest["selected_by"] == "val_captured@10"
    assert manifest["validation"]["step"] == best["step"]
    assert 0.0 <= history[0]["val_faithfulness"] <= 1.0
    selected = load_file(tmp_path / "run" / "best.safetensors")
    head = load_file(tmp_path / "run" / "score_head.safetensors")
    assert all(torch.equal(selected[f"head/{k}"], v) for k, v in head.items())


def test_init_adapter_starts_from_its_lora_weights(
    tiny_model: Path, snapshots: Path, tmp_path: Path
) -> None:
    """``init_adapter``: the LoRA weights start as the given adapter's (a run with a zero
    learning rate writes them back unchanged); an adapter of another shape is refused.

    Catches: a warm start that silently keeps peft's fresh initialisation.
    """
    base = TrainConfig(steps=2, batch_size=4, holdout=2, val_windows=0, rescore_top=6, lr=5e-2)
    model_config = TrailConfig(base_model=str(tiny_model), lora_top_fraction=1.0)
    train([snapshots], tmp_path / "first", model_config=model_config, config=base, progress=False)
    frozen = TrainConfig(**{**base.__dict__, "steps": 1, "lr": 0.0, "head_lr": 0.0})
    manifest = train(
        [snapshots],
        tmp_path / "second",
        model_config=model_config,
        config=frozen,
        progress=False,
        init_adapter=tmp_path / "first",
    )
    assert manifest["initialised_from"]["adapter"] == str(tmp_path / "first")
    # A resumed run still says where its weights started (the checkpoint carries it).
    longer = TrainConfig(**{**frozen.__dict__, "steps": 2, "checkpoint_every": 1})
    resumed = train(
        [snapshots], tmp_path / "second", model_config=model_config, config=longer, progress=False
    )
    assert resumed["initialised_from"] == manifest["initialised_from"]
    first = load_file(tmp_path / "first" / "adapter_model.safetensors")
    second = load_file(tmp_path / "second" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    fresh = TrailModel.from_base(model_config)
    lora_b = [p for n, p in fresh.lm.named_parameters() if "lora_B" in n]
    assert all(p.count_nonzero() == 0 for p in lora_b)  # peft's start, which init replaces
    assert any(t.count_nonzero() > 0 for k, t in first.items() if "lora_B" in k)
    other = TrailConfig(base_model=str(tiny_model), lora_top_fraction=1.0, lora_rank=4)
    with pytest.raises(ValueError, match="lora_rank"):
        train(
            [snapshots],
            tmp_path / "third",
            model_config=other,
            config=frozen,
            progress=False,
            init_adapter=tmp_path / "first",
        )
