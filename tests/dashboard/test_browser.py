"""The dashboard in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium).

The page loads over a store the simulator filled (and a real ``replay sweep --plot``), shows the numbers that were
served, logs no console error (a failed request for one of its resources would be
one), and its screenshot is saved as a test artifact (``$STOPBANDIT_TEST_ARTIFACTS``,
default ``test-artifacts/``), the one the documentation shows as
``docs/img/dashboard.png``. Under CI=true a missing browser fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stopbandit.replay.store import ReplayStore
from stopbandit.serve import GatewayServer
from stopbandit.serve.dashboard import create_dashboard_app
from tests.dashboard.conftest import fill

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[2]
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,2200")


def _browser():
    missing = [p for p in (CHROMIUM, DRIVER) if not shutil.which(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        missing.append(f"selenium ({exc})")
    if missing:
        why = f"the browser test needs {missing} (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def test_the_dashboard_in_headless_chromium(sqlite_url, tmp_path):
    from selenium.webdriver.common.by import By

    filled = fill(sqlite_url, requests=1500)
    plot = tmp_path / "pareto.png"
    sweep = subprocess.run([sys.executable, "-m", "stopbandit.cli", "replay", "sweep", "--db", sqlite_url,
                            "--lambdas", "0,0.3,0.6", "--estimator", "snips", "--plot", str(plot)],
                           capture_output=True, text=True, timeout=300)
    assert sweep.returncode == 0, sweep.stderr
    store = ReplayStore(sqlite_url)
    driver = _browser()
    try:
        with GatewayServer(create_dashboard_app(store, sweep_plot=plot)) as srv:
            driver.get(srv.url + "/dashboard")
            text = {k: driver.find_element(By.ID, k).text for k in
                    ("decisions", "rewarded", "mean-em", "mean-reward", "lambda", "best-arm")}
            assert text["decisions"] == f"{filled.decisions:,}"
            assert text["rewarded"] == f"{filled.rewarded:,}"
            assert text["mean-em"] == f"{filled.em / filled.rewarded:,.3f}"
            assert text["mean-reward"] == f"{filled.reward / filled.rewarded:,.3f}"
            assert text["lambda"] == f"{filled.lam:.3f}"
            means = {arm: acc[2] / acc[0] for arm, acc in filled.per_arm.items()}
            assert text["best-arm"] == max(means, key=means.get)
            assert filled.reason in driver.find_element(By.ID, "lambda-history").text
            rows = driver.find_elements(By.CSS_SELECTOR, "#arms tbody tr")
            assert sorted(r.find_elements(By.TAG_NAME, "td")[0].text for r in rows) == sorted(filled.per_arm)
            charts = driver.find_elements(By.CSS_SELECTOR, "svg")
            assert len(charts) >= 4 + len(filled.domains)  # reward, EM, tokens, one mix per domain, λ
            assert all(c.size["width"] > 200 and c.size["height"] > 100 for c in charts)
            sweep = driver.find_element(By.ID, "sweep")
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", sweep) > 0
            errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
            assert errors == []
            out = Path(os.environ.get("STOPBANDIT_TEST_ARTIFACTS", ROOT / "test-artifacts"))
            out.mkdir(parents=True, exist_ok=True)
            shot = out / "dashboard.png"
            assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()
        store.dispose()

