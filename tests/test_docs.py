"""The README and docs/ as a reader meets them: short README, no dead relative link, the test command CI runs."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _pages():
    yield os.path.join(REPO, "README.md")
    docs = os.path.join(REPO, "docs")
    for name in sorted(os.listdir(docs)):
        if name.endswith(".md"):
            yield os.path.join(docs, name)


def test_no_relative_link_in_the_readme_or_docs_is_dead():
    dead = []
    for page in _pages():
        with open(page) as f:
            text = f.read()
        for target in LINK.findall(text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(page), target))):
                dead.append(f"{os.path.relpath(page, REPO)} -> {target}")
    assert not dead, dead


def test_the_readme_is_short_and_holds_the_two_commands():
    with open(os.path.join(REPO, "README.md")) as f:
        lines = f.read().splitlines()
    assert len(lines) <= 250, len(lines)
    at = lines.index("<!-- test-command -->")
    assert lines[at + 2].startswith("python -m pytest -q") and lines[at + 2].endswith(" tests")  # what .ci/run reads
    assert any(line.startswith('pip install ".[test]" && apudae-tf attack') for line in lines)


def test_every_spec_section_the_code_cites_exists():
    with open(os.path.join(REPO, "docs", "spec.md")) as f:
        sections = {m for m in re.findall(r"^## (\d+)\.", f.read(), re.M)}
    cited = set()
    for folder in ("apudae_tf", "."):
        for name in os.listdir(os.path.join(REPO, folder)):
            if name.endswith(".py"):
                with open(os.path.join(REPO, folder, name)) as f:
                    cited |= set(re.findall(r"spec §(\d+)", f.read()))
    assert cited and cited <= sections, cited - sections


def test_the_readme_summary_is_what_the_committed_reports_say():
    # the README's table is printed by scripts/summary_table.py; a re-made report must not leave it stale
    import subprocess
    import sys

    table = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "summary_table.py")],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert table.count("\n") >= 2, table
    with open(os.path.join(REPO, "README.md")) as f:
        assert table in f.read(), "README's summary differs from `python scripts/summary_table.py`"


def test_compare_reports_lists_a_changed_number_but_not_a_changed_timing(tmp_path):
    import json
    import subprocess
    import sys

    old = {"command": "x", "n": 500, "pgd_accuracy": {"none": 0.0, "D": 0.93}, "seconds": 10}
    new = {"command": "y", "n": 500, "pgd_accuracy": {"none": 0.0, "D": 0.91}, "seconds": 99}
    for name, d in (("old.json", old), ("new.json", new)):
        (tmp_path / name).write_text(json.dumps(d))
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "compare_reports.py"), str(tmp_path / "old.json"),
                          str(tmp_path / "new.json"), "--json", str(tmp_path / "cmp.json")],
                         capture_output=True, text=True, check=True).stdout
    assert "2 of 3 cells agree" in out and "pgd_accuracy.D: 0.9300 -> 0.9100" in out
    assert [r["cell"] for r in json.loads((tmp_path / "cmp.json").read_text())["differ"]] == ["pgd_accuracy.D"]


def test_compare_reports_compares_a_tuning_sweep_setting_by_setting(tmp_path):
    import json
    import subprocess
    import sys

    def tune(pgd_b, gan_clean):
        row = {"clean": 0.9, "pgd": pgd_b, "ms_per_image": 3.0, "settings": {"n": 10, "alpha": 0.05, "seed": 0}}
        return {"criterion": "mean of clean and pgd accuracy", "undefended": {"clean": 0.99, "pgd": 0.0},
                "variants": {"B": {"settings": row["settings"], "val_clean": 0.9, "val_pgd": 0.93, "sweep": [row]}},
                "defense_gan": {"settings": {"steps": 25}, "val_clean": gan_clean, "val_pgd": 0.7, "sweep": []}}

    (tmp_path / "old.json").write_text(json.dumps(tune(0.94, 0.975)))
    (tmp_path / "new.json").write_text(json.dumps(tune(0.9433, 0.975)))
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "compare_reports.py"), str(tmp_path / "old.json"),
                          str(tmp_path / "new.json"), "--json", str(tmp_path / "cmp.json")],
                         capture_output=True, text=True, check=True).stdout
    differ = json.loads((tmp_path / "cmp.json").read_text())["differ"]
    assert [r["cell"] for r in differ] == ["B [alpha=0.05,n=10] pgd"], differ
    # undefended clean and pgd; each of B and Defense-GAN: its choice and its two scores; B's sweep row: 2
    assert "9 of 10 cells agree" in out, out


def test_remake_results_refuses_an_unknown_part_before_any_work(tmp_path):
    import subprocess

    out = subprocess.run(["bash", os.path.join(REPO, "scripts", "remake_results.sh"), str(tmp_path / "remake"), "tables",
                          "tabels"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: PART 'tabels' is not one of: tables tunes pipelines export defensegan "
                                  "checks"), out.stderr
    assert not (tmp_path / "remake").exists()  # nothing made before the check
