"""Training curves from synthetic metrics.jsonl files: parsed series (resume dedupe, dev), labels,
the PNG written by ``report.py --curves``, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "code"))

import report as report_cli  # noqa: E402  (code/report.py)
from todi.evaluation.curves import CurveError, load_runs, parse_fields, read_run  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 10_000  # a figure with several panels and lines; an empty canvas is far smaller
LOG_INTERVAL = 10


def _train(step: int, loss: float, **extra) -> dict:
    return {"split": "train", "epoch": 1, "step": step, "loss": loss, "ce": loss + 0.5, "kd": loss - 0.5,
            "acc": 0.3, "lr": 5e-4, "grad_norm": 1.5, "tokens_per_s": 1000.0, **extra}


def _write_run(run_dir: Path, records: list[dict], args: dict | None = None) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if args is not None:
        (run_dir / "args.json").write_text(json.dumps(args))
    return run_dir


@pytest.fixture
def sweep(tmp_path) -> dict[str, Path]:
    """Three runs of a sweep: ToDi (resumed after step 20: steps 30-40 re-logged), forward KL, SFT."""
    root = tmp_path / "outputs"
    todi = [_train(s, 3.0 - s / 100, todi_alpha=0.4) for s in (10, 20, 30, 40)]
    todi += [{"split": "train_epoch", "epoch": 1, "step": 40, "loss": 2.7, "ce": 3.1, "kd": 2.2},
             {"split": "dev", "epoch": 1, "step": 40, "loss": 2.9, "acc": 0.31, "rougeL": 20.0}]
    todi += [_train(s, 1.0 - s / 1000, todi_alpha=0.6) for s in (30, 40)]  # resumed from the step-20 state
    todi += [{"split": "dev", "epoch": 1, "step": 40, "loss": 2.5, "acc": 0.33, "rougeL": 22.5},
             _train(50, 0.9, todi_alpha=0.7), {"split": "dev", "epoch": 2, "step": 50, "loss": "nan", "rougeL": 23.0}]
    fkl = [_train(s, 3.2 - s / 100) for s in (10, 20, 30)] + [{"split": "dev", "step": 30, "loss": 3.0, "rougeL": 19.0}]
    sft = [{"split": "train", "step": s, "loss": 2.0, "ce": 2.0, "acc": 0.4} for s in (10, 20)]
    return {
        "todi": _write_run(root / "todi", todi, {"criterion": "various_divergence", "kd_objective": "ToDi"}),
        "fkl": _write_run(root / "fkl", fkl, {"criterion": "various_divergence", "kd_objective": "forward_kl"}),
        "sft": _write_run(root / "sft", sft, {"criterion": "cross_entropy", "kd_objective": "forward_kl"}),
    }


def test_series_keep_last_record_per_step(sweep):
    run = read_run(sweep["todi"])
    assert run.label == "ToDi"
    loss = run.get("train", "loss")
    assert loss.steps == (10, 20, 30, 40, 50)
    assert loss.values == pytest.approx([2.9, 2.8, 0.97, 0.96, 0.9])  # 30 and 40 from after the resume
    assert run.get("train", "todi_alpha").values == pytest.approx([0.4, 0.4, 0.6, 0.6, 0.7])
    rouge = run.get("dev", "rougeL")
    assert rouge.steps == (40, 50) and rouge.values == (22.5, 23.0)
    dev_loss = run.get("dev", "loss")
    assert dev_loss.values[0] == 2.5 and dev_loss.values[1] != dev_loss.values[1]  # "nan" read as NaN
    assert run.get("dev", "acc").steps == (40,)  # the last dev record at step 50 has no acc
    assert run.get("train_epoch", "kd").values == (2.2,)
    assert run.get("train", "split") is None and run.get("train", "step") is None


def test_labels_from_args_then_directory(sweep, tmp_path):
    runs = load_runs([sweep["todi"], sweep["fkl"], sweep["sft"], sweep["todi"]])  # a repeat counts once
    assert [r.label for r in runs] == ["ToDi", "forward_kl", "SFT"]
    a = _write_run(tmp_path / "a" / "run", [_train(10, 1.0)])  # no args.json: named by directory
    b = _write_run(tmp_path / "b" / "run", [_train(10, 1.0)])
    assert [r.label for r in load_runs([a, b])] == ["run (a)", "run (b)"]


def test_parse_fields():
    assert parse_fields("loss, kd,dev:rougeL") == (("train", "loss"), ("train", "kd"), ("dev", "rougeL"))
    with pytest.raises(CurveError):
        parse_fields("loss,,dev:")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "code" / "report.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_png(sweep, tmp_path):
    out = tmp_path / "figs" / "sweep.png"
    proc = _cli("--curves", *(str(p) for p in sweep.values()), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > MIN_PNG_BYTES
    assert not [p for p in out.parent.iterdir() if p != out]  # no temporary file left behind
    assert "ToDi: " in proc.stdout and "best dev rougeL 23 at step 50" in proc.stdout


def test_default_output_and_fields(sweep, capsys):
    assert report_cli.main(["--curves", str(sweep["fkl"]), str(sweep["sft"]), "--fields", "ce,dev:rougeL"]) == 0
    assert (sweep["fkl"] / "curves.png").read_bytes().startswith(PNG_MAGIC)
    assert report_cli.main(["--curves", str(sweep["sft"] / "metrics.jsonl"), "--out-dir", str(sweep["sft"]),
                            "--name", "sft"]) == 0
    assert (sweep["sft"] / "sft.png").is_file()


def _error(capsys, *argv: str) -> str:
    assert report_cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_errors(sweep, tmp_path, capsys):
    root = sweep["todi"].parent
    assert "no such run directory" in _error(capsys, "--curves", str(tmp_path / "missing"))
    last = _error(capsys, "--curves", str(root))
    assert f"{root}: no metrics.jsonl" in last and "runs below it" in last
    bad = _write_run(tmp_path / "bad", [_train(10, 1.0)])
    with (bad / "metrics.jsonl").open("a") as f:
        f.write("{not json\n" + json.dumps(_train(20, 1.0)) + "\n")
    assert f"{bad / 'metrics.jsonl'} line 2: malformed JSON" in _error(capsys, "--curves", str(bad))
    nostep = _write_run(tmp_path / "nostep", [{"split": "train", "loss": 1.0}])
    assert "line 1: 'step' must be an integer" in _error(capsys, "--curves", str(nostep))
    empty = _write_run(tmp_path / "empty", [{"split": "train", "step": 10, "note": "text"}])
    assert "no numeric data to plot" in _error(capsys, "--curves", str(empty))
    assert "no numeric data to plot" in _error(capsys, "--curves", str(sweep["sft"]), "--fields", "kd")


def test_incomplete_last_line_is_skipped(tmp_path):
    """A live run may be caught mid-write: half a last line (no newline) is not an error."""
    run_dir = _write_run(tmp_path / "live", [_train(10, 1.0)])
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"split": "train", "st')
    run = read_run(run_dir)
    assert run.incomplete_last_line and run.get("train", "loss").steps == (10,)


def test_cli_error_exit_status(tmp_path):
    proc = _cli("--curves", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'missing'}: no such run directory"


def test_table_flags_need_curves(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        report_cli.main([str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert e.value.code == 2 and "--curves" in capsys.readouterr().err.strip().splitlines()[-1]


def test_adakd_ratio_is_a_default_panel_and_old_names_still_read(tmp_path):
    """AdaKD runs log adakd_ratio (r), adakd_tau_min, ...; runs written with the old doubled prefix
    (adakd_adakd_ratio) read as the same fields, so both plot r in the default panels."""
    from todi.evaluation.curves import panels

    new = _write_run(tmp_path / "new", [_train(s, 2.0, adakd_ratio=1 - s / 100, adakd_tau_min=0.8) for s in (10, 20)])
    old = _write_run(tmp_path / "old", [_train(s, 2.0, adakd_adakd_ratio=1 - s / 200) for s in (10, 20)])
    runs = load_runs([new, old])
    assert runs[0].get("train", "adakd_ratio").values == (0.9, 0.8)
    assert runs[1].get("train", "adakd_ratio").values == (0.95, 0.9)
    assert runs[1].get("train", "adakd_adakd_ratio") is None
    assert ("train", "adakd_ratio") in panels(runs)
    assert ("train", "adakd_ratio") not in panels([read_run(_write_run(tmp_path / "plain", [_train(10, 2.0)]))])
