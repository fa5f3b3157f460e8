"""The GPU machine's one call (bench/device/run.py), proven on the CPU: its dry run from the repository
on toy-width models, its time budget, and the wheel check that decides what travels."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "device"))

import wheels  # noqa: E402

import gpu  # noqa: E402

MODES = ("inpaint+cn", "inpaint", "img2img", "inpaint+2cn+ip")  # run.py's order for sd15: the target first


def test_cpu_dry_run_writes_a_figure_or_a_reason_for_every_mode(tmp_path):
    """What `python bench/device/run.py --device cpu --tiny` leaves under --out: the table, the
    figures and the log, every mode measured on both sides (no wheels here: CI has none)."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "bench/device/run.py", "--device", "cpu", "--tiny", "--out", str(out),
                           "--wheels", str(tmp_path / "no-wheels")], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["sd15-figures.json", "sd15-log.txt", "sd15-table.txt"]
    figures = json.loads((out / "sd15-figures.json").read_text())
    assert figures["complete"] is True and figures["family"] == "sd15" and figures["size"] == 64
    assert [row["mode"] for row in figures["rows"]] == list(MODES)
    for row in figures["rows"]:
        if row["skipped"]:  # a slow shared CPU may spend the budget: then it must say so
            assert row["skipped"].startswith("skipped: ")
            continue
        for side in ("reference", "easel"):
            numbers = row[side]
            assert numbers["it_s"] > 0 and numbers["s_per_image"] > 0 and numbers["warmup_s"] > 0, (row["mode"], side)
        assert 0 <= row["easel"]["overhead"] < 1 and math.isfinite(row["ratio_it_s"])
        assert row["easel"]["compile_s"] >= 0
    assert figures["rows"][0]["skipped"] is None  # the first mode always runs
    assert figures["rows"][0]["easel"]["compile_s"] > 0  # regional compile traced its blocks in the first job
    assert figures["compile"] == "regional" and figures["steps"] == 4
    assert {target["met"] for target in figures["targets"]} == {None}  # a dry run meets or misses nothing
    table = (out / "sd15-table.txt").read_text()
    assert all(f"\n{mode} " in table for mode in MODES) and "compile" in table
    assert "models     ready" in (out / "sd15-log.txt").read_text()
    # The bench's import path needs none of the optional heavy packages the GPU machine lacks.
    assert {"diffusers", "websockets"} <= set(figures["imported"])
    assert not {"controlnet-aux", "controlnet_aux", "spandrel", "timm"} & set(figures["imported"])


