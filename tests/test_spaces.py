"""The Hugging Face Space builds from the files as Spaces uses them: requirements.txt without the
repository, then app.py run from the repository folder with genlab not installed."""

import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import space_check  # noqa: E402


def test_requirements_txt_lists_the_dependencies_of_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    listed = [line for line in lines if line]
    assert "." not in listed  # Spaces installs the file before the repository is there
    as_set = lambda reqs: {(r.name.lower(), str(r.specifier)) for r in map(Requirement, reqs)}  # noqa: E731
    assert as_set(listed) == as_set(declared)


def test_spaces_front_matter_and_large_files():
    front = (ROOT / "README.md").read_text().split("---")[1]
    fields = dict(line.split(": ", 1) for line in front.strip().splitlines())
    assert fields["app_file"] == "app.py" and fields["sdk"] == "gradio" and fields["license"] == "apache-2.0"
    assert 0 < len(fields["short_description"]) <= 60  # the Hub's limit
    attributes = (ROOT / ".gitattributes").read_text()
    assert "*.safetensors filter=lfs" in attributes and "evals/reports/**/*.png filter=lfs" in attributes


def test_source_tree_entry_points_come_from_pyproject(monkeypatch):
    import importlib.metadata

    from genlab import plugins

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    found = {ep.name: ep.value for ep in plugins.source_tree_entry_points()}
    assert found == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["genlab"]


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A Python that has genlab's dependencies but not genlab: a venv whose site-packages links to
    this one's, less genlab's own distribution and editable-install hooks."""
    venv = tmp_path_factory.mktemp("space-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_paths()["purelib"])
    target = next((venv / "lib").glob("python*/site-packages"))
    for entry in site.iterdir():
        if entry.name.startswith(("genlab", "__editable__", "_genlab")) or entry.suffix == ".pth":
            continue
        (target / entry.name).symlink_to(entry)
    python = str(venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import gradio, torch; import genlab"], capture_output=True, text=True,
                           cwd=venv, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert "No module named 'genlab'" in probe.stderr  # the dependencies are there, genlab is not
    return python


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    """The repository's tracked files (as committed or edited), copied to a fresh folder."""
    copy = tmp_path_factory.mktemp("space-repo")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).write_bytes(source.read_bytes())
    return copy


@pytest.mark.slow
def test_app_py_runs_from_the_repository_folder_without_installing_genlab(bare_python, repo_copy):
    answer = space_check.check(repo_copy, bare_python, space_check.free_port())
    loaded = {row[1]: row[0] for row in answer["plugins"]["loaded"]}
    assert {m: loaded.get(m) for m in ("vae", "ddpm", "ldm", "ldm-autoencoder")} == {
        "vae": "vae", "ddpm": "ddpm", "ldm": "ldm", "ldm-autoencoder": "ldm"}  # registered by entry-point name
    assert answer["plugins"]["failed"] == []
    assert len(answer["gallery"]) == 2 and "2 samples, seed 0" in answer["caption"]
    assert "genlab eval" in answer["report"]  # the Report tab finds the committed reports in the folder
