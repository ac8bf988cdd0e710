"""`reco demo-record`: a scripted walkthrough of the live dashboard, recorded in headless
Chromium while the simulator runs, stitched into a video with a caption per step.

The platform must be up (`make up`). The script drives the real dashboard and API: it signs
in as the `admin` operator `reco up` created, shows every page in turn, changes the split on
the A/B page and promotes on the Models page (each confirmed), shows the Security page after a
planted push attack (a burst of simulated traffic with many bots, then an analytics run) and
the Audit page with those actions, and ends on the report `reco report` writes. One frame
per second goes to `var/demo/frames/`; ffmpeg (Debian) stitches
`var/demo/demo.mp4` and an animated preview `var/demo/preview.gif`; the captions are burnt
into the frames and also written as `var/demo/captions.srt` and `steps.json`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backend.analytics.snapshot import Snapshot
from backend.core.layout import Keys
from backend.core.settings import Settings
from backend.ops.cli_accounts import first_password_path
from backend.ops.platform import dashboard_url, health

log = logging.getLogger(__name__)
DEMO_ACCOUNT = "admin"  # the operator account `reco up` creates (see ensure_first_account)
CAPTION_JS = """(text) => {
  let d = document.getElementById('reco-demo-caption');
  if (!d) {
    d = document.createElement('div');
    d.id = 'reco-demo-caption';
    d.style.cssText = 'position:fixed;left:0;right:0;bottom:0;z-index:2147483647;'
      + 'padding:14px 24px;'
      + 'background:rgba(20,20,30,.88);color:#fff;font:20px/1.35 sans-serif;';
    document.body.appendChild(d);
  }
  d.textContent = text;
}"""


@dataclass
class Step:
    path: str  # dashboard page ("" = overview)
    heading: str
    caption: str
    seconds: int = 7
    action: Callable | None = field(default=None, repr=False)


def srt(steps: list[tuple[str, int, int]]) -> str:
    """SubRip captions from (text, start second, end second)."""
    def stamp(t: int) -> str:
        return f"{t // 3600:02d}:{t % 3600 // 60:02d}:{t % 60:02d},000"

    return "".join(f"{i}\n{stamp(a)} --> {stamp(b)}\n{text}\n\n"
                   for i, (text, a, b) in enumerate(steps, 1))


def ffmpeg_commands(frames: Path, out: Path) -> list[list[str]]:
    """One frame per second -> H.264 mp4 (25 fps for players) and a small looping GIF."""
    ff = shutil.which("ffmpeg") or "ffmpeg"
    return [
        [ff, "-y", "-loglevel", "error", "-framerate", "1", "-i", str(frames / "%04d.png"),
         "-vf", "scale=1280:-2,format=yuv420p", "-r", "25", "-c:v", "libx264",
         str(out / "demo.mp4")],
        [ff, "-y", "-loglevel", "error", "-framerate", "1", "-i", str(frames / "%04d.png"),
         "-vf", "fps=1,scale=640:-1:flags=lanczos", "-loop", "0", str(out / "preview.gif")],
    ]


class Recorder:
    def __init__(self, settings: Settings, out: Path) -> None:
        self.settings, self.out = settings, out
        self.frames = out / "frames"
        shutil.rmtree(self.frames, ignore_errors=True)
        self.frames.mkdir(parents=True)
        self.n = 0
        self.captions: list[tuple[str, int, int]] = []
        self.base = dashboard_url(settings)

    def frame(self, page) -> None:
        self.n += 1
        page.screenshot(path=str(self.frames / f"{self.n:04d}.png"))

    def hold(self, page, seconds: int) -> None:
        for _ in range(seconds):
            t0 = time.monotonic()
            self.frame(page)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))

    def run_step(self, page, step: Step) -> None:
        start = self.n
        if not page.url.startswith(self.base):
            page.goto(f"{self.base}/{step.path}")
        else:  # by the sidebar: a page load would end the console session
            page.get_by_role("link", name=step.heading).first.click()
        page.get_by_role("heading", name=step.heading).first.wait_for(timeout=60_000)
        page.wait_for_timeout(2500)  # charts draw
        page.evaluate(CAPTION_JS, step.caption)
        if step.action is not None:
            self.hold(page, 2)
            note = step.action(page)
            if note:
                page.evaluate(CAPTION_JS, f"{step.caption} {note}")
        self.hold(page, step.seconds)
        self.captions.append((step.caption, start, self.n))
        log.info("demo step page=%s frames=%d", step.path or "overview", self.n - start)


def _reco(settings: Settings, *args: str, env: dict[str, str] | None = None,
          timeout: float = 300) -> str:
    out = subprocess.run([sys.executable, "-m", "backend.ops.cli", *args], capture_output=True,
                         text=True, timeout=timeout,
                         env=os.environ | {"RECO_VAR_DIR": str(settings.var_dir)} | (env or {}))
    if out.returncode != 0:
        raise RuntimeError(f"reco {' '.join(args)} failed: {out.stderr[-1500:]}")
    return out.stdout


def record(settings: Settings, out: Path | None = None) -> dict:
    from playwright.sync_api import sync_playwright


    state = health(settings, sim=False)
    if not (state["api"] and state["dashboard"]):
        raise RuntimeError(f"the platform is not up ({state}): run `make up` first")
    out = out or settings.layout.demo
    rec = Recorder(settings, out)
    attack: dict = {}

    def sign_in(page) -> str:
        password = first_password_path(settings).read_text().strip()
        sidebar = page.locator('[data-testid="stSidebar"]')
        sidebar.get_by_label("account", exact=True).fill(DEMO_ACCOUNT)
        sidebar.get_by_label("password", exact=True).fill(password)
        sidebar.get_by_role("button", name="sign in").click()
        page.get_by_text(f"signed in as {DEMO_ACCOUNT}").first.wait_for(timeout=30_000)
        return f"(signed in as {DEMO_ACCOUNT}, an operator: the controls appear)"

    def change_split(page) -> str:
        slider = page.get_by_role("slider").first
        slider.focus()
        for _ in range(4):  # 0.05 per key press
            page.keyboard.press("ArrowLeft")
        page.get_by_text("I want to change what every user is served").click()
        page.get_by_role("button", name="apply split").click()
        page.locator('[data-testid="stAlert"]').first.wait_for(timeout=30_000)
        return "(split moved 4 steps towards B and applied live: no replica restarts)"

    def promote(page) -> str:
        page.get_by_text("I want to change what this variant serves").click()
        page.get_by_role("button", name="promote (verifies first)").click()
        alert = page.locator('[data-testid="stAlert"]').first
        alert.wait_for(timeout=30_000)
        return f"(admin API answered {alert.inner_text()[:60]})"

    def planted_attack(page) -> str:
        summary = _reco(settings, "simulate", "--rps", "12", "--duration", "30", "--seed",
                        "99", env={"RECO_SIM__BOT_SHARE": "0.05"})
        attack.update(json.loads(summary.strip().splitlines()[-1]))
        time.sleep(3)  # the last events land
        _reco(settings, "analyze", "--once")
        store = settings.shared_store()
        snap = Snapshot.model_validate_json(store.get(Keys.latest_snapshot) or b"")
        truth = store.get_json(Keys.ground_truth)
        flagged = set(snap.spam.flagged.combined)
        attack.update(flagged=len(flagged), bots_flagged=len(flagged & set(truth["bots"])))
        page.reload()
        page.get_by_role("heading", name="Security").first.wait_for(timeout=60_000)
        page.wait_for_timeout(2500)
        return (f"(attack planted: {attack['visits']} visits, 5% bots; now flagged: "
                f"{len(flagged)} users, {attack['bots_flagged']} of them the simulator's bots)")

    steps = [
        Step("", "Overview", "Overview: API health, the versions A and B serve, live requests/s, "
             "uptime and p95 latency per variant against the 100 ms SLA.", 8),
        Step("", "Overview", "Signing in: viewers see every page, operators act; the "
             "session's token goes with every admin call.", 4, sign_in),
        Step("fairness", "Fairness", "Fairness: catalog coverage, Gini and top-10 share of "
             "what was actually served, diversity parity by activity and age segment.", 8),
        Step("feedback", "Feedback loops", "Feedback loops: Gini per window with its fitted "
             "slope (echo chamber?), head/mid/tail rates and the starvation ratio.", 8),
        Step("abtest", "A/B test", "A/B test: per-arm watch-through with intervals, the "
             "always-valid sequential p-value, SRM check and guardrails.", 6),
        Step("abtest", "A/B test", "A/B test: changing the split from the dashboard.", 6,
             change_split),
        Step("models", "Models", "Models: every registry version with its signature status, "
             "offline metrics and provenance; scheduled retrains with their decisions.", 6),
        Step("models", "Models", "Models: promoting a version (signature checked first).", 6,
             promote),
        Step("stream", "Stream", "Stream: events per second per topic, lake growth and the "
             "dead-letter reasons.", 7),
        Step("security", "Security", "Security: rating spam detection on live traffic.", 4),
        Step("security", "Security", "Security after a planted push attack: users loud in "
             "volume and abnormal in profile (RDMA/DegSim) are flagged and quarantined before "
             "the next retrain.", 10, planted_attack),
        Step("audit", "Audit", "Audit: the sign-in, the split change and the promotion, "
             "each recorded server-side under the operator's account.", 7),
        Step("", "Overview", "Back on the overview: the system kept serving throughout.", 5),
    ]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                     args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            for step in steps:
                rec.run_step(page, step)
            report = out / "report"
            _reco(settings, "report", "--out", str(report))
            start = rec.n
            page.goto((report / "report.html").resolve().as_uri())
            caption = ("The report (`reco report`): every section's charts with their numbers "
                       "as JSON beside them, the models' provenance and the audit trail.")
            page.evaluate(CAPTION_JS, caption)
            for _ in range(3):
                rec.hold(page, 3)
                page.mouse.wheel(0, 900)
            rec.captions.append((caption, start, rec.n))
        finally:
            browser.close()
    (out / "captions.srt").write_text(srt(rec.captions))
    (out / "steps.json").write_text(json.dumps(
        [{"caption": c, "start_s": a, "end_s": b} for c, a, b in rec.captions], indent=1))
    for cmd in ffmpeg_commands(rec.frames, out):
        subprocess.run(cmd, check=True, timeout=600)
    return {"frames": rec.n, "video_seconds": rec.n, "video": str(out / "demo.mp4"),
            "report": str(out / "report" / "report.html"),
            "preview": str(out / "preview.gif"), "steps": len(rec.captions),
            "attack": {k: attack.get(k) for k in ("visits", "errors", "flagged",
                                                  "bots_flagged")}}
