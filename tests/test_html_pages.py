"""The routing report's and `bench2drive-eval report`'s HTML pages render in real headless Chromium."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.demo.command import build_demo_policy
from agent.demo.scene import DemoSceneConfig, write_demo_clip
from agent.debugger.replay import ReplayConfig, run_replay
from agent.debugger.routing_report import build_report
from bench2drive_eval.cli import main as eval_main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; .ci/run does)")

# Appended to a copy of the page: after load, record every image's decode state and any script error in the DOM.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.target.src || 'error')), true);
window.addEventListener('load', () => {
  const bad = Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.body.setAttribute('data-probe', `images=${document.images.length} broken=${bad} errors=${window.__errors.length}`);
});
</script>"""


def render_in_chromium(page: Path) -> tuple[str, str]:
    """(DOM after load, console lines) of `page` in headless Chromium."""
    probed = page.with_name("probed_" + page.name)
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    profile = page.parent / "chromium-profile"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                           "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return done.stdout, "\n".join(console)


def check_page(page: Path, min_images: int, expect: list[str]) -> None:
    dom, console = render_in_chromium(page)
    probe = re.search(r'data-probe="images=(\d+) broken=(\d+) errors=(\d+)"', dom)
    assert probe, dom[-500:]
    images, broken, errors = map(int, probe.groups())
    assert images >= min_images and broken == 0 and errors == 0, probe.group(0)
    assert console == "", console
    for text in expect:
        assert text in dom, text


def test_routing_report_page_renders(tmp_path):
    policy, _, _ = build_demo_policy(tmp_path / "model", seed=0, weights=None)
    clip = write_demo_clip(tmp_path / "clip", DemoSceneConfig(num_frames=12), progress=False)
    run_replay(clip.clip_dir, policy, tmp_path / "replay", clip.camera_labels_path,
               ReplayConfig(progress=False, counterfactual_every=3))
    result = build_report([tmp_path / "replay"], tmp_path / "report", progress=False)
    page = result.index.with_name("report.html")
    assert page.is_file()
    check_page(page, min_images=len(result.pngs), expect=["Routing report", "Where the routing choice mattered most",
                                                         clip.clip_dir.name])


def test_bench2drive_eval_report_page_renders(tmp_path, drivemoe_reference, bench2drive_shared):
    out = tmp_path / "report"
    results = drivemoe_reference / "official_results" / "drivemoe_base_bf16_seed1.json"
    assert eval_main(["report", str(results), "--routes", str(bench2drive_shared / "routes" / "bench2drive220.xml"),
                      "--out", str(out), "--title", "DriveMoE seed 1"]) == 0
    check_page(out / "report.html", min_images=4, expect=["DriveMoE seed 1", "Driving Score", "Lowest-scoring routes",
                                                          "95% interval", "mean DS 95% interval"])
