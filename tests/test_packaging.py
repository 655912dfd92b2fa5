"""Packaging: nothing in the checkout shadows another distribution's import name, and the package
(Triton kernels, configs, assets) installs and imports from a built wheel.

Run from a clone, `python -m ...` and pytest put the repository root (and the folders pytest or a
script adds: tests/, benchmarks/, scripts/, examples/) at the front of ``sys.path``, so a regular
package or a module there with the name of an installed distribution's top-level package wins over
site-packages (transformers 5 imports Hugging Face's ``kernels``; a root ``kernels/`` broke it).
A folder without ``__init__.py`` is only a namespace portion and never wins over a real package.
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS_ON_SYS_PATH = ("", "tests", "benchmarks", "scripts", "examples")
OWN_NAMES = {"progrpo_fast"}


def importable_names(folder: Path) -> set[str]:
    """Top-level names a ``sys.path`` entry ``folder`` provides that can shadow: modules and
    regular packages (namespace folders always lose to a regular package elsewhere)."""
    names = set()
    for entry in folder.iterdir():
        if entry.is_file() and entry.suffix == ".py":
            names.add(entry.stem)
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            names.add(entry.name)
    return names


def test_no_checkout_name_shadows_an_installed_distribution():
    installed = importlib.metadata.packages_distributions()
    clashes = {
        f"{folder or '.'}/{name}": installed[name]
        for folder in FOLDERS_ON_SYS_PATH
        if (ROOT / folder).is_dir()
        for name in importable_names(ROOT / folder) - OWN_NAMES
        if name in installed
    }
    assert not clashes, f"these checkout names shadow installed distributions' packages: {clashes}"


def test_the_repository_root_never_hides_a_third_party_package():
    """From the root, as `python -m progrpo_fast` and pytest run: the libraries that import
    Hugging Face's kernels package import, and `kernels` (where installed) is site-packages'."""
    code = (
        "import importlib.util, sys\n"
        "import transformers.activations\n"
        "import diffusers.pipelines.wan.pipeline_wan\n"
        "import progrpo_fast.kernels\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print(spec.origin if spec else '')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    origin = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    try:
        installed = importlib.metadata.distribution("kernels").locate_file("kernels/__init__.py")
    except importlib.metadata.PackageNotFoundError:
        return
    assert origin and Path(origin).resolve() == Path(installed).resolve(), f"`import kernels` resolved to {origin}, not {installed}"


def site_packages_of_this_python() -> list[str]:
    return [p for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]} if os.path.isdir(p)]


def test_a_built_wheel_installs_and_imports_in_a_fresh_venv(tmp_path):
    """`pip wheel` (pure-Python: the extension is tested elsewhere) -> a new venv -> import, from a
    folder outside the checkout. The new venv sees this one's dependencies through a path entry, so
    nothing is downloaded, and never this checkout's editable install."""
    env = {**os.environ, "PROGRPO_FAST_NO_EXTENSION": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("progrpo_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("compact", "keyed_noise", "ovf_select", "pool_latents", "prune_select", "variance_select"):
        assert f"progrpo_fast/kernels/{module}.py" in names
    assert any(n.startswith("progrpo_fast/configs/") and n.endswith(".yaml") for n in names)
    assert any(n.startswith("progrpo_fast/assets/") for n in names)
    assert not any(n.split("/")[0] in ("kernels", "tests", "benchmarks", "scripts") for n in names), "a checkout folder went into the wheel"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", site, str(wheel)],
                   check=True, capture_output=True, env=env, timeout=300)
    # dependencies only: a path listed in a .pth file is not itself scanned for .pth files, so this
    # environment's editable-install hook stays out of the new venv
    Path(site, "deps_of_the_test_env.pth").write_text("\n".join(site_packages_of_this_python()) + "\n")
    code = (
        "import progrpo_fast, progrpo_fast.kernels as K, progrpo_fast.ops\n"
        "from progrpo_fast.train.config import load_config; load_config('shapes')\n"
        "print(progrpo_fast.__file__); print(K.__file__); print(sorted(K.__all__))\n"
    )
    run = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert run.returncode == 0, run.stderr[-3000:]
    package_file, kernels_file, exports = run.stdout.strip().splitlines()[-3:]
    assert Path(package_file).is_relative_to(site) and Path(kernels_file).is_relative_to(site), run.stdout
    assert "prune_select" in exports
