"""--report-to: live metrics through DeepSpeed's monitor (TensorBoard event files, CSV files, W&B).

A real tiny KD run writes TensorBoard and CSV events that agree with metrics.jsonl; the flags
parse as a comma list or repeated; a backend whose package is missing fails at startup with the
command that installs it.
"""

from __future__ import annotations

import csv
import sys

import pytest

from _training import cli, make_dolly, make_gpt2_pair, read_metrics


def minimal_argv(tmp_path, *extra: str) -> list[str]:
    """The smallest command line check_args accepts (no file is opened)."""
    return ["--model-path", "m", "--data-dir", "d", "--save-dir", str(tmp_path / "run"), "--lr", "1e-3",
            "--deepspeed_config", "c.json", "--do-train", "--num-epochs", "1", *extra]


def scalars(event_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the TensorBoard event files in ``event_dir`` → [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_csv(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_report_to_accepts_comma_lists_and_repeats(tmp_path):
    from todi.training.args import parse_args

    args = parse_args(minimal_argv(tmp_path, "--report-to", "csv,tensorboard", "--report-to", "csv"))
    assert args.report_to == ["csv", "tensorboard"]
    assert parse_args(minimal_argv(tmp_path)).report_to == []
    assert parse_args(minimal_argv(tmp_path, "--report-to", "none")).report_to == []
    with pytest.raises(SystemExit):
        parse_args(minimal_argv(tmp_path, "--report-to", "mlflow"))


def test_report_flags_are_not_part_of_the_run_identity(tmp_path):
    from todi.training.args import parse_args, run_identity

    plain = run_identity(parse_args(minimal_argv(tmp_path)))
    reported = run_identity(parse_args(minimal_argv(tmp_path, "--report-to", "csv", "--report-dir", "x",
                                                    "--wandb-project", "p")))
    assert plain == reported  # a resumed run may start or stop reporting


@pytest.mark.parametrize("backend, install", [("wandb", "pip install wandb"), ("tensorboard", "pip install tensorboard")])
def test_a_missing_package_fails_at_startup_with_the_install_command(backend, install, tmp_path, monkeypatch, capsys):
    from todi.training.args import parse_args

    monkeypatch.setitem(sys.modules, backend, None)  # importlib then reports it as not installed
    with pytest.raises(SystemExit) as exc:
        parse_args(minimal_argv(tmp_path, "--report-to", f"csv,{backend}"))
    assert f"--report-to {backend}" in str(exc.value) and install in str(exc.value)


@pytest.mark.slow
def test_tensorboard_and_csv_events_of_a_tiny_kd_run(process_group, shared_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from todi.training.cli import main

    student, teacher = make_gpt2_pair(shared_dir, tmp_path / "models")
    dolly = make_dolly(shared_dir, tmp_path / "dolly", n_train=8, n_dev=2)
    run = tmp_path / "run"
    argv = cli(student, dolly, run, teacher=teacher, objective="ToDi", total_iters=2, do_valid=True,
               report_to="tensorboard,csv")
    main([str(a) for a in argv + ["--stop-after-iters", "1"]])  # then resumed: events append, headers stay single
    main([str(a) for a in argv])
    train, dev = read_metrics(run), read_metrics(run, "dev")
    assert [r["step"] for r in train] == [1, 2] and len(dev) == 1

    events = list((run / "monitor/tensorboard/run").glob("events.out.tfevents.*"))
    assert len(events) == 2  # one per invocation
    logged = scalars(events[0].parent)
    for name in ("loss", "ce", "kd", "acc", "todi_alpha", "kd_token_ratio", "lr", "tokens_per_s"):
        assert [s for s, _ in logged[f"train/{name}"]] == [1, 2], name
        assert [v for _, v in logged[f"train/{name}"]] == pytest.approx([r[name] for r in train], rel=1e-6), name
    assert logged["dev/loss"] == [(2, pytest.approx(dev[0]["loss"], rel=1e-6))]
    assert "epoch/loss" in logged and "train/step" not in logged  # the step is the x axis, not a scalar

    csv_dir = run / "monitor/csv/run"
    header, *rows = read_csv(csv_dir / "train_loss.csv")
    assert header == ["step", "loss"]
    assert [(int(s), float(v)) for s, v in rows] == [(r["step"], pytest.approx(r["loss"])) for r in train]
    header, *rows = read_csv(csv_dir / "dev_loss.csv")
    assert [(int(s), float(v)) for s, v in rows] == [(2, pytest.approx(dev[0]["loss"]))]


def test_a_new_run_starts_its_csv_files_afresh_and_a_resumed_one_appends(process_group, tmp_path):
    from todi.training.monitor import TrainingMonitor, monitor_sections

    sections = monitor_sections(["csv"], tmp_path, "job", "todi")
    path = tmp_path / "csv/job/train_loss.csv"
    for fresh, step in ((True, 1), (False, 2), (True, 3)):
        monitor = TrainingMonitor(sections, report_dir=tmp_path, job_name="job", is_main=True, fresh=fresh)
        monitor.write("train", {"step": step, "loss": float(step), "note": "text is skipped"}, step)
        monitor.close()
        monitor.write("train", {"loss": 0.0}, step)  # after close: nothing
        if step == 2:
            assert read_csv(path) == [["step", "loss"], ["1", "1.0"], ["2", "2.0"]]
    assert read_csv(path) == [["step", "loss"], ["3", "3.0"]]
    assert sorted(p.name for p in path.parent.iterdir()) == ["train_loss.csv"]
