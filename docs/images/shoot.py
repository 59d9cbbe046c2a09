"""Screenshots of a finished study as a researcher opens it: its MLflow UI (docs/images/mlflow_*.png) and
the first page of its report.html (docs/images/report_first_page.png).

Needs a running `sftvsrl ui` and Playwright driving the system's Chromium (neither is a project
dependency: `pip install playwright`, `apt-get install chromium`):

    sftvsrl ui --config config/config.yaml --port 5055 &     # prints the link to the study's curves
    python docs/images/shoot.py '<the printed link>' docs/images [report.html]

Writes `mlflow_sft_vs_rl.png`: the printed link as it opens, without a click (the chart view of the study's
SFT and RL arms, its first section `0_sft_vs_rl`), and `mlflow_runs.png`: the runs table of the experiment, the
study's run with its duration (the study's); given the study's report.html (`snakemake --report report.html`),
`report_first_page.png`: that file as it opens. A 1600 x 1000 window (1600 x 2600 for the report).
"""

import sys
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

link, out = sys.argv[1], sys.argv[2]
report = sys.argv[3] if len(sys.argv) > 3 else None


def close_assistant(page) -> None:
    """MLflow's assistant panel opens on the right where it can; it hides the charts."""
    close = page.locator('[aria-label="Close"]')
    if close.count():
        try:
            close.first.click(timeout=1500)
        except PlaywrightTimeout:
            print("the assistant panel stayed open")


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(link)
    page.wait_for_timeout(8000)
    close_assistant(page)
    page.wait_for_timeout(2000)
    page.screenshot(path=f"{out}/mlflow_sft_vs_rl.png")
    table = link.split("?")[0] + "?workflowType=machine_learning&searchFilter=&compareRunsMode=TABLE"
    page.goto(table)
    page.reload()  # a fresh page: the filter of the chart view would otherwise stay
    page.wait_for_timeout(8000)
    close_assistant(page)
    page.screenshot(path=f"{out}/mlflow_runs.png")
    if report is not None:
        # the report centres its first page vertically: in a window shorter than the page its top is cut off
        page.set_viewport_size({"width": 1600, "height": 2600})
        page.goto(Path(report).resolve().as_uri())
        page.wait_for_timeout(5000)
        page.screenshot(path=f"{out}/report_first_page.png")
    browser.close()
