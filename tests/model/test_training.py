"""TRAIL training and scoring on a tiny random Llama: seconds, not minutes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from model.scorer import TrailScorer
from model.trail import TrailConfig, TrailModel
from model.training import TrainConfig, step_loss, train
from streams.cli import main as trail


@pytest.fixture(scope="module")
def snapshots(events: Path) -> Path:
    """Real snapshots of the toy log, written by `trail replay`."""
    folder = events.parent
    out = folder / "snapshots"
    assert (
        trail(
            [
                "replay",
                str(events),
                "--window",
                "7d",
                "--scorer",
                "last-window",
                "--snapshots-out",
                str(out),
                "--print-top",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    return out


def test_losses_go_down_on_a_toy_set(tiny_model: Path, snapshots: Path) -> None:
    from model.training import split_snapshots

    torch.manual_seed(0)
    config = TrainConfig(batch_size=6, windows_per_batch=2, holdout=2, val_windows=1, rescore_top=6)
    split = split_snapshots([snapshots], config, "ewma-1")
    # Every layer adapted: the tiny random model has only two.
    model = TrailModel.from_base(
        TrailConfig(base_model=str(tiny_model), lora_top_fraction=1.0, lora_rank=16)
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    fixed = [split.train[0][:3], split.train[1][:3]]
    first = None
    for _ in range(40):
        loss, parts = step_loss(model, fixed, config, random.Random(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first or parts
    assert parts["loss"] < 0.8 * first["loss"]
    assert parts["mse"] < 0.5 * first["mse"]
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
    assert (out / "score_head.pt").is_file()
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
    assert (
        trail(
            [
                "replay",
                str(snapshots.parent / "events.csv"),
                "--window",
                "7d",
                "--scorer",
                "trail",
                "--adapter",
                str(out),
                "--test-windows",
                "2",
                "--print-top",
                "2",
                "--explain-top",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        trail(
            [
                "evaluate",
                str(snapshots.parent / "events.csv"),
                "--window",
                "7d",
                "--scorer",
                "trail",
                "--adapter",
                str(out),
                "--test-windows",
                "2",
                "--json",
                str(evaluation),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "faithfulness" in evaluation.read_text()


def test_missing_adapter_is_a_clear_error(tmp_path: Path, capsys) -> None:
    events = tmp_path / "e.csv"
    events.write_text("user_id,item_id,timestamp\nu,1,1\nu,2,900000\nu,1,1900000\n")
    assert (
        trail(
            [
                "replay",
                str(events),
                "--window",
                "7d",
                "--scorer",
                "trail",
                "--adapter",
                str(tmp_path / "none"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "no TRAIL adapter" in capsys.readouterr().err
