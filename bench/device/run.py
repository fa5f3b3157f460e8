"""GPU figures in one call: ``bench/gpu.py`` for one family on the bare GPU machine, inside a time budget.

On the GPU machine (the device tool's ``run``; one call per family, SD1.5 first; make the wheels here
first with ``python bench/device/wheels.py``):

    run(command="python3 bench/device/run.py --family sd15 --out $OUT", carry=["bench/device/wheels"], timeout_s=540)

and ``--family sdxl`` for the second call. ``--family flux`` is the flux row instead (``gpu.run_flux``:
Flux Fill at 1024², 28 steps, a random full-size architecture built on the GPU, nothing written but the
GGUF files), in bf16 and then once per ``--flux-quant`` (issue #16: GGUF Q8_0 / Q4_0 transformers loaded by
Easel's loader), each row's peak memory and seconds; it needs the ``gguf`` wheel for the quantised rows:

    run(command="python3 bench/device/run.py --family flux --flux-quant Q8_0 --flux-quant Q4_0 --out $OUT",
        carry=["bench/device/wheels"], timeout_s=540)

The script

1. installs the carried wheels (``bench/device/wheels/``) offline into a temporary folder and puts it
   and the repository first on ``sys.path`` (nothing is installed into the machine's Python);
2. writes the family's full-size random models to ``--model-dir`` (UNet, 9-channel inpaint UNet, VAE,
   text encoders, one ControlNet, the IP-Adapter with its image encoder; about 6 GB for sd15, 18 GB
   for sdxl), drawing the random numbers on the GPU;
3. runs ``bench/gpu.py``'s ``measure_family`` on the modes in the order of the targets (the target
   mode first), with Easel's compile regional by default (``--compile whole`` for the full one),
   skipping the modes that no longer fit in ``--budget-s`` seconds counted from its start;
4. writes ``FAMILY-table.txt``, ``FAMILY-figures.json`` and ``FAMILY-log.txt`` under ``--out`` after
   every mode, so a run stopped by its time limit still returns what it measured.

CPU dry run of the same path (toy-width models, a compile that traces but builds no kernels, ~30 s):

    python bench/device/run.py --device cpu --tiny --out /tmp/easel-dry
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / "bench" / "device" / "wheels"
FAMILIES = ("sd15", "sdxl", "flux")
# The target's mode first: what a budget cuts is the least wanted.
ORDER = {"sd15": ("inpaint+cn", "inpaint", "img2img", "inpaint+2cn+ip"),
         "sdxl": ("inpaint", "inpaint+cn", "img2img", "inpaint+2cn+ip")}
# 6 minutes: a mode that overruns its estimate still ends the call inside 9, and a session's 15 minutes
# of device time hold the machine's start and both families' calls.
BUDGET_S = 360.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--family", choices=FAMILIES, default="sd15")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"),
                        help="folder for the table, the figures and the log (default: $OUT)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S,
                        help="seconds for the whole script, install and model writing included "
                             f"(default {BUDGET_S:.0f})")
    parser.add_argument("--tiny", action="store_true",
                        help="toy-width models at 64 px, 4 steps, 1 run, compile traced only: a dry run of the path")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--model-dir", type=Path,
                        help="where the models are written (reused if there); default /tmp/easel-full, "
                             "with --tiny a temporary folder")
    parser.add_argument("--mode", action="append", choices=ORDER["sd15"],
                        help="modes to measure (default: all four, target first)")
    parser.add_argument("--steps", type=int, help="default 20 (--tiny: 4)")
    parser.add_argument("--runs", type=int, help="timed runs per case (default 3; --tiny: 1)")
    parser.add_argument("--compile", choices=("regional", "whole", "off", "auto"), default="regional",
                        help="Easel's torch.compile (default regional: the repeated transformer blocks only)")
    parser.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune",
                                                   "max-autotune-no-cudagraphs"),
                        help="torch.compile's mode for Easel (default: the config's, \"default\")")
    parser.add_argument("--compile-backend", choices=("inductor", "eager"),
                        help="default inductor (--tiny: eager, which traces like Inductor but builds no kernels)")
    parser.add_argument("--wheels", type=Path, default=WHEELS, help=f"wheels to install first (default {WHEELS})")
    parser.add_argument("--flux-quant", action="append", choices=("Q8_0", "Q5_0", "Q4_0"), default=[],
                        help="--family flux: a row with a GGUF-quantised transformer after the bf16 one (repeatable)")
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("--out is required where $OUT is not set")
    args.steps = args.steps or (4 if args.tiny else 20)
    args.runs = args.runs or (1 if args.tiny else 3)
    args.compile_backend = args.compile_backend or ("eager" if args.tiny else "inductor")
    args.mode = tuple(args.mode or ORDER.get(args.family, ()))
    return args


class Tee:
    """A stream (stdout, stderr) to the terminal and to the log file under --out."""

    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text):
        self.stream.write(text)
        self.file.write(text)
        return len(text)

    def flush(self):
        self.stream.flush()
        self.file.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding ...: the terminal's
        return getattr(self.stream, name)


def install_wheels(folder: Path) -> tuple[list[str], float]:
    """pip-install every wheel in ``folder`` offline into a temporary target, first on sys.path.
    ``--no-deps``: with ``--target`` pip ignores what is installed, so it would want every
    requirement (numpy, pillow ...) again; the wheels are exactly what the machine lacks
    (``wheels.py`` checks their requirements against the image)."""
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if not wheels:
        print(f"wheels     none in {folder}: using the installed packages", flush=True)
        return [], 0.0
    foreign = [wheel.name for wheel in wheels if not fits_this_python(wheel)]
    if foreign:  # made for the GPU machine's Python; here the installed packages serve
        print(f"wheels     {', '.join(foreign)} not for this Python ({platform.python_version()}): "
              "using the installed packages", flush=True)
        return [], 0.0
    start = time.perf_counter()
    target = tempfile.mkdtemp(prefix="easel-wheels-")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--disable-pip-version-check", "--target", target, *map(str, wheels)],
                   check=True)
    sys.path.insert(0, target)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [target, str(ROOT), os.environ.get("PYTHONPATH")]))
    seconds = time.perf_counter() - start
    print(f"wheels     {', '.join(w.name for w in wheels)} into {target} ({seconds:.1f} s)", flush=True)
    return [w.name for w in wheels], seconds


def fits_this_python(wheel: Path) -> bool:
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    return not parse_wheel_filename(wheel.name)[3].isdisjoint(sys_tags())


def imported_distributions() -> list[str]:
    """The installed distributions whose modules this process imported (stdlib and the repo's own
    modules left out): what the GPU machine must have or be carried."""
    providers = importlib.metadata.packages_distributions()
    names = {name.split(".")[0] for name in list(sys.modules)}
    found = set()
    for name in names - set(sys.stdlib_module_names):
        found.update(providers.get(name, ()))
    return sorted(found - {"easel-bridge"})


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    family = args.family
    for stream in (sys.stdout, sys.stderr):  # line by line: a run stopped at its limit keeps its last lines
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    log = open(args.out / f"{family}-log.txt", "w", buffering=1)
    sys.stdout, sys.stderr = Tee(sys.stdout, log), Tee(sys.stderr, log)
    wheels, install_s = install_wheels(args.wheels)
    for path in (ROOT, ROOT / "bench"):
        sys.path.insert(0, str(path))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing can be fetched there
    try:
        import torch  # noqa: E402

        import gpu  # noqa: E402  (after the wheels: it imports diffusers)
        from backend.engine import speed  # noqa: E402
        from backend.fixtures import full_size  # noqa: E402
    except ImportError as error:
        print(f"cannot import {error.name}: add it to bench/device/wheels.py's PACKAGES and rebuild the wheels",
              file=sys.stderr)
        return 2
    gpu.quiet_libraries()
    speed.COMPILE_BACKEND = args.compile_backend

    if family == "flux":
        return run_flux(args, gpu, torch, wheels, install_s, argv)
    temporary = args.model_dir is None and args.tiny
    model_dir = args.model_dir or (Path(tempfile.mkdtemp(prefix="easel-tiny-")) if args.tiny
                                   else Path("/tmp/easel-full"))
    try:
        start = time.perf_counter()
        if not (model_dir / family / "model_index.json").is_file():
            build_on = "cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
            print(f"models     writing {'toy-width' if args.tiny else 'full-size'} {family} to {model_dir} "
                  f"(random numbers on the {build_on})", flush=True)
            full_size.write_full_size_model(model_dir, (family,), log=lambda line: None, device=build_on,
                                            toy=args.tiny)
        full_size.write_config(model_dir.resolve(), (family,))
        write_s = time.perf_counter() - start
        print(f"models     ready in {write_s:.1f} s", flush=True)

        device, easel_dtype, reference_dtype = gpu.devices(model_dir, args.device, None)
        size = 64 if args.tiny else None  # the toy models' native size
        facts = {"family": family, "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
                 "python": platform.python_version(), "wheels": wheels, "install_s": install_s, "write_s": write_s,
                 "budget_s": args.budget_s, "tiny": args.tiny, "compile": args.compile,
                 "compile_mode": args.compile_mode, "compile_backend": args.compile_backend,
                 "versions": {name: version(name) for name in ("torch", "diffusers", "transformers",
                                                               "huggingface-hub", "accelerate", "websockets")}}

        performance = dict(gpu.COMPILE[args.compile],
                           **({"compile_mode": args.compile_mode} if args.compile_mode else {}))

        def save(run, complete: bool = False) -> None:
            figures = dict(facts, **run.as_json(), elapsed_s=time.perf_counter() - STARTED, complete=complete)
            if complete:
                figures["imported"] = imported_distributions()
            (args.out / f"{family}-figures.json").write_text(json.dumps(figures, indent=2) + "\n")
            (args.out / f"{family}-table.txt").write_text(run.table())

        run = gpu.measure_family(model_dir, family, device=device, easel_dtype=easel_dtype,
                                 reference_dtype=reference_dtype, size=size, steps=args.steps, runs=args.runs,
                                 modes=args.mode, performance=performance,
                                 deadline=STARTED + args.budget_s, on_row=save)
        save(run, complete=True)
        print(run.table(), flush=True)
        print(f"done in {time.perf_counter() - STARTED:.0f} s (budget {args.budget_s:.0f} s); figures in {args.out}",
              flush=True)
    finally:
        if temporary:
            shutil.rmtree(model_dir, ignore_errors=True)
    return 0


def run_flux(args, gpu, torch, wheels, install_s, argv) -> int:
    """The flux rows: bf16, then each ``--flux-quant``, while the budget lasts (a row is skipped, and says
    so, when the slowest row so far would not fit in what is left); figures and table after every row."""
    import types

    device, easel_dtype, _ = gpu.devices(Path("/nonexistent"), args.device, None)
    facts = {"family": "flux", "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
             "python": platform.python_version(), "wheels": wheels, "install_s": install_s, "budget_s": args.budget_s,
             "tiny": args.tiny, "device": str(device),
             "versions": {name: version(name) for name in ("torch", "diffusers", "transformers", "accelerate",
                                                           "gguf")}}
    rows, table, slowest = [], [], 0.0
    for quant in (None, *args.flux_quant):
        left = args.budget_s - (time.perf_counter() - STARTED)
        if rows and slowest > left:
            rows.append({"row": f"flux fill {quant or 'bf16'}",
                         "skipped": f"skipped: the slowest row took {slowest:.0f} s, {left:.0f} s left"})
            table.append(f"flux fill {quant or 'bf16'}: {rows[-1]['skipped']}")
            continue
        start = time.perf_counter()
        row_args = types.SimpleNamespace(flux_scale="tiny" if args.tiny else "full", size=64 if args.tiny else None,
                                         flux_steps=4 if args.tiny else 28, runs=args.runs, flux_quant=quant)
        row = gpu.run_flux(row_args, device, easel_dtype)
        row["row_s"], row["skipped"] = time.perf_counter() - start, None
        slowest = max(slowest, row["row_s"])
        rows.append(row)
        table.append(f"{row['row']}: {row['weights']}; reference {row['reference']['s_per_image']:.2f} s/image, "
                     f"peak {gpu.gib(row['reference']['peak_bytes'])}; easel {row['easel']['s_per_image']:.2f} "
                     f"s/image, peak {gpu.gib(row['easel']['peak_bytes'])}")
        figures = dict(facts, rows=rows, elapsed_s=time.perf_counter() - STARTED, complete=False)
        (args.out / "flux-figures.json").write_text(json.dumps(figures, indent=2) + "\n")
        (args.out / "flux-table.txt").write_text("\n".join(table) + "\n")
    figures = dict(facts, rows=rows, elapsed_s=time.perf_counter() - STARTED, complete=True,
                   imported=imported_distributions())
    (args.out / "flux-figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    (args.out / "flux-table.txt").write_text("\n".join(table) + "\n")
    print("\n".join(table), flush=True)
    print(f"done in {time.perf_counter() - STARTED:.0f} s (budget {args.budget_s:.0f} s); figures in {args.out}",
          flush=True)
    return 0


def version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
