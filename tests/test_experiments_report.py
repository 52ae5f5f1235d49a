"""`cnnlab report`: one static page per run / folder of runs / sweep, every figure beside it; checked in a real
headless Chromium where one is installed (.ci/run installs Debian's chromium and chromium-driver)."""

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cnnlab.cli import app

runner = CliRunner()
BASE = {"model": {"name": "tiny_cnn", "options": {"widths": [4, 8]}}, "data": {"name": "digits", "subset": 128},
        "train": {"epochs": 2, "batch_size": 64, "device": "cpu"}}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if tag == "a":
            self.links.append(a["href"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(index: Path) -> _Page:
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from cnnlab.engine.config import build_config
    from cnnlab.engine.run import train

    root = tmp_path_factory.mktemp("report") / "runs"
    for lr in (0.05, 0.2):
        train(build_config({**BASE, "name": f"lr{lr}", "optim": {"lr": lr}}), root / f"lr{lr}", progress=False)
    res = runner.invoke(app, ["explain", str(root / "lr0.05"), "--images", "0,1", "--methods", "saliency", "--no-metrics"])
    assert res.exit_code == 0, res.output
    return root


def test_run_report_gathers_config_metrics_and_every_figure(runs, tmp_path):
    res = runner.invoke(app, ["report", str(runs / "lr0.05"), "--out", str(tmp_path / "rep"), "--json"])
    assert res.exit_code == 0, res.output
    index = tmp_path / "rep" / "index.html"
    page = _parse(index)
    text = " ".join(page.text)
    for heading in ("Result", "Metrics per epoch", "Figures", "Config", "Learning curves", "Explanations"):
        assert heading in text, heading
    pngs = {str(p.relative_to(runs / "lr0.05")) for p in (runs / "lr0.05").rglob("*.png")}
    assert pngs >= {"curves.png", "explain/explanations.png"}
    assert len(page.images) == len(pngs)  # every figure of the run, once
    for src in page.images:  # files beside the page, nothing remote
        assert not re.match(r"^[a-z]+://", src) and (index.parent / src).read_bytes()[:4] == b"\x89PNG"
    assert "optim:" in text and "lr: 0.05" in text


def test_folder_report_links_a_page_per_run(runs, tmp_path):
    index = Path(runner.invoke(app, ["report", str(runs), "--out", str(tmp_path / "all"), "--json"]).stdout.split('"index": "')[1].split('"')[0])
    page = _parse(index)
    assert sorted(page.links) == ["runs/lr0.05/index.html", "runs/lr0.2/index.html"]
    for link in page.links:
        sub = _parse(index.parent / link)
        assert "../../index.html" in sub.links and all((index.parent / link).parent.joinpath(s).is_file() for s in sub.images)


def test_sweep_report(tmp_path):
    spec = {"name": "rep", "root": str(tmp_path / "store"), "base": {**BASE, "train": {**BASE["train"], "epochs": 2}},
            "grid": {"optim.lr": [0.05, 0.1]}}
    path = tmp_path / "rep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert runner.invoke(app, ["sweep", "run", str(path), "--indices", "1"]).exit_code == 0
    res = runner.invoke(app, ["report", str(path)])
    assert res.exit_code == 0, res.output
    page = _parse(tmp_path / "store" / "report" / "index.html")
    text = " ".join(page.text)
    assert "Runs (2)" in text and "done" in text and "pending" in text  # the unfinished run is listed too
    assert len(page.links) == 1  # only the run that has a directory gets a page


def test_a_linked_report_folder_is_refused_and_nothing_lands_outside(runs, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    run = tmp_path / "run"
    shutil.copytree(runs / "lr0.2", run)
    (run / "report").symlink_to(outside)
    res = runner.invoke(app, ["report", str(run)])
    assert res.exit_code == 2 and "symbolic link" in " ".join(res.output.split())
    assert list(outside.iterdir()) == []


def test_bad_report_targets(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for args, needle in ((["report", str(tmp_path / "nope")], "neither a run directory"),
                         (["report", str(tmp_path / "empty")], "holds no run directory"),
                         (["report", str(tmp_path / "empty"), "--out", str(tmp_path / "file.txt")], "is a file")):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and needle in " ".join(res.output.split()) and "Traceback" not in res.output


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_bin = shutil.which("chromedriver")
    if chrome is None or driver_bin is None:
        pytest.skip("no chromium + chromedriver here (Debian: apt-get install chromium chromium-driver; .ci/run does)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,2000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_bin), options=opts)


def test_report_in_a_real_headless_browser(runs, tmp_path):
    res = runner.invoke(app, ["report", str(runs)])
    assert res.exit_code == 0, res.output
    driver = _browser()
    try:
        for index in (runs / "report" / "index.html", runs / "report" / "runs" / "lr0.05" / "index.html"):
            driver.get(index.resolve().as_uri())
            images = driver.execute_script(
                "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == [], errors
            assert all(ok for _, ok in images), images
        assert len(images) >= 2  # the run page: curves and explanations
        driver.save_screenshot(str(runs / "report" / "screenshot.png"))
    finally:
        driver.quit()
    assert (runs / "report" / "screenshot.png").read_bytes()[:4] == b"\x89PNG"
