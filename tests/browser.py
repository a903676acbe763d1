"""A real headless browser for the HTML reports (Debian's chromium): the DOM it parsed, how wide
the laid-out page is at a window width, and a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = "chromium is not installed (Debian: apt-get install -y chromium)"

# The probe goes into a copy of the page only: the report itself stays script-free.
_PROBE = ("<script>document.body.setAttribute('data-probe', [document.documentElement.scrollWidth, "
          "Math.max(...[...document.querySelectorAll('table, svg')].map(e => e.getBoundingClientRect().right))].join(','))</script>")


def _flags(profile: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars"]


def dump_dom(page: Path, profile: Path, width: int = 1280) -> str:
    proc = subprocess.run([assert_chromium(), *_flags(profile), f"--window-size={width},1000", "--dump-dom", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def layout_width(page: Path, work: Path, width: int) -> tuple[int, float]:
    """(the document's scroll width, the right edge of its widest table or plot) in CSS pixels, at a
    window `width` pixels wide."""
    probe = work / f"probe-{width}-{page.name}"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = dump_dom(probe, work / f"profile-{width}", width)
    found = re.search(r'data-probe="(\d+),([\d.]+)"', dom)
    assert found, "the layout probe did not run"
    return int(found.group(1)), float(found.group(2))


def screenshot(page: Path, work: Path, width: int, height: int = 4000) -> Path:
    shot = work / f"shot-{width}.png"
    proc = subprocess.run([assert_chromium(), *_flags(work / f"profile-shot-{width}"), f"--window-size={width},{height}",
                           f"--screenshot={shot}", page.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    return shot


def assert_chromium() -> str:
    assert CHROMIUM is not None, SKIP_REASON
    return CHROMIUM
