"""The floors of the package (docs/architecture.md), as static tools see them.

`maest/` holds links to the folders at the top of the repository (maest/modeling -> ../modeling), so a tool that
reads the source without an install (grimp and import-linter here; IDEs, type checkers and import-graph drawings
the same way) finds every module under its real name. import-linter checks setup.cfg's two contracts: the floors
(the applications over training and inference, over the model, the front-end and the basics) and no circle between
sibling packages or modules at any depth. Both are shown to fail on a copy of the source with one wrong import.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _source_modules(root: Path) -> set[str]:
    """Every module of the package, named from the files on disk (the links followed, as Python imports them). The
    `evaluate` metric scripts' folders are not packages (no `__init__.py`): `evaluate` loads those files by path."""
    modules = set()
    for folder, subfolders, files in os.walk(root / "maest", followlinks=True):
        subfolders[:] = [name for name in subfolders if (Path(folder) / name / "__init__.py").is_file()]
        package = Path(folder).relative_to(root).parts
        modules |= {".".join(package + (name[:-3],)).removesuffix(".__init__") for name in files if name.endswith(".py")}
    return modules


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    # The source under `root` comes first on the path: the editable install's finder only answers what it misses.
    environment = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [str(LINT_IMPORTS), str(root / "setup.cfg"), "--no-cache"],
        cwd=root, env=environment, capture_output=True, text=True, timeout=300,
    )


def test_every_top_folder_is_linked_into_the_package():
    linked = {path.name for path in (REPOSITORY / "maest").iterdir() if path.is_symlink()}
    assert linked == {"modeling", "feature_extraction", "utils", "inference", "training", "model_cards", "benchmarks"}
    for name in linked:
        assert (REPOSITORY / "maest" / name).resolve() == REPOSITORY / name


def test_static_import_graph_sees_every_module():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("maest", cache_dir=None)
    assert graph.modules == _source_modules(REPOSITORY)
    # Imports between folders are edges of the graph (the reason for the links), function-level imports too.
    assert graph.direct_import_exists(importer="maest.inference.job", imported="maest.modeling")
    assert graph.direct_import_exists(importer="maest.cli.collection", imported="maest.inference.job")
    assert graph.direct_import_exists(importer="maest.inference.backends", imported="maest.inference.model")


def test_the_floors_and_no_circle_contracts_are_kept():
    result = _lint_imports(REPOSITORY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "importer, line, contract",
    [
        # The front-end reaching up to the model cards: a lower floor importing a higher one (and no circle).
        ("feature_extraction/audio.py", "import maest.model_cards", "Floors"),
        # model.py importing backends, which imports model: a circle inside inference.
        ("inference/model.py", "import maest.inference.backends", "No circles"),
    ],
)
def test_a_wrong_import_breaks_a_contract(tmp_path, importer, line, contract):
    copy = tmp_path / "source"
    copy.mkdir()
    for name in ["setup.cfg", "maest", "utils", "modeling", "feature_extraction", "model_cards", "inference", "training", "benchmarks"]:
        source = REPOSITORY / name
        if source.is_dir():
            shutil.copytree(source, copy / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, copy / name)
    target = copy / importer
    target.write_text(target.read_text(encoding="utf-8") + f"\n\ndef _wrong():\n    {line}\n", encoding="utf-8")
    result = _lint_imports(copy)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "1 kept, 1 broken" in result.stdout
    assert f"{contract}" in result.stdout.split("Broken contracts")[-1]


def test_the_drawing_in_the_architecture_page_is_the_import_graph():
    """docs/architecture.md draws every arrow between the subpackages of `maest` (the package root and `__main__`
    aside), each subpackage on its floor; the drawing is compared with the graph of the code, so it cannot go stale."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("maest", cache_dir=None)
    arrows = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            importer, target = module.split(".")[1:2], imported.split(".")[1:2]
            if importer and target and importer != target and importer != ["__main__"]:
                arrows.add((importer[0], target[0]))
    page = (REPOSITORY / "docs" / "architecture.md").read_text(encoding="utf-8")
    drawing = page.split("<!-- import graph: begin -->")[1].split("<!-- import graph: end -->")[0]
    drawn = {tuple(line.split(" --> ")) for line in map(str.strip, drawing.splitlines()) if " --> " in line}
    assert drawn == arrows, f"missing from the drawing: {sorted(arrows - drawn)}; not in the code: {sorted(drawn - arrows)}"
    # Each subpackage sits in one floor's box, and the boxes are in the order of setup.cfg's layers contract.
    boxes = [block.split("\n    end")[0].splitlines()[1:] for block in drawing.split("subgraph ")[1:]]
    placed = [[name.strip() for name in box] for box in boxes]
    assert sorted(name for box in placed for name in box) == sorted({name for arrow in arrows for name in arrow})
    floor = {name: position for position, box in enumerate(placed) for name in box}
    assert all(floor[importer] <= floor[imported] for importer, imported in arrows)  # arrows point down or across


def test_a_checkout_without_symbolic_links_says_so_on_import(tmp_path):
    """git without symbolic links (core.symlinks=false) writes each link as a small file holding its target."""
    package = tmp_path / "maest"
    shutil.copytree(REPOSITORY / "maest", package, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for link in [path for path in package.iterdir() if path.is_symlink()]:
        target = os.readlink(link)
        link.unlink()
        link.write_text(target)
    environment = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", "import maest"], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "ImportError: maest: this checkout has a file where the link maest/utils -> ../utils should be" in result.stderr
