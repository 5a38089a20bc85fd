"""Generate the API reference (Markdown) from the docstrings of the public names of `hermite` and `meanfield`.

    python docs/gen_api.py [OUT]            # default: docs/_build/api.md

Documented: the packages `hermite` and `meanfield` (their ``__all__``) and the submodules listed in
``MODULES`` that can be imported (``__all__``, or else every public function and class defined in the
module). For each name: its signature and its docstring verbatim (docstrings hold formulas such as
``c_k = E[f h_k]`` that Markdown would mangle, so they are fenced as text); for a class also its public
methods and properties. A module that fails to import is listed with the error instead of failing the run.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

PACKAGES = ("hermite", "meanfield")
MODULES = (
    "hermite",
    "meanfield",
    "meanfield.maps",
    "meanfield.measures",
    "meanfield.infinite",
    "meanfield.finite",
    "meanfield.fluctuations",
    "meanfield.fluctuation_rules",
    "meanfield.spread",
    "meanfield.layers",
    "meanfield.bias",
    "meanfield.rates",
    "meanfield.checks",
    "meanfield.layernorm",
    "meanfield.weightnorm",
    "meanfield.fisher",
    "meanfield.transformations",
    "meanfield.sweep",
    "meanfield.plot",
    "meanfield.cli",
)
DEFAULT_OUT = Path(__file__).resolve().parent / "_build" / "api.md"


def _anchor(text: str) -> str:
    """The GitHub-style anchor of a heading."""
    a = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return a.replace(" ", "-")


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _doc(obj) -> str:
    return inspect.getdoc(obj) or ""


def _fence(text: str, lang: str = "text") -> list[str]:
    if not text:
        return ["*(no docstring)*", ""]
    ticks = "````" if "```" in text else "```"
    return [f"{ticks}{lang}", text, ticks, ""]


def public_names(mod) -> list[str]:
    """``__all__`` if the module has one, else its public functions and classes defined in it."""
    names = getattr(mod, "__all__", None)
    if names is not None:
        return [n for n in names if hasattr(mod, n)]
    out = []
    for n, obj in vars(mod).items():
        if n.startswith("_"):
            continue
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", None) == mod.__name__:
            out.append(n)
    return out


def _members(cls) -> list[tuple[str, object]]:
    """Public methods and properties defined on the class itself (not inherited from object/builtins)."""
    out = []
    for n, obj in vars(cls).items():
        if n.startswith("_") and n not in ("__call__",):
            continue
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        if inspect.isfunction(obj) or isinstance(obj, property):
            out.append((n, obj))
    return out


def document_object(qual: str, obj) -> list[str]:
    lines = []
    if inspect.isclass(obj):
        lines += [f"### class `{qual}`", ""]
        lines += _fence(f"{qual.rsplit('.', 1)[-1]}{_signature(obj)}", "python")
        lines += _fence(_doc(obj))
        for n, m in _members(obj):
            if isinstance(m, property):
                lines += [f"#### property `{qual}.{n}`", ""]
                lines += _fence(_doc(m))
            else:
                lines += [f"#### `{qual}.{n}`", ""]
                lines += _fence(f"{n}{_signature(m)}", "python")
                lines += _fence(_doc(m))
    elif callable(obj):
        lines += [f"### `{qual}`", ""]
        lines += _fence(f"{qual.rsplit('.', 1)[-1]}{_signature(obj)}", "python")
        lines += _fence(_doc(obj))
    else:  # a constant
        r = repr(obj)
        lines += [f"### `{qual}`", "", f"Constant: `{r if len(r) < 300 else r[:300] + '...'}`", ""]
    return lines


def document_module(name: str) -> tuple[list[str], list[str]]:
    """(lines, names documented) for one module; an import failure is reported, not raised."""
    lines = [f"## `{name}`", ""]
    try:
        mod = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - a module being written must not stop the reference
        lines += [f"*Not importable here: {type(exc).__name__}: {exc}*", ""]
        return lines, []
    lines += _fence(_doc(mod))
    names = public_names(mod)
    for n in names:
        lines += document_object(f"{name}.{n}", getattr(mod, n))
    return lines, names


def generate(out=DEFAULT_OUT, modules=MODULES) -> Path:
    """Write the API reference to ``out`` (directories created) and return its path."""
    out = Path(out)
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:  # run from a checkout without installing
        sys.path.insert(0, str(root))
    body, toc = [], []
    for name in modules:
        lines, names = document_module(name)
        body += lines
        toc.append(f"- [`{name}`](#{_anchor(name)})" + (f": {len(names)} public names" if names else ""))
    head = ["# API reference", "",
            "Generated by `python docs/gen_api.py` from the docstrings; do not edit. Conventions: "
            "[conventions.md](../conventions.md); guide: [user_guide.md](../user_guide.md).", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(head + toc + [""] + body).rstrip() + "\n")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(DEFAULT_OUT), help="output Markdown file")
    args = ap.parse_args(argv)
    path = generate(args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
