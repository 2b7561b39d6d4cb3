"""Write the API reference: one page per public module, every name of its ``__all__`` on it.

A public module is one under ``bayeskit`` whose dotted path has no part
starting with ``_`` and that declares ``__all__`` (the command-line demo
modules are left to the CLI page).  Each object is documented once, on the
page of the shallowest module that exports it (``bayeskit.inference.SVGD``,
not ``bayeskit.inference.stein.engines.SVGD``); deeper pages list it as a
link, so Sphinx never sees the same object twice.
"""

import dataclasses
import importlib
import inspect
import pkgutil
from pathlib import Path

SKIPPED_PACKAGES = ("bayeskit.demo", "bayeskit.cli")


def public_modules(package="bayeskit"):
    """Dotted names of the public modules with an ``__all__``, shallowest first, then alphabetical."""
    root = importlib.import_module(package)
    names = [package] + [info.name for info in pkgutil.walk_packages(root.__path__, package + ".")]
    public = []
    for name in names:
        if any(part.startswith("_") for part in name.split(".")) or name.startswith(SKIPPED_PACKAGES):
            continue
        if hasattr(importlib.import_module(name), "__all__"):
            public.append(name)
    return sorted(public, key=lambda name: (name.count("."), name))


def _directive(obj):
    if inspect.isclass(obj):
        return "autoclass"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "autofunction"
    if inspect.ismodule(obj):
        return None
    return "autodata"


def _value(obj, limit=100):
    """A constant's value on one line: names for callables, truncated past ``limit`` characters."""
    if isinstance(obj, dict):
        items = (f"{key!r}: {getattr(value, '__name__', repr(value))}" for key, value in obj.items())
        text = "{" + ", ".join(items) + "}"
    else:
        text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _excluded_fields(cls):
    """``:exclude-members:`` for the fields of a dataclass or named tuple whose docstring has an Attributes
    section: napoleon documents them from it, and autodoc's ``:members:`` would document them again."""
    if "\nAttributes\n" not in "\n" + (inspect.getdoc(cls) or ""):
        return []
    if dataclasses.is_dataclass(cls):
        fields = [field.name for field in dataclasses.fields(cls)]
    else:
        fields = list(getattr(cls, "_fields", ()))
    return [f"   :exclude-members: {', '.join(fields)}"] if fields else []


def _first_line(obj):
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def api_pages(package="bayeskit"):
    """``{module: page text}`` (MyST markdown with autodoc directives) and the home of every documented object."""
    home = {}  # id(obj) -> "module.name" where it is documented
    pages = {}
    for module_name in public_modules(package):
        module = importlib.import_module(module_name)
        lines = [f"# `{module_name}`", ""]
        summary = _first_line(module)
        if summary:
            lines += [summary, ""]
        lines += ["```{eval-rst}", f".. module:: {module_name}", "```", ""]
        entries, links = [], []
        for name in module.__all__:
            if name.startswith("__"):
                continue
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                links.append(f"- [`{name}`]({obj.__name__}.md): {_first_line(obj)}")
                continue
            directive = _directive(obj)
            key = id(obj) if directive != "autodata" else (module_name, name)
            if key in home:
                links.append(f"- `{name}`: documented as {{py:obj}}`{home[key]}`")
                continue
            home[key] = f"{module_name}.{name}"
            if directive == "autodata":  # a constant: its value (autodoc would show its type's docstring)
                entries += ["```{eval-rst}", f".. py:data:: {module_name}.{name}", f"   :value: {_value(obj)}",
                            "```", ""]
                continue
            options = []
            if directive == "autoclass":
                options = ["   :members:", "   :show-inheritance:", *_excluded_fields(obj)]
            entries += ["```{eval-rst}", f".. {directive}:: {module_name}.{name}", *options, "```", ""]
        if links:
            lines += ["Also exported here:", "", *links, ""]
        pages[module_name] = "\n".join(lines + entries)
    return pages, home


def write_api_pages(out_dir, package="bayeskit"):
    """Write ``out_dir/<module>.md`` for every public module and an index grouped by package."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pages, _ = api_pages(package)
    for module_name, text in pages.items():
        path = out_dir / f"{module_name}.md"
        if not path.exists() or path.read_text() != text:  # unchanged pages keep Sphinx's cache
            path.write_text(text)
    index = ["# API reference", "",
             "Every public module of bayeskit, each name of its `__all__` on its page.  An object is described "
             "where it is shortest to import; the deeper modules that also export it link there.", "",
             "```{toctree}", ":maxdepth: 1", "", *pages, "```", ""]
    (out_dir / "index.md").write_text("\n".join(index))
    return pages


def setup(app):
    def generate(app):
        write_api_pages(Path(app.srcdir) / "api")
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True}
