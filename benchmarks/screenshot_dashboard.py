"""Screenshots of a dashboard at several window widths in headless Chromium, and a list of overlapping text.

    python benchmarks/screenshot_dashboard.py demo_continuity/temporal_continuity_demo.html --out /tmp/shots

Writes ``<out>/<stem>_<width>.png`` (full page height up to ``--height``) for widths 800, 1400 and 1920 px,
and prints, per width, every pair of overlapping text boxes in the rendered plots (subplot titles,
annotations, axis titles, tick labels, legend entries, a video's buttons and slider labels) and every log axis with fewer than three tick labels — measured in
the page itself (getBoundingClientRect after plotly drew it), so the check does not depend on looking. Look
at the pictures too: the script only finds what it measures. Exit status 1 when any overlap is found.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

CHECK = r"""
<script>
window.addEventListener('load', () => setTimeout(() => {
  const out = {overlaps: [], log_axes: [], plots: 0};
  const sel = '.gtitle, .annotation-text, .g-xtitle text, .g-ytitle text, .g-x2title text, .g-y2title text,'
            + '[class^="g-x"][class$="title"] text, [class^="g-y"][class$="title"] text, .xtick text, .ytick text,'
            + '.legendtext, .slider-label, .updatemenu-item-rect';
  document.querySelectorAll('.js-plotly-plot').forEach((plot, k) => {
    out.plots += 1;
    const boxes = [];
    plot.querySelectorAll(sel).forEach(el => {
      const r = el.getBoundingClientRect();
      const t = (el.textContent || '').trim() || (el.classList.contains('updatemenu-item-rect') ? 'a button' : '');
      if (!t || r.width === 0 || r.height === 0) return;
      const tick = !!el.closest('.xtick, .ytick');
      boxes.push({t: t.slice(0, 60), tick, r: [r.left, r.top, r.right, r.bottom]});
    });
    const uniq = new Map(); boxes.forEach(b => uniq.set(b.t + b.r.join(','), b));
    const bs = [...uniq.values()];
    for (let i = 0; i < bs.length; i++) for (let j = i + 1; j < bs.length; j++) {
      const a = bs[i].r, b = bs[j].r;
      if (bs[i].tick && bs[j].tick) continue;  // tick labels of crossing axes may touch at the corner
      const w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]), h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
      if (w > 2 && h > 2) out.overlaps.push({fig: plot.id, a: bs[i].t, b: bs[j].t, px: [Math.round(w), Math.round(h)]});
    }
    const lay = plot._fullLayout || {};
    Object.keys(lay).filter(k => /^[xy]axis\d*$/.test(k) && lay[k].type === 'log').forEach(name => {
      const ax = lay[name], cls = name[0] + (name.slice(5) || '') + 'tick';
      const n = plot.querySelectorAll('.' + name[0] + 'tick text').length;
      const ticks = (ax._vals || []).filter(v => v.text && v.text !== '').length;
      if (ticks < 3) out.log_axes.push({fig: plot.id, axis: name, ticks});
    });
  });
  const pre = document.createElement('pre'); pre.id = 'layout-check'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 4000));
</script>
"""

COMMON = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        sys.exit("no chromium on PATH (apt-get install chromium)")
    return found


def check(html: str, width: int, height: int = 3000) -> dict:
    """Overlapping text boxes and sparse log axes of the page rendered ``width`` px wide."""
    page = open(html, encoding="utf-8").read().replace("</body>", CHECK + "</body>")
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "page.html")
        with open(copy, "w", encoding="utf-8") as fh:
            fh.write(page)
        proc = subprocess.run([chromium(), *COMMON, f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}",
                               "--virtual-time-budget=15000", "--dump-dom", "file://" + copy],
                              capture_output=True, text=True, timeout=300)
    m = re.search(r'<pre id="layout-check">(.*?)</pre>', proc.stdout, re.S)
    if not m:
        raise RuntimeError(f"the page did not report its layout at {width} px: {proc.stderr[-500:]}")
    import html as html_mod

    return json.loads(html_mod.unescape(m.group(1)))


def screenshot(html: str, out: str, width: int, height: int) -> str:
    stem = os.path.splitext(os.path.basename(html))[0]
    shot = os.path.join(out, f"{stem}_{width}.png")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([chromium(), *COMMON, f"--user-data-dir={tmp}", f"--window-size={width},{height}",
                        "--virtual-time-budget=15000", f"--screenshot={shot}", "file://" + os.path.abspath(html)],
                       capture_output=True, text=True, timeout=300, check=True)
    return shot


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html")
    p.add_argument("--out", default="dashboard_shots")
    p.add_argument("--widths", default="800,1400,1920")
    p.add_argument("--height", type=int, default=9000, help="screenshot height in px (default 9000)")
    p.add_argument("--no-shots", action="store_true", help="only measure overlaps")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    bad = 0
    for w in (int(v) for v in a.widths.split(",")):
        res = check(a.html, w)
        print(f"{w} px: {res['plots']} plots, {len(res['overlaps'])} overlapping text pairs, "
              f"{len(res['log_axes'])} log axes with < 3 tick labels")
        for o in res["overlaps"][:40]:
            print(f"   overlap in {o['fig']}: {o['a']!r} / {o['b']!r} ({o['px'][0]}×{o['px'][1]} px)")
        for o in res["log_axes"]:
            print(f"   sparse log axis in {o['fig']}: {o['axis']} ({o['ticks']} tick labels)")
        bad += len(res["overlaps"]) + len(res["log_axes"])
        if not a.no_shots:
            print("   " + screenshot(a.html, a.out, w, a.height))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
