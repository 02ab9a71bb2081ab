from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_command.startswith("python3 -m venv .venv")
    assert ci_command in (ROOT / "README.md").read_text()


def test_readme_layout_names_every_module():
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```")[1]
    package = ROOT / "src" / "fdn"
    missing = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if path.name.startswith("_"):
            continue
        if path.parent != package:  # a subpackage: its folder, then the file's name
            if f"{path.parent.relative_to(ROOT).as_posix()}/" in layout and path.name in layout:
                continue
        elif relative in layout:
            continue
        missing.append(relative)
    assert not missing, f"README's Layout does not name {missing}"


def test_the_readme_python_examples_run(tmp_path, monkeypatch):
    # They must run as written, in seconds: a newcomer pastes them first.
    import re

    from fdn.pretrained import sample_image_paths

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    noisy, _ = sample_image_paths()
    (tmp_path / "photo.png").write_bytes(noisy.read_bytes())
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "model.safetensors").is_file()


def test_every_install_line_names_the_distribution_not_the_taken_fdn():
    # `fdn` on the package index is an unrelated project: `pip install 'fdn[tiff]'` would
    # install it. The distribution is fdn-denoise; the import and the command stay fdn.
    import re

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    from fdn._version import DISTRIBUTION

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION == "fdn-denoise"
    # An extra that names the taken distribution (dev = ["fdn[test]"]) installs that project.
    requirements = [r for extra in project["optional-dependencies"].values() for r in extra]
    requirements += project["dependencies"]
    assert not [r for r in requirements if re.match(r"fdn\b(?!-denoise)", r)]
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "src").rglob("*.py")]
    wrong = re.compile(r"pip install[^\n`]*?['\" ]fdn(\[|['\" `]|$)", re.MULTILINE)
    offenders = [
        f"{path.name}: {match.group(0)}"
        for path in files
        for match in wrong.finditer(path.read_text())
    ]
    assert not offenders
    assert f"pip install {DISTRIBUTION}" in (ROOT / "README.md").read_text()


def test_the_readme_lists_what_a_resumed_run_may_change():
    from fdn.config import RESUMABLE

    text = " ".join((ROOT / "README.md").read_text().split())
    listed = text.split("may change where and how fast it runs (", 1)[1].split(")", 1)[0]
    assert [key.strip(" `") for key in listed.split(",")] == list(RESUMABLE)
