"""scripts/offline_plots.py: `dvc plots show` with the built template writes a page that loads nothing from a
network (DVC's own page loads vega from a CDN, blank offline): the libraries are inlined, DVC's plot calls sit in
`{plot_divs}`, and a library's `</script` cannot end its tag early. The npm download itself is not run here."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("offline_plots", REPO / "scripts" / "offline_plots.py")
offline_plots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(offline_plots)

FAKE = {"vega": "window.vega = 'fake vega';", "vega-lite": "window.vl = '</script>';",
        "vega-embed": "window.vegaEmbed = function () {};"}


def _dvc(root: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout


def test_plots_show_with_the_template_loads_nothing_from_a_network(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    _dvc(root, "init", "--no-scm", "-q")
    (root / "acc.json").write_text(json.dumps([{"variant": "a", "accuracy": 50.0}, {"variant": "b", "accuracy": 62.5}]))
    (root / "dvc.yaml").write_text("plots:\n  - acc.json:\n      x: accuracy\n      y: variant\n")
    template = root / ".dvc" / offline_plots.TEMPLATE
    template.parent.mkdir(parents=True, exist_ok=True)
    template.write_text(offline_plots.build_template(FAKE))

    _dvc(root, "plots", "show", "-o", "default")
    assert "cdn.jsdelivr.net" in (root / "default" / "index.html").read_text()  # DVC's page: blank offline
    _dvc(root, "config", "--local", "plots.html_template", offline_plots.TEMPLATE)  # what the script sets
    _dvc(root, "plots", "show", "-o", "offline")
    page = (root / "offline" / "index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page) and "http" not in page.split("<body>")[0]
    for code in ("window.vega = 'fake vega';", "window.vl = '<\\/script>';", "window.vegaEmbed = function () {};"):
        assert code in page
    body = page.split("<body>")[1]
    assert "vegaEmbed('#" in body and '"accuracy": 62.5' in body  # DVC's plot, with its data, in {plot_divs}


def test_the_packages_are_the_versions_dvc_render_loads_from_its_cdn():
    from dvc_render.vega import VegaRenderer

    for name, version in offline_plots.PACKAGES.items():
        pinned = re.search(rf"npm/{name}@([\d.]+)", VegaRenderer.SCRIPTS).group(1)
        assert version == pinned or (name, pinned, version) == ("vega", "5.20.2", "5.21.0")  # see PACKAGES
