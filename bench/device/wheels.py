"""The wheels the GPU machine lacks for ``bench/device/run.py``, downloaded here into bench/device/wheels/.

The GPU machine reaches no package registry, so what its Python (3.12, x86-64 Linux) lacks travels
with the working tree as wheels (at most 64 MiB in all, the repository included). Of the bench's
import path only diffusers and websockets are missing there: controlnet-aux (with OpenCV, timm,
scikit-image ...), spandrel and the LaMa fill are imported only by jobs that use them, which the
bench does not. The versions are the ones installed where this script runs (the project's tested
ones).

    python bench/device/wheels.py              # download, check the requirements, print the size
    python bench/device/wheels.py --check      # and install them offline into a clean target
    python bench/device/wheels.py --image-venv /tmp/easel-image312   # ... and import them there

It fails when the wheels (with the repository's tracked files) pass the size limit, or when a
wheel requires a package that is neither on the machine's image (``image.py``) nor carried, or a
version of it the image does not have. ``--check`` installs the wheels offline into an empty folder
with a Python 3.12 (``--python``; default pyenv's 3.12 or ``python3.12`` on PATH) and imports them
from there; importing diffusers needs its own requirements (numpy, Pillow, huggingface-hub ...),
which the GPU image has, so give ``--python`` a 3.12 virtual environment with the image's versions
of them to import it (a bare 3.12 installs it and says what the import lacks). Without any 3.12 it
asks this Python's pip to install for 3.12 (``--python-version 3.12 --only-binary=:all:``), which
proves the install but imports nothing.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

sys.path.insert(0, str(Path(__file__).resolve().parent))
import image  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / "bench" / "device" / "wheels"
PACKAGES = ("diffusers", "websockets", "gguf")  # what the bench imports that the image lacks (gguf: --flux-quant)
IMPORTS = {"diffusers": "diffusers", "websockets": "websockets"}  # distribution -> module to import
# Required in the metadata but never imported on the GPU machine's Python, so not carried (the
# wheels install with --no-deps).
UNUSED = {"importlib-metadata": "diffusers imports the standard library's importlib.metadata on Python >= 3.8"}
LIMIT = 64 * 2**20  # what may travel with one call: the working tree, carried folders included
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
# Where Requires-Dist markers are evaluated: the GPU machine's Python.
MARKERS = {"python_version": image.PYTHON, "python_full_version": image.PYTHON + ".3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def pins() -> list[str]:
    """``name==version`` for each package, at the version installed here."""
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            sys.exit(f"{name} is not installed in {sys.executable}: run this with the project's Python")
    return found


def download(folder: Path, wanted: list[str]) -> list[Path]:
    """The wheels of ``wanted`` for CPython 3.12 on x86-64 Linux, alone in ``folder`` (stale ones removed:
    two versions of one package would stop the install)."""
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                    "--only-binary=:all:", "--python-version", image.PYTHON, "--implementation", "cp", *platforms,
                    "-d", str(folder), *wanted], check=True)
    keep = {(canonicalize_name(pin.split("==")[0]), Version(pin.split("==")[1])) for pin in wanted}
    wheels = []
    for path in sorted(folder.iterdir()):
        name, version, *_ = parse_wheel_filename(path.name) if path.suffix == ".whl" else (None, None)
        if (name, version) in keep:
            wheels.append(path)
        else:
            path.unlink()
    return wheels


def requirements(wheel: Path) -> list[Requirement]:
    """The wheel's Requires-Dist that apply on the GPU machine (extras left out)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        headers = Parser().parsestr(archive.read(metadata).decode())
    found = []
    for line in headers.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(MARKERS):
            found.append(requirement)
    return found


def unmet(wheels: list[Path]) -> list[str]:
    """What the wheels require that the GPU machine will not have: neither on its image (in a
    version the requirement accepts, where the version is known) nor among the wheels."""
    carried = {canonicalize_name(parse_wheel_filename(w.name)[0]): parse_wheel_filename(w.name)[1] for w in wheels}
    problems = []
    for wheel in wheels:
        for requirement in requirements(wheel):
            name = canonicalize_name(requirement.name)
            if name in UNUSED:
                continue
            version = carried.get(name) or (Version(image.VERSIONS[name]) if name in image.VERSIONS else None)
            if name not in carried and name not in image.PACKAGES:
                problems.append(f"{wheel.name} needs {requirement}: not on the GPU image, add it to PACKAGES")
            elif version is not None and not requirement.specifier.contains(version, prereleases=True):
                problems.append(f"{wheel.name} needs {requirement}: the GPU machine would have {version}")
    return problems


