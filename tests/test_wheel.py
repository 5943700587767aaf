"""The package as users install it: the sdist and the wheel built from it, installed (not editable) into a fresh
virtual environment, run every command and read their data files.

`make test` installs the source in editable mode, which maps whole folders and so hides a package or data file that
the wheel leaves out (the wheel once lacked `maest.cli`: `maest` could not start). One sdist, one wheel, one virtual
environment for the whole module. The environment gets its dependencies from the project's environment through a
`.pth` line, added after the wheel is installed; `maest` itself must come from the wheel (checked: `maest.__file__`).
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parent.parent


def package_files(suffixes=(".py",)) -> set[str]:
    """The package's files with these suffixes, as paths inside the installed package: `maest/` with the links it
    holds to the top-level folders followed (maest/modeling -> ../modeling), as the build follows them."""
    files = set()
    for folder, subfolders, names in os.walk(REPOSITORY / "maest", followlinks=True):
        subfolders[:] = [name for name in subfolders if name != "__pycache__"]
        relative = Path(folder).relative_to(REPOSITORY).parts
        files |= {"/".join((*relative, name)) for name in names if name.endswith(suffixes)}
    return files


def run(command, environment, **options) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, **options)


@pytest.fixture(scope="module")
def distributions(tmp_path_factory):
    """The sdist, and the wheel `python -m build` builds from it (as pip does from PyPI)."""
    output = tmp_path_factory.mktemp("dist")
    built = run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(output), str(REPOSITORY)],
        dict(os.environ),
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "would be ignored" not in built.stdout + built.stderr  # setuptools: a data folder that is not a package
    (sdist,) = output.glob("maest-*.tar.gz")
    (wheel,) = output.glob("maest-*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def installed(distributions, tmp_path_factory):
    """A fresh virtual environment with the wheel installed: its python, its bin folder, the environment variables to
    run it with, its site-packages."""
    _, wheel = distributions
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    environment = {
        key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    environment.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{environment.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(venv.parent / "hf_home"),
        MAEST_CACHE=str(venv.parent / "maest_cache"),
    )
    # pip runs from the project's environment against the new interpreter (which has no pip of its own).
    install = run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        environment,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    # Only now the dependencies: the project's site-packages, after the new environment's own (a `.pth` path is
    # appended to sys.path, and the `.pth` files inside it, such as the editable install's finder, are not run).
    site_packages = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             environment).stdout.strip())
    (site_packages / "project_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python, venv / "bin", environment, site_packages


def test_sdist_holds_what_building_needs(distributions):
    sdist, _ = distributions
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    missing = {"README.md", "setup.cfg", "pyproject.toml", "docs/design.md"} - names
    # The package's sources with the links resolved: the sdist holds real folders, as the wheel does.
    missing |= package_files((".py", ".txt", ".yaml")) - names
    assert not missing, f"{sdist.name} lacks {sorted(missing)}"


def test_wheel_holds_every_module(distributions):
    _, wheel = distributions
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = package_files() - names
    assert not missing, f"{wheel.name} lacks {sorted(missing)}"
    assert not [name for name in names if "__pycache__" in name or name.startswith(("tests/", "docs/"))]


def test_installed_package_is_the_wheel_and_has_its_data(installed, small_model_dir, tmp_path):
    """The installed package (not the editable source) imports, and its data files work: the Discogs label names,
    the pre-training recipe, the `evaluate` metric scripts (known values: see below), the model card templates."""
    from conftest import SMALL_MODEL_LABELS

    python, _, environment, site_packages = installed
    shutil.copytree(small_model_dir, tmp_path / "model")
    check = textwrap.dedent(
        """
        import json, maest
        from pathlib import Path
        from maest.model_cards import write_model_card
        from maest.modeling.label_names import discogs_label_names
        from maest.training.config import PretrainConfig
        from maest.training.evaluation.metrics import load_metric

        recipe = PretrainConfig.from_file(Path(maest.__file__).parent / "training" / "pretrain-maest-30s.yaml",
                                          {"train_data": "some/dataset"})
        # Label 0: positives scored 0.9 and 0.1, negatives 0.8 and 0.2: ROC-AUC 2/4, AP (1/1 + 2/4) / 2.
        # Label 1: ranked perfectly: 1 and 1.
        references = [[1, 0], [0, 1], [1, 0], [0, 1]]
        scores = [[0.9, 0.1], [0.8, 0.9], [0.1, 0.2], [0.2, 0.8]]
        metrics = {name: load_metric(name).compute(references=references, prediction_scores=scores)
                   for name in ("macro_roc_auc", "macro_average_precision")}
        print(json.dumps({
            "file": maest.__file__,
            "labels": {name: len(discogs_label_names(name)) for name in ("discogs400", "discogs519")},
            "recipe": [recipe.learning_rate, recipe.epochs, recipe.model_preset],
            "roc_auc": metrics["macro_roc_auc"]["roc_auc"],
            "average_precision": metrics["macro_average_precision"]["average_precision"],
            "card": write_model_card("model").read_text(encoding="utf-8"),
        }))
        """
    )
    result = run([str(python), "-c", check], environment, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(facts["file"]).is_relative_to(site_packages), facts["file"]
    assert facts["labels"] == {"discogs400": 400, "discogs519": 519}
    assert facts["recipe"] == [2e-5, 130, "maest-30s"]
    assert facts["roc_auc"] == pytest.approx((0.5 + 1.0) / 2)
    assert facts["average_precision"] == pytest.approx((0.75 + 1.0) / 2)
    card = facts["card"]
    assert "audio classification with 7 labels" in card and ", ".join(SMALL_MODEL_LABELS) in card
    assert "## License" in card and "## Citation" in card  # the templates the card's template includes
    assert "{%" not in card and "{{" not in card
    installed_modules = {
        "/".join(path.relative_to(site_packages).parts) for path in (site_packages / "maest").rglob("*.py")
    }
    assert not package_files() - installed_modules


def test_every_command_starts(installed, tmp_path):
    """`maest --help`, `python -m maest --help`, and the help of every subcommand the installed parser has (those
    in one process: each is `maest.cli.main([name, "--help"])`, what the `maest` script runs)."""
    python, bin_folder, environment, _ = installed
    helps = textwrap.dedent(
        """
        import argparse, contextlib, io, json, maest.cli

        parser = maest.cli.build_parser()
        (commands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        helps = {}
        for name in commands.choices:
            with contextlib.redirect_stdout(io.StringIO()) as text:
                try:
                    status = maest.cli.main([name, "--help"])
                except SystemExit as exit:
                    status = exit.code
            helps[name] = [status, text.getvalue()]
        print(json.dumps(helps))
        """
    )
    result = run([str(python), "-c", helps], environment, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    helps = json.loads(result.stdout)
    assert {"tag", "embed", "convert", "card", "pretrain", "probe", "app", "bench"} <= set(helps)
    for name, (status, text) in helps.items():
        assert status == 0 and text.startswith(f"usage: maest {name}"), (name, status, text[:300])
    for command in ([str(bin_folder / "maest"), "--help"], [str(python), "-m", "maest", "--help"]):
        result = run(command, environment, cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.startswith("usage: maest"), (command, result.stderr[-3000:])
        assert all(name in result.stdout for name in helps)


def test_tag_runs(installed, small_model_dir, tmp_path):
    """The installed `maest tag` gives the source tree's scores on a small model."""
    from conftest import synthetic_music, write_audio
    from maest.inference import tag

    _, bin_folder, environment, _ = installed
    song = write_audio(tmp_path / "song.wav", synthetic_music(7.0, seed=3))
    result = run(
        [str(bin_folder / "maest"), "tag", str(song), "--model", str(small_model_dir), "--device", "cpu",
         "--format", "json", "--top-k", "3", "-q"],
        environment, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MISSING" not in result.stdout + result.stderr
    (track,) = json.loads(result.stdout)
    expected = tag([str(song)], str(small_model_dir), device="cpu", num_workers=0, progress=False).top(3)[0]
    assert [item["label"] for item in track["tags"]] == [label for label, _ in expected]
    assert [item["score"] for item in track["tags"]] == pytest.approx([score for _, score in expected], abs=2e-6)
