"""Screenshots of a study's MLflow UI as a researcher opens it (docs/images/mlflow_*.png).

Needs a running `sftvsrl ui` and Playwright driving the system's Chromium (neither is a project
dependency: `pip install playwright`, `apt-get install chromium`):

    sftvsrl ui --config config/config.yaml --port 5055 &
    python docs/images/shoot_mlflow.py http://127.0.0.1:5055/#/experiments/1?workflowType=machine_learning docs/images

Writes `mlflow_runs.png` (the runs table, the study's parent run expanded) and `mlflow_sft_vs_rl.png`
(the chart view with only the training runs, charts `eval/eval_id/success_rate` and the OOD one).
Clicks go by position in a 1600 x 1000 window of MLflow 3.17's layout.
"""

import sys

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

link, out = sys.argv[1], sys.argv[2]
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(link)
    page.wait_for_timeout(6000)
    close = page.locator('[aria-label="Close"]')  # MLflow's assistant panel, where it opens
    if close.count():
        try:
            close.first.click(timeout=1500)
        except PlaywrightTimeout:
            print("the assistant panel stayed open")
    page.mouse.click(319, 305)  # expand the study's parent run
    page.wait_for_timeout(2500)
    page.screenshot(path=f"{out}/mlflow_runs.png")
    search = page.get_by_placeholder('metrics.rmse < 1 and params.model = "tree"')
    search.fill("metrics.`eval/eval_id/success_rate` >= 0")  # the training runs: they carry the curves
    search.press("Enter")
    page.wait_for_timeout(3000)
    page.mouse.click(296, 159)  # the chart view
    page.wait_for_timeout(4000)
    page.get_by_placeholder("Search metric charts").fill("eval/eval_")
    page.wait_for_timeout(4000)
    page.screenshot(path=f"{out}/mlflow_sft_vs_rl.png")
    browser.close()