def travelling_bytes() -> int:
    """The repository's tracked files: they travel with every call too."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / name.decode()).stat().st_size for name in files if name and (ROOT / name.decode()).is_file())


def python312(given: str | None) -> str | None:
    """A Python 3.12 that runs (pyenv's shims exist but may refuse a version not selected)."""
    pyenv = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))
    candidates = [given] if given else [*pyenv, shutil.which("python3.12")]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == "True":
            return candidate
    return None


def image_venv(folder: Path, python: str | None) -> str:
    """A Python 3.12 virtual environment at ``folder`` holding diffusers' requirements at the GPU image's
    versions where known (no torch: its 3.12 wheels here bring gigabytes of CUDA libraries); made once."""
    interpreter = folder / "bin" / "python"
    if not interpreter.exists():
        if python is None:
            sys.exit("--image-venv needs a Python 3.12 (--python)")
        subprocess.run([python, "-m", "venv", str(folder)], check=True)
        pinned = [f"{name}=={image.VERSIONS[name]}" for name in ("huggingface-hub", "numpy", "safetensors")]
        subprocess.run([str(interpreter), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pinned,
                        "pillow", "regex", "requests", "filelock", "packaging"], check=True)
    return str(interpreter)


def check_install(wheels: list[Path], python: str | None) -> None:
    """Install the wheels offline into an empty folder, as run.py does there, and import them."""
    target = tempfile.mkdtemp(prefix="easel-wheel-check-")
    try:
        offline = ["-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps",
                   "--no-compile", "--no-cache-dir", "--target", target, *map(str, wheels)]
        if python:
            subprocess.run([python, *offline], check=True)
            modules = [IMPORTS[canonicalize_name(parse_wheel_filename(w.name)[0])] for w in wheels]
            code = ("import importlib, sys; sys.path.insert(0, sys.argv[1])\n"
                    "for name in sys.argv[2:]:\n"
                    "    try:\n"
                    "        module = importlib.import_module(name)\n"
                    "    except ModuleNotFoundError as error:\n"
                    "        print(f'  {name}: installed, not imported: it needs {error.name}, which this Python '\n"
                    "              'lacks (give --python one with the GPU image packages)')\n"
                    "        continue\n"
                    "    assert module.__file__.startswith(sys.argv[1]), module.__file__\n"
                    "    print('  imported', name, getattr(module, '__version__', ''), 'from the target, python',\n"
                    "          sys.version.split()[0])")
            subprocess.run([python, "-c", code, target, *modules], check=True)
        else:
            print("  no Python 3.12 here: installing for 3.12 with this pip (no import)")
            subprocess.run([sys.executable, *offline, "--python-version", image.PYTHON, "--only-binary=:all:"],
                           check=True)
        installed = sorted(p.name for p in Path(target).iterdir() if p.name.endswith(".dist-info"))
        print(f"  offline install into an empty folder: {', '.join(installed)}")
    finally:
        shutil.rmtree(target, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dir", type=Path, default=WHEELS, help=f"where the wheels go (default {WHEELS})")
    parser.add_argument("--check", action="store_true", help="install them offline into a clean target and import")
    parser.add_argument("--python", help="a Python 3.12 for --check (default: pyenv's, or python3.12 on PATH)")
    parser.add_argument("--image-venv", type=Path,
                        help="--check with a 3.12 virtual environment here holding diffusers' requirements at the "
                             "GPU image's versions (made from --python the first time)")
    args = parser.parse_args(argv)

    wheels = download(args.dir, pins())
    size, tree = sum(w.stat().st_size for w in wheels), travelling_bytes()
    for wheel in wheels:
        print(f"  {wheel.name}  {wheel.stat().st_size / 2**20:.2f} MiB")
    print(f"wheels {size / 2**20:.2f} MiB + tracked files {tree / 2**20:.2f} MiB = {(size + tree) / 2**20:.2f} MiB "
          f"of the {LIMIT / 2**20:.0f} MiB that may travel")
    problems = unmet(wheels)
    if size + tree > LIMIT:
        problems.append(f"{(size + tree) / 2**20:.1f} MiB would travel: over the {LIMIT / 2**20:.0f} MiB limit")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print("requirements: every one is on the GPU image (in an accepted version where known) or carried")
    if args.check or args.image_venv:
        python = python312(args.python)
        check_install(wheels, image_venv(args.image_venv, python) if args.image_venv else python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
