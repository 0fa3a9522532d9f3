"""The report screenshots of docs/reading-results.md, made again: three runs on the tiny models, each
report.html opened in headless Chromium 1400 px wide and saved whole.

    .venv/bin/python docs/screenshots/take.py [WORKDIR]

Needs Debian's chromium and chromium-driver, and selenium (the test extras).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from llm_dit.cli import main

HERE = Path(__file__).resolve().parent
HOUSE = str(HERE.parent.parent / "examples" / "house.png")
SMALL = ["--profile", "tiny", "--steps", "4", "--width", "64", "--height", "64", "--no-progress"]


def references(work: Path) -> list[str]:
    """Three reference images: the house and two made here (a gradient and stripes)."""
    from PIL import Image

    a, b = work / "gradient.png", work / "stripes.png"
    Image.linear_gradient("L").convert("RGB").resize((128, 128)).save(a)
    stripes = Image.new("RGB", (128, 128), (240, 200, 40))
    for x in range(0, 128, 16):
        stripes.paste((30, 60, 200), (x, 0, x + 8, 128))
    stripes.save(b)
    return [HOUSE, str(a), str(b)]


def shoot(driver, page: Path, target: Path) -> None:
    driver.set_window_size(1400, 1000)
    driver.get(page.as_uri())
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(height + 20, 6000))
    driver.save_screenshot(str(target))
    print(f"{target}: {height} px tall")


def main_(work: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    work.mkdir(parents=True, exist_ok=True)
    images = references(work)
    runs = {
        "report_vl_only_vs_qwen3.png": ["compare", "--experiment", "vl_only_vs_qwen3", "--image", HOUSE,
                                        "--prompt", "A simple cartoon house with a red roof"],
        "report_sweep_2_axes.png": ["sweep", "--image", HOUSE, "--prompt", "A simple cartoon house with a red roof",
                                    "--alphas", "0.2,0.4,0.6,0.8,1", "--layers=-2,-6,-10"],
        "report_study_3_images_2_seeds.png": ["compare", "--experiment", "vl_only_vs_qwen3", "--images", *images,
                                              "--seeds", "2", "--prompt", "A simple cartoon house with a red roof"],
    }
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    try:
        for shot, args in runs.items():
            out = work / shot.removesuffix(".png")
            if main([*args, "--out", str(out), *SMALL]) != 0:
                raise SystemExit(f"the run for {shot} failed")
            shoot(driver, out / "report.html", HERE / shot)
    finally:
        driver.quit()


if __name__ == "__main__":
    main_(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
