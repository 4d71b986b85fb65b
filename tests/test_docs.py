"""Facts the docs state that the code decides: they must say what the code does."""
import re

import pytest

from conftest import ROOT


def test_failures_md_gives_the_ddict_time_limit_the_code_uses():
    from plumbing import ddict_io
    text = (ROOT / "docs" / "failures.md").read_text()
    limits = re.findall(r"DDict operation gives up after (\d+) s", text)
    assert limits == [str(ddict_io.DDICT_TIMEOUT_BASE_S)]


def test_polaris_md_says_how_the_batch_job_starts_script_8():
    script = (ROOT / "9_submit_multinode.sh").read_text()
    [default] = re.findall(r"DRAGON_LAUNCH=\$\{DRAGON_LAUNCH:-(\w+)\}", script)
    text = " ".join((ROOT / "docs" / "polaris.md").read_text().split())
    assert f"script 8 started with `{default}`" in text


def test_the_readme_names_the_debian_packages_the_tests_install():
    installer = (ROOT / "cluster" / "install_packages.sh").read_text()
    packages = set()
    for spec in re.findall(r'^\s+\[\w+\]="([^|]+)\|', installer, re.M):
        packages.update(spec.split())
    readme = (ROOT / "README.md").read_text()
    assert packages and all(f"`{p}`" in readme for p in packages), packages


def test_the_readme_shows_simulate_and_simple_cnn_as_common_py_has_them():
    """Each `<!-- excerpt: common.NAME -->` block of the README is NAME's source in common.py."""
    import ast
    import textwrap
    source = (ROOT / "common.py").read_text()
    definitions = {node.name: textwrap.dedent(ast.get_source_segment(source, node, padded=True))
                   for node in ast.walk(ast.parse(source))
                   if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    excerpts = re.findall(r"<!-- excerpt: common\.(\w+) -->\n```python\n(.*?)\n```\n",
                          (ROOT / "README.md").read_text(), re.S)
    assert sorted(name for name, _ in excerpts) == ["SimpleCNN", "simulate"]
    for name, code in excerpts:
        assert code == definitions[name], f"README's {name} differs from common.py's"


def test_the_readme_reads_in_about_ten_minutes():
    assert len((ROOT / "README.md").read_bytes()) <= 15_000


def test_the_readmes_sample_and_observations_are_report_py_of_its_records():
    """The README's sample table and observations are `report.py --readme` of the records in
    figures/ (one job's): regenerating them changes nothing."""
    import report
    readme = (ROOT / "README.md").read_text()
    records = report.load_records([str(ROOT / "figures" / "laptop-records.jsonl")])
    assert report.fill_readme(readme, records) == readme


def test_the_soak_table_of_the_reliability_notes_is_soak_py_of_its_json():
    """docs/dev/reliability.md's soak table is `benchmarks/soak.py --table` of the JSON files
    in docs/dev/data, as printed."""
    import subprocess
    import sys
    runs = sorted(str(p) for p in (ROOT / "docs" / "dev" / "data").glob("soak-*.json"))
    table = subprocess.run([sys.executable, ROOT / "benchmarks" / "soak.py", "--table", *runs],
                           capture_output=True, text=True, check=True).stdout.strip()
    notes = (ROOT / "docs" / "dev" / "reliability.md").read_text()
    assert f"<!-- soak:begin -->\n{table}\n<!-- soak:end -->" in notes


MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_of_the_docs_leads_somewhere(page):
    """Relative links name a file of the repository, and an anchor a heading of that file."""
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue                                    # http(s), mailto
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page.name}: {target}"


def _commands(page) -> list[list[str]]:
    """The commands in a page's ```bash blocks, split into words (comments dropped)."""
    import shlex
    found = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                found.append(shlex.split(line.replace("$USER", "user"), comments=True))
    return found


def _help(script: str) -> str:
    import subprocess
    import sys
    return subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT).stdout


def test_the_readmes_commands_use_scripts_and_flags_that_exist():
    """Every `python SCRIPT --flag` of the README names a script of the repository and flags
    its --help lists; every setting given to the main job is one of its settings."""
    helps = {}
    job = (ROOT / "9_submit_multinode.sh").read_text()
    for words in _commands(ROOT / "README.md"):
        for i, word in enumerate(words):
            if word.endswith(".py") and words[i - 1:i] == ["python"]:
                assert (ROOT / word).exists(), word
                helps.setdefault(word, _help(word))
                for flag in (w.split("=")[0] for w in words[i + 1:] if w.startswith("--")):
                    assert flag in helps[word], f"{word} has no {flag}"
            if word == "9_submit_multinode.sh":
                settings = [w.split("=")[0] for w in words[:i] if "=" in w]
                settings += [part.split("=")[0] for w, nxt in zip(words, words[1:])
                             if w == "-v" for part in nxt.split(",")]
                for name in settings:
                    assert f"export {name}=" in job, f"9_submit_multinode.sh has no {name}"
