"""`s2gr report`: a self-contained HTML page that opens in headless Chromium with every plot decoded.

Chromium: `apt-get install -y chromium` (Debian); the browser test is skipped with that hint where it is absent.
"""
from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest

from s2gr_ray.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed]  # the shared run is trained with Ray Train + DeepSpeed

SECTIONS = ("metrics", "curves", "codebook", "clusters", "examples")
PLOTS = ("plot-train-loss", "plot-valid", "plot-codebook")


@pytest.fixture(scope="module")
def report(trained_run):
    assert main(["report", str(trained_run), "--users", "3", "--k", "5"]) == 0
    path = trained_run / "report.html"
    return path, path.read_text(encoding="utf-8")


def test_report_is_self_contained_with_plots_and_sections(report):
    _, page = report
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    assert 'class="error"' not in page
    for pid in PLOTS:
        m = re.search(rf'<img class="plot" id="{pid}" alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
        assert m, pid
        assert base64.b64decode(m.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page and "src=\"file" not in page  # nothing external
    assert "<th>recall@10</th>" in page and "<td>test</td>" in page  # final metric table
    assert page.count('<div class="user"') == 3 and "reasoning path" in page
    # a long history is shown as its last 8 items "of" the user's full history length, not the shard's cut
    import pyarrow.parquet as pq

    from s2gr_ray.training.data_pipeline import shard_files

    lengths = pq.read_table(shard_files(report[0].parent, "test")[0]).slice(0, 3).column("history_len").to_pylist()
    assert re.findall(r"\(last 8 of (\d+)\)", page) == [str(n) for n in lengths if n > 8]
    assert page.count("<tr>") > 10  # metric, codebook, cluster and recommendation tables


def test_report_opens_in_headless_chromium(report, tmp_path):
    path, _ = report
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed: apt-get update && apt-get install -y chromium")
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(args + ["--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert f'data-plots-loaded="{len(PLOTS)}/{len(PLOTS)}"' in html  # every embedded PNG decoded in the browser
    for sid in SECTIONS:
        assert f'id="{sid}"' in html
    assert 'class="error"' not in html
    shot = tmp_path / "report.png"
    subprocess.run(args + ["--window-size=1200,2400", f"--screenshot={shot}", path.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
