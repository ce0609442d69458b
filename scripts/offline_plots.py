"""Self-contained `dvc plots show` pages (issue 12): DVC's default page loads vega, vega-lite and vega-embed from a
CDN, so offline (or behind a proxy) the plots are blank. This builds an HTML template with the three libraries
inlined, from npm's packages at the versions dvc_render's page names, and makes it this checkout's default:

    python scripts/offline_plots.py          # npm install into .dvc/tmp/vega, write .dvc/tmp/offline-plots.html,
                                             # dvc config --local plots.html_template tmp/offline-plots.html
    dvc plots show                           # dvc_plots/index.html now opens without a network

Why a built template and not a committed one: the three minified libraries are ~800 KB, too big to keep in git,
and no installed Python package ships them (altair, dvc_render and mlflow load them from a CDN too). The template
and the libraries live under .dvc/tmp (ignored), and the setting goes to .dvc/config.local (not committed), so
a checkout that has not run this keeps DVC's default page instead of a path to a missing file.

The template has no `{scripts}` placeholder (where DVC puts its CDN <script> tags), only the inlined libraries
and `{plot_divs}` (where DVC puts each plot's vega-embed call).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

# The versions dvc_render's default page loads (dvc_render.vega.VegaRenderer.SCRIPTS), so plots render the same,
# except vega 5.21.0 for 5.20.2: vega-lite 5.2.0 declares vega ^5.21.0 as its peer, which npm enforces.
PACKAGES = {"vega": "5.21.0", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}
BUILDS = {"vega": "build/vega.min.js", "vega-lite": "build/vega-lite.min.js", "vega-embed": "build/vega-embed.min.js"}
TEMPLATE = "tmp/offline-plots.html"  # relative to .dvc/, as DVC reads `plots.html_template`

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    <title>DVC Plot</title>
{scripts}
    <style>table {{ border-spacing: 15px; }}</style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def inline_script(name: str, js: str) -> str:
    """One library as an inline <script>; a `</script` inside the code would end the tag early, so it is escaped
    the way JavaScript reads it unchanged (`<\\/script`)."""
    safe = js.replace("</script", "<\\/script")
    return f"    <script>/* {name} */\n{safe}\n    </script>"


def build_template(libraries: dict[str, str]) -> str:
    """The page with each library ({name: its code}) inlined in order, and DVC's `{plot_divs}` placeholder."""
    return PAGE.format(scripts="\n".join(inline_script(n, js) for n, js in libraries.items()))


def npm_install(prefix: Path) -> dict[str, str]:
    """Install the pinned packages under `prefix` (npm registry) and return {name: minified build}."""
    prefix.mkdir(parents=True, exist_ok=True)
    specs = [f"{n}@{v}" for n, v in PACKAGES.items()]
    subprocess.run(["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(prefix), *specs],
                   check=True)
    return {n: (prefix / "node_modules" / n / BUILDS[n]).read_text(encoding="utf-8") for n in PACKAGES}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/offline_plots.py", description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="the DVC project")
    p.add_argument("--no-config", action="store_true", help="write the template, leave .dvc/config.local alone")
    args = p.parse_args(argv)
    dvc_dir = args.root / ".dvc"
    if not dvc_dir.is_dir():
        p.error(f"{args.root} is not a DVC project (no .dvc folder)")
    template = dvc_dir / TEMPLATE
    template.parent.mkdir(parents=True, exist_ok=True)
    tmp = template.with_suffix(".html.tmp")
    tmp.write_text(build_template(npm_install(dvc_dir / "tmp" / "vega")), encoding="utf-8")
    tmp.replace(template)
    if not args.no_config:
        subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", TEMPLATE],
                       cwd=args.root, check=True)
    print(f"{template} ({template.stat().st_size // 1024} KiB); `dvc plots show` now renders offline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
