"""The ``eos-pangaea`` command line: help, inspect, and a fresh install."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from eos_pangaea.cli import main
from tests.conftest import REPO_ROOT


def test_inspect_lists_routes(capsys):
    status = main(["inspect", "--bands", "optical=B2,B3,B4,B5", "--dataset", "DynamicEarthNet",
                   "--specialists", "eurosat,sen12ms-s2"])
    out = capsys.readouterr().out
    assert status == 0
    assert "eurosat          ir_r_g                 B5, B4, B3" in out
    assert "No route for: sen12ms-s2" in out


def test_inspect_reads_dataset_config(tmp_path, capsys):
    config = tmp_path / "xview2.yaml"
    config.write_text("dataset_name: xView2\nbands:\n  optical: [B4, B3, B2]\n")
    assert main(["inspect", "--dataset-config", str(config), "--specialists", "loveda"]) == 0
    assert "loveda           exact+rgb              B2, B3, B4" in capsys.readouterr().out


def test_inspect_error_names_the_bands(capsys):
    assert main(["inspect", "--bands", "optical=B5"]) == 1
    err = capsys.readouterr().err
    assert "No specialist can use this input" in err
    assert "B5->red_edge_1" in err


def test_inspect_rejects_malformed_bands(capsys):
    assert main(["inspect", "--bands", "B4,B3"]) == 1
    assert "--bands 'B4,B3' is invalid" in capsys.readouterr().err
    assert main(["inspect", "--bands", "optical=B2,,B3"]) == 1
    assert "no empty band name" in capsys.readouterr().err
    assert main(["inspect", "--bands", "optical=B4,B3,B2", "--bands", "optical=B8"]) == 1
    assert "modality 'optical' twice" in capsys.readouterr().err


def test_inspect_warns_on_unknown_dataset(capsys, caplog):
    assert main(["inspect", "--bands", "optical=B4,B3,B2", "--dataset", "NoSuchDataset",
                 "--specialists", "eurosat"]) == 0
    assert "'NoSuchDataset' has no entry in band_roles.yaml" in caplog.text


def test_missing_file_is_a_clean_error(capsys):
    assert main(["inspect", "--dataset-config", "/nonexistent/dataset.yaml"]) == 1
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_help_after_install_in_fresh_venv(tmp_path):
    # The environment borrows the installed torch and timm (system site packages)
    # but installs this package from a clean copy of the sources.
    setuptools = pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    if int(setuptools.__version__.split(".")[0]) < 68:
        pytest.skip(f"setuptools {setuptools.__version__} in {sys.executable} is older than the 68 that "
                    "pyproject.toml requires; run the tests from an environment with a newer setuptools")
    pytest.importorskip("wheel" if int(setuptools.__version__.split(".")[0]) < 70 else "setuptools",
                        reason="setuptools before 70 needs the wheel package to build wheels")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    source = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO_ROOT), str(source)], check=True)
    _copy_worktree(REPO_ROOT, source)
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Build the wheel with this interpreter's setuptools (the venv's bundled one
    # may be too old), then install only that wheel into the fresh environment.
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(source)], check=True, cwd=tmp_path, env=environment)
    wheel = next(wheels.glob("eos_pangaea-*.whl"))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, cwd=tmp_path, env=environment)
    result = subprocess.run([str(env_dir / "bin" / "eos-pangaea"), "--help"], capture_output=True, text=True,
                            cwd=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr
    assert "inspect" in result.stdout
    shipped = subprocess.run(
        [str(python), "-c", "import eos_pangaea, pathlib; p = pathlib.Path(eos_pangaea.__file__).parent; "
         "print((p / 'data' / 'weights_manifest.yaml').is_file(), 'site-packages' in str(p))"],
        capture_output=True, text=True, cwd=tmp_path, env=environment,
    )
    assert shipped.stdout.split() == ["True", "True"], shipped.stderr


def _copy_worktree(source: Path, target: Path) -> None:
    """Overlay uncommitted files so the test checks the sources as they are now."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=source, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        path = source / name
        if path.is_file() and not path.is_symlink():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(path.read_bytes())


def test_module_runs_as_script():
    result = subprocess.run([sys.executable, "-m", "eos_pangaea.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "eos-pangaea 0.1.0" in result.stdout
