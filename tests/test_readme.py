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