def test_flux_cpu_dry_run_writes_a_bf16_and_a_gguf_row(tmp_path):
    """`run.py --family flux --flux-quant Q8_0 --tiny --device cpu`: the bf16 row, then the same row on a
    GGUF-quantised transformer written and loaded by Easel's GGUF loader (issue #16)."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "bench/device/run.py", "--family", "flux", "--flux-quant", "Q8_0",
                           "--device", "cpu", "--tiny", "--out", str(out), "--wheels", str(tmp_path / "no-wheels")],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["flux-figures.json", "flux-log.txt", "flux-table.txt"]
    figures = json.loads((out / "flux-figures.json").read_text())
    assert figures["complete"] is True and [row["row"] for row in figures["rows"]] == ["flux fill bf16",
                                                                                         "flux fill Q8_0"]
    bf16, q8 = figures["rows"]
    assert bf16["quant"] == {} and 0 < q8["quant"]["weight_bytes"] < q8["quant"]["file_bytes"]
    for row in figures["rows"]:
        for side in ("reference", "easel"):
            assert row[side]["s_per_image"] > 0 and row[side]["it_s"] > 0, (row["row"], side)
    assert "GGUF Q8_0" in (out / "flux-table.txt").read_text()
    assert "gguf" in figures["imported"]


def test_budget_runs_the_first_mode_then_skips_what_no_longer_fits():
    budget = gpu.Budget(deadline=100.0, tail_s=10.0)
    assert budget.skip_reason("inpaint+cn", now=0.0) is None  # nothing measured yet: run it
    budget.record("reference", "inpaint+cn", 14.0)
    budget.record("easel", "inpaint+cn", 28.0)
    assert budget.estimate("easel", "inpaint") == pytest.approx(20.0)  # scaled by the modes' step costs
    assert budget.skip_reason("inpaint", now=50.0) is None  # 10 + 20 s of the 40 s left
    reason = budget.skip_reason("inpaint+2cn+ip", now=50.0)  # 19 + 38 s: no
    assert reason.startswith("skipped: estimated 57 s") and "40 s left" in reason
    assert budget.skip_reason("inpaint", now=95.0) == "skipped: the time budget is spent"
    assert gpu.Budget(deadline=None).skip_reason("inpaint", now=1e9) is None


def test_a_skipped_mode_is_in_the_table_and_the_figures():
    run = gpu.FamilyRun("sd15", 512, 20, 3, "cuda (test)", ["device     cuda (test)"])
    figures = gpu.Figures(seconds=[0.5], rates=[40.0], warmup=3.0, server_run=[0.49])
    spent = "skipped: the time budget is spent"
    run.rows = [gpu.Row("inpaint+cn", figures, figures), gpu.Row("img2img", skipped=spent)]
    data = run.as_json()
    assert data["rows"][1] == {"mode": "img2img", "skipped": "skipped: the time budget is spent"}
    assert data["rows"][0]["ratio_it_s"] == 1.0 and data["rows"][0]["easel"]["first_job_extra_s"] == 2.5
    ratio, rate, overhead, memory = data["targets"]
    assert ratio["target"].endswith("reference it/s >= 1.5") and ratio["met"] is False  # 1.0x at the target's size
    assert rate["target"].endswith("easel it/s >= 45") and (rate["value"], rate["met"]) == (40.0, False)
    assert overhead["value"] == pytest.approx(0.02) and overhead["met"] is True
    assert memory["value"] is None and memory["met"] is None  # no peak on a CPU
    assert "img2img          skipped: the time budget is spent" in run.table()
    json.dumps(data, allow_nan=False)  # NaN (no peak on a CPU, no server time) written as null


def fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    metadata = "".join(f"Requires-Dist: {line}\n" for line in requires)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\n"
                                                                  f"Version: {version}\n{metadata}")
    return path


def test_wheel_check_names_requirements_the_gpu_machine_would_lack(tmp_path):
    fine = fake_wheel(tmp_path, "diffusers", "9.0", [
        "huggingface-hub>=1.32", "numpy", "importlib_metadata", "websockets", "timm; extra == 'training'",
        "tomli; python_version < '3.11'"])
    carried = fake_wheel(tmp_path, "websockets", "17.0", [])
    assert wheels.unmet([fine, carried]) == []  # on the image, carried, unused on 3.12, or not for it
    bad = fake_wheel(tmp_path, "extra_thing", "1.0", ["huggingface-hub>=2", "left-pad"])
    problems = wheels.unmet([fine, carried, bad])
    assert len(problems) == 2
    assert "huggingface-hub>=2: the GPU machine would have 1.33.0" in problems[0]
    assert "left-pad: not on the GPU image" in problems[1]


def test_a_failing_mode_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    """On the GPU machine a mode may run out of memory; the call must still return the other modes."""
    from backend.fixtures import full_size

    root = full_size.write_full_size_model(tmp_path, ("sd15",), log=lambda line: None, toy=True)
    measure = gpu.measure_reference

    def out_of_memory_on_inpaint(root, family, mode, *args):
        if mode == "inpaint":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        return measure(root, family, mode, *args)

    monkeypatch.setattr(gpu, "measure_reference", out_of_memory_on_inpaint)
    device, easel_dtype, reference_dtype = gpu.devices(root, "cpu", None)
    rows = []
    run = gpu.measure_family(root, "sd15", device=device, easel_dtype=easel_dtype, reference_dtype=reference_dtype,
                             size=64, steps=4, runs=1, modes=("inpaint", "img2img"), log=lambda line: None,
                             on_row=lambda run: rows.append(len(run.rows)))
    failed, measured = run.rows
    assert failed.skipped.startswith("failed after ")
    assert failed.skipped.endswith("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert measured.measured and measured.easel.median(measured.easel.rates) > 0
    assert rows == [0, 1, 2]  # the figures were handed out once set up and after each mode
    assert "inpaint          failed after" in run.table()
