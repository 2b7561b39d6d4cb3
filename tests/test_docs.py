"""The documentation site's API reference covers every public name (the site itself is built by ``.ci/run``)."""

import importlib
import importlib.util
import inspect
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def apipages():
    spec = importlib.util.spec_from_file_location("apipages", DOCS / "_ext" / "apipages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_module_has_a_page_with_every_name_of_its_all(apipages):
    pages, home = apipages.api_pages()
    for module_name in ("bayeskit", "bayeskit.inference", "bayeskit.models", "bayeskit.diagnostics",
                        "bayeskit.datasets", "bayeskit.health", "bayeskit.optim", "bayeskit.runner",
                        "bayeskit.inference.smc", "bayeskit.inference.fusion", "bayeskit.models.gp_sic"):
        assert module_name in pages, f"no API page for {module_name}"
    documented = set(home.values())
    for module_name, text in pages.items():
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if name.startswith("__"):
                continue
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                assert f"[`{name}`]({obj.__name__}.md)" in text, (module_name, name)
            elif f"{module_name}.{name}" in documented:
                assert f":: {module_name}.{name}\n" in text, (module_name, name)
            else:  # documented where it is shortest to import, linked from here
                assert f"- `{name}`: documented as" in text, (module_name, name)


def test_each_object_is_described_once_where_it_is_shortest_to_import(apipages):
    _, home = apipages.api_pages()
    import bayeskit
    from bayeskit.inference import SVGD
    from bayeskit.inference.smc import fit_ssm

    assert home[id(bayeskit.Posterior)] == "bayeskit.Posterior"
    assert home[id(SVGD)] == "bayeskit.inference.SVGD"
    assert home[id(fit_ssm)] == "bayeskit.inference.smc.fit_ssm"
    assert len(set(home.values())) == len(home)


def test_every_tutorial_is_in_the_tutorials_toctree():
    toctree = (DOCS / "tutorials" / "index.md").read_text()
    scripts = sorted(path.stem for path in (DOCS.parent / "tutorials").glob("[0-9]*.py"))
    listed = [line.strip() for line in toctree.splitlines() if line.strip()[:2].isdigit()]
    assert listed == scripts
