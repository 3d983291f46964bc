"""scripts/bench/bench_loss.py: its cases come from the objective registry (plug-ins included), every
implementation it times computes the same loss, and a tiny CPU run writes its JSON (no timings asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _cases import CASES

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts/bench/bench_loss.py"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_loss", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PLUGIN = '''
from todi.objectives import Objective, Param, register


def terms(s, t, keep=None, *, gamma):
    return gamma * t.exp() * (t - s)


register(Objective("bench_scaled_fkl", terms, "gamma * KL(p || q)",
                   params=(Param("gamma", 1.0, low=0.0, flag="--bench-scaled-gamma"),), cases=({"gamma": 3.0},)))
'''


@pytest.fixture
def plugin(tmp_path):
    from todi.objectives import unregister

    path = tmp_path / "bench_plugin.py"
    path.write_text(PLUGIN)
    yield path
    unregister("bench_scaled_fkl", missing_ok=True)


def test_cases_are_the_registry_cases(bench):
    assert [(c.name, c.params) for c in bench.registry_cases(None, "all")] == CASES
    defaults = bench.registry_cases(None, "defaults")
    assert [(c.name, c.params) for c in defaults] == [(n, p) for n, p in CASES if not p]
    assert {"generalized_jsd", "ab_divergence"} <= {c.name for c in defaults}
    (gjsd,) = bench.registry_cases(["generalized_jsd"], "defaults")
    assert gjsd.full == {"beta": 0.5} and gjsd.label == "generalized_jsd"


def test_every_implementation_computes_the_reference(bench):
    """Official baseline (its objectives), chunked (at the default and a fixed chunk size): the
    reference's values and student gradient, for every registry case."""
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(7, 50, generator=g) * 3, torch.randn(7, 50, generator=g) * 3
    for case in bench.registry_cases(None, "all"):
        ref_value, ref_grad = bench._value_and_grad("reference", case, student, teacher)
        impls = [("chunked", None), ("chunked", 3)] + ([("official", None)] if case.name in bench.OFFICIAL else [])
        for impl, chunk in impls:
            leaf = student.clone().requires_grad_(True)
            value = bench.make_fn(impl, case, chunk)(leaf, teacher)
            value.sum().backward()
            tol = 1e-4 if impl == "official" else 1e-5  # the official JS has 1e-9 inside its logs
            assert torch.allclose(value, ref_value, rtol=1e-4, atol=tol), (case.label, impl, chunk)
            assert torch.allclose(leaf.grad, ref_grad, rtol=1e-3, atol=tol), (case.label, impl, chunk)


def test_tiny_cpu_run_writes_every_case(bench, plugin, tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--plugin", str(plugin), "--objectives", "gjsd,ToDi,bench_scaled_fkl", "--cases", "all",
                "--tokens", "8", "--vocab", "64", "--impls", "official,reference,chunked,triton", "--chunk-size", "2",
                "--warmup", "0", "--repeats", "1", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    labels = ["generalized_jsd", "generalized_jsd(beta=0.2)", "generalized_jsd(beta=0)", "ToDi", "ToDi(beta=0.5)",
              "ToDi(beta=4)", "bench_scaled_fkl", "bench_scaled_fkl(gamma=3)"]
    assert list(result["cases"]) == labels and result["plugins"] == [str(plugin)] and result["chunk_size"] == 2
    assert result["cases"]["generalized_jsd(beta=0)"]["runs_as"] == {"objective": "forward_kl", "params": {}}
    assert result["cases"]["bench_scaled_fkl"]["params"] == {"gamma": 1.0}
    rows = {(r["case"], r["impl"]): r for r in result["results"]}
    assert len(rows) == len(labels) * 4
    for label in labels:
        assert "ms" in rows[label, "reference"] and "ms" in rows[label, "chunked"], label
        assert rows[label, "chunked"]["chunk_size"] == 2
        assert rows[label, "triton"]["error"].startswith("needs CUDA")
        official = rows[label, "official"]
        assert ("ms" in official) == label.startswith("ToDi"), official
    printed = capsys.readouterr().out
    assert "speed-up vs official, else reference" in printed and "bench_scaled_fkl(gamma=3)" in printed


def test_unknown_objective_and_sweep_without_cuda_fail_cleanly(bench, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--objectives", "nonesuch", "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2 and "unknown divergence 'nonesuch'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="needs CUDA and triton"):
        bench.main(["--sweep", "--device", "cpu", "--objectives", "ToDi", "--tiny"])


def test_help_runs_as_a_script():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--cases" in result.stdout and "--plugin" in result.stdout
