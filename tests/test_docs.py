"""Facts the docs state that the code decides: they must say what the code does."""
import re

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
