"""The docs: the generated API reference, the names and configs the Markdown pages mention, the examples."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def load_gen_api():
    spec = importlib.util.spec_from_file_location("gen_api", DOCS / "gen_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gen_api_writes_the_reference(tmp_path, capsys):
    gen = load_gen_api()
    out = tmp_path / "sub" / "api.md"
    assert gen.main([str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    text = out.read_text()
    assert text.startswith("# API reference")
    for name in ("hermite.coefficients", "hermite.kernel", "hermite.activation", "hermite.exact_coefficients",
                 "hermite.transform", "meanfield.propagate", "meanfield.mlp", "meanfield.Network",
                 "meanfield.Trajectory", "meanfield.Trajectory.isometry_gap", "meanfield.isometry_gap",
                 "meanfield.sweep.run_sweep", "meanfield.sweep.Sweep", "meanfield.plot.depth_curve",
                 "meanfield.plot.theory_vs_simulation", "meanfield.finite.simulate"):
        assert f"`{name}`" in text, name
    # the docstring text itself, and the signatures
    assert "orthonormal" in text and "run_sweep(sweep" in text
    for optional, name in (("meanfield.maps", "chi1"), ("meanfield.rates", "beta0"), ("meanfield.bias", "gamma")):
        try:
            importlib.import_module(optional)
        except ImportError:
            continue
        assert f"`{optional}.{name}`" in text
    assert "Not importable" not in text


def test_gen_api_reports_a_broken_module_instead_of_failing(tmp_path):
    gen = load_gen_api()
    path = gen.generate(tmp_path / "api.md", modules=("hermite", "meanfield.no_such_module"))
    text = path.read_text()
    assert "`hermite.kernel`" in text and "Not importable here: ModuleNotFoundError" in text


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            if not hasattr(obj, p):
                return False
            obj = getattr(obj, p)
        return True
    return False


@pytest.mark.parametrize("page", ["conventions.md", "user_guide.md"])
def test_names_in_the_guides_exist(page):
    text = (DOCS / page).read_text()
    names = set(re.findall(r"\b(?:hermite|meanfield)(?:\.[A-Za-z_]\w*)+", text))
    names = {n.rstrip(".") for n in names if not n.endswith((".md", ".py", ".toml"))}
    assert len(names) >= 5
    missing = sorted(n for n in names if not _resolve(n))
    assert not missing, missing


def test_the_config_in_the_user_guide_and_the_example_config_are_valid(tmp_path):
    from meanfield.cli import _check_figures, _load_config
    from meanfield.sweep import Sweep

    snippet = re.search(r"```toml\n(.*?)```", (DOCS / "user_guide.md").read_text(), re.S).group(1)
    (tmp_path / "guide.toml").write_text(snippet)
    for path in (tmp_path / "guide.toml", ROOT / "examples" / "width_sweep.toml"):
        cfg = _load_config(str(path))
        sweep = Sweep.from_dict(cfg["sweep"])
        assert len(sweep.points()) >= 8
        assert _check_figures(cfg["figures"], sweep.measures)


def test_kernel_example_runs(capsys):
    spec = importlib.util.spec_from_file_location("kernel_example", ROOT / "examples" / "kernel_custom_activation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main()
    out = capsys.readouterr().out
    assert "clipped_leaky" in out and "Mehler" in out
    # the series converges to the kernel away from |rho| = 1 (last column: K = 640)
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s+-?0\.50\s", line)]
    assert rows and all(float(r[-1]) < 1e-12 for r in rows)


def test_the_layer_extension_example_in_the_user_guide_runs():
    """The user guide's complete example of a new layer type runs, and both engines agree on it."""
    text = (DOCS / "user_guide.md").read_text()
    block = re.search(r"### Adding a layer type.*?```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "user_guide.md", "exec"), namespace)  # noqa: S102 - our own documentation
    mf, sim = namespace["mf"], namespace["sim"]
    se = sim.gram.std(axis=0, ddof=1) / 4.0
    assert np.all(np.abs(sim.gram.mean(axis=0) - mf.gram) <= 5 * se + 4.0 / 1024)
    assert any(cls.__name__ == "ScaleShift" for cls in namespace["meanfield"].layer_types())
