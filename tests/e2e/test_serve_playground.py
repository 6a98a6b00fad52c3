"""The playground page in a real headless browser (Debian's chromium + chromium-driver, through selenium): type a
prompt, compare two models side by side, watch the text stream in, get the `gpt2lab sample` command.

scripts/test.sh installs the browser where it can (root and apt-get); elsewhere this test is skipped, saying why.
Set GPT2LAB_SCREENSHOTS=DIR to keep the screenshot it takes."""

import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="gpt2lab serve needs the serve extra: pip install -e '.[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="the playground test drives a browser with selenium "
                                "(test extra)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from tests.conftest import tiny_gpt  # noqa: E402
from tests.serve_utils import LiveServer  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium/chromedriver: apt-get install chromium chromium-driver (scripts/test.sh does as root)")


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,760", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    # The driver from the distribution, named explicitly: selenium must not try to download one.
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_playground_streams_two_models_side_by_side_and_gives_the_sample_command(browser, tmp_path):
    dirs = {}
    for name, seed in (("small", 0), ("other", 1)):
        dirs[name] = tmp_path / name
        tiny_gpt(seed=seed, vocab_size=50257, block_size=128).save_pretrained(dirs[name])
    with LiveServer([f"small={dirs['small']}", f"other={dirs['other']}"]) as live:
        browser.get(live.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#model option")) == 2)
        Select(browser.find_element(By.ID, "compare")).select_by_value("other")
        for field, value in (("prompt", "Once upon a time"), ("max_tokens", "40"), ("seed", "5")):
            element = browser.find_element(By.ID, field)
            element.clear()
            element.send_keys(value)
        # Count the pieces of text as they are added: streamed text arrives in many, a finished one in one.
        browser.execute_script("""
            window.pieces = 0;
            new MutationObserver(ms => { window.pieces += ms.length; })
                .observe(document.getElementById('outputs'), {childList: true, subtree: true, characterData: true});
        """)
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: [e.text.startswith("finished") for e in b.find_elements(By.CSS_SELECTOR, ".out .info")]
                   == [True, True])
        shown = {pane.find_element(By.CSS_SELECTOR, "h2 .name").text: pane.find_element(By.CSS_SELECTOR, ".completion")
                 for pane in browser.find_elements(By.CSS_SELECTOR, ".out")}
        assert list(shown) == ["small", "other"]
        for name in shown:  # what the API gives with the page's settings (top-k 50, temperature 1, seed 5)
            status, answer = live.post("/v1/completions", {"model": name, "prompt": "Once upon a time",
                                                           "max_tokens": 40, "temperature": 1, "top_k": 50, "seed": 5})
            expected = answer["choices"][0]["text"]
            # innerText collapses nothing inside white-space: pre-wrap, but compare the DOM's own text to be exact
            assert shown[name].get_property("textContent") == expected
        assert browser.execute_script("return window.pieces") > 20  # it streamed in, token by token
        commands = browser.find_element(By.ID, "command").text.splitlines()
        assert commands == [f"gpt2lab sample {dirs[n]} --prompt 'Once upon a time' --num-samples 1 "
                            f"--max-new-tokens 40 --temperature 1 --top-k 50 --seed 5" for n in ("small", "other")]
        browser.find_element(By.ID, "copy").click()
        wait.until(lambda b: b.find_element(By.ID, "copy").text == "Copied")
        screenshot = tmp_path / "playground.png"
        browser.save_screenshot(str(screenshot))
        if os.environ.get("GPT2LAB_SCREENSHOTS"):
            shutil.copy(screenshot, os.path.join(os.environ["GPT2LAB_SCREENSHOTS"], "playground.png"))

        # a request the server refuses: its message appears in the pane, the page stays usable
        max_tokens = browser.find_element(By.ID, "max_tokens")
        max_tokens.clear()
        max_tokens.send_keys("100000")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".out .error")) == 2)
        assert "more than this server allows" in browser.find_element(By.CSS_SELECTOR, ".out .error").text
        assert browser.find_element(By.ID, "generate").is_enabled()
