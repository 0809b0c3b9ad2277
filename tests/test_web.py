"""demo/web.py end to end: the page is started on a free localhost port, headless Chromium (Debian's
chromium + chromium-driver, driven by selenium) uploads a toy image, and the prediction the page
shows must be pixel-equal to demo/demo.py's picture of the same image (both are PNG: lossless), with
the prototype pictures beside it. Needs the [web] extra (gradio, selenium) and Chromium
(tools/run_tests.sh installs it)."""
import io
import shutil
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TOY_CONFIGS, free_port, load_script

pytest.importorskip("gradio")
pytest.importorskip("selenium")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1800"]


web = load_script("protoseg_web", REPO / "demo" / "web.py")
demo = sys.modules["demo"]  # demo/demo.py, imported by web.py


def web_args(weights, port):
    return ["--config-file", str(TOY_CONFIGS / "protoseg_r18-d8_fcn_toy.yaml"), "--port", str(port),
            "--opts", "MODEL.WEIGHTS", str(weights), "DATASETS.TEST", "('toy_test_val',)"]


@pytest.fixture(scope="module")
def page(trained_toy_checkpoint):
    """URL of the page of the trained toy model, served from a thread of this process."""
    _, weights = trained_toy_checkpoint
    port = free_port()
    app = web.main(web_args(weights, port), block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture
def browser(tmp_path):
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        # an environment without a browser, not a missing feature: tools/run_tests.sh installs it
        # (and warns when it cannot), so the suite run as the README says does drive the page
        pytest.skip("Chromium is not installed: apt-get install -y chromium chromium-driver "
                    "(bash tools/run_tests.sh does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def shown_image(browser, elem_id, timeout=120, previous=None):
    """The picture an Image component shows (once it shows one other than ``previous``), as RGB."""
    def ready(b):
        found = b.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
        src = found[0].get_attribute("src") if found else None
        return src if src and src != previous else False

    src = WebDriverWait(browser, timeout).until(ready)
    with urllib.request.urlopen(src, timeout=30) as response:
        return np.array(Image.open(io.BytesIO(response.read())).convert("RGB")), src


def test_uploaded_image_shows_the_demo_picture_and_prototypes(page, browser, trained_toy_checkpoint, toy_dataset,
                                                             tmp_path):
    _, weights = trained_toy_checkpoint
    image_path = str(sorted((toy_dataset / "images" / "validation").glob("*.jpg"))[3])
    reference = tmp_path / "demo.png"
    demo.main(["--config-file", str(TOY_CONFIGS / "protoseg_r18-d8_fcn_toy.yaml"), "--input", image_path,
               "--output", str(reference), "--opts", "MODEL.WEIGHTS", str(weights),
               "DATASETS.TEST", "('toy_test_val',)"])

    browser.get(page)
    upload = WebDriverWait(browser, 60).until(
        lambda b: b.find_element(By.CSS_SELECTOR, "#input-image input[type=file]"))
    upload.send_keys(image_path)
    shown, _ = shown_image(browser, "prediction")
    expected = np.array(Image.open(reference).convert("RGB"))
    assert shown.shape == expected.shape == (512, 512, 3)
    np.testing.assert_array_equal(shown, expected)  # PNG both ways: pixel-equal

    assignment, _ = shown_image(browser, "assignment")
    similarity, src = shown_image(browser, "similarity")
    assert assignment.std() > 10 and similarity.shape == (512, 512, 3) and similarity.std() > 1
    caption = browser.find_element(By.CSS_SELECTOR, "#caption").text
    assert "predicted px" in caption and "closest to prototype" in caption
    browser.save_screenshot(str(tmp_path / "page.png"))

    # another prototype of the same class: its similarity map replaces the first one
    number = browser.find_element(By.CSS_SELECTOR, "#prototype input[type=number]")
    current = int(number.get_attribute("value"))
    number.clear()
    number.send_keys(str((current + 1) % 10), "\n")
    other, _ = shown_image(browser, "similarity", previous=src)
    assert other.shape == similarity.shape and not np.array_equal(other, similarity)


def test_refuses_to_start_without_weights(tmp_path):
    args = ["--config-file", str(TOY_CONFIGS / "protoseg_r18-d8_fcn_toy.yaml"), "--port", str(free_port())]
    with pytest.raises(SystemExit, match="--allow-random-weights"):
        web.main(args)


def test_parametric_model_gets_the_prediction_only(toy_dataset):
    """No prototype memory: the page has no prototype panel, the prediction is the demo's."""
    cfg = web.setup_cfg(web.get_parser().parse_args([
        "--config-file", str(TOY_CONFIGS / "parametric_r18-d8_fcn_toy.yaml"), "--allow-random-weights",
        "--opts", "DATASETS.TEST", "('toy_test_val',)"]))
    session = web.Session(cfg, alpha=0.6)
    assert session.explorer is None
    image_path = str(sorted((toy_dataset / "images" / "validation").glob("*.jpg"))[0])
    overlay, state, choices = session.analyse(image_path)
    _, expected = session.demo.run_on_image(demo.read_image(image_path, format="BGR"))
    np.testing.assert_array_equal(overlay, expected)
    assert state is None and choices == []
    app = web.build_app(session, [image_path])
    assert not any(getattr(block, "elem_id", None) == "prototype" for block in app.blocks.values())


def test_names_the_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import fails as if not installed
    with pytest.raises(SystemExit, match=r"gradio is not installed.*pip install -e '\.\[web\]'"):
        web.main(["--config-file", str(TOY_CONFIGS / "protoseg_r18-d8_fcn_toy.yaml"), "--allow-random-weights"])


def test_16bit_upload_is_read_as_the_demo_and_training_read_it(tmp_path):
    """A 16-bit grey PNG (mode I;16) is scaled to 8 bits (v >> 8), not clipped to white, for the
    prediction and for the prototype pictures."""
    cfg = web.setup_cfg(web.get_parser().parse_args([
        "--config-file", str(TOY_CONFIGS / "protoseg_r18-d8_fcn_toy.yaml"), "--allow-random-weights",
        "--opts", "DATASETS.TEST", "('toy_test_val',)"]))
    session = web.Session(cfg, alpha=0.6)
    gray = (np.arange(40)[None] * 1600 + np.arange(30)[:, None] * 20).astype(np.uint16)  # up to 62980
    Image.fromarray(gray).save(tmp_path / "deep.png")
    overlay, (image_rgb, _), _ = session.analyse(str(tmp_path / "deep.png"))
    expected = np.repeat((gray >> 8).astype(np.uint8)[..., None], 3, axis=-1)
    np.testing.assert_array_equal(image_rgb, expected)
    np.testing.assert_array_equal(overlay, session.demo.run_on_image(expected)[1])  # grey: BGR == RGB


@pytest.fixture(scope="module")
def small_page(toy_dataset):
    """A page of the random toy model with a 20000-pixel limit and states kept 1.2 s: (app, URL)."""
    port = free_port()
    app = web.main(["--config-file", str(TOY_CONFIGS / "protoseg_r18-d8_fcn_toy.yaml"), "--port", str(port),
                    "--allow-random-weights", "--max-pixels", "20000", "--state-minutes", "0.02",
                    "--opts", "DATASETS.TEST", "('toy_test_val',)"], block=False)
    yield app, f"http://127.0.0.1:{port}/"
    app.close()


def test_large_upload_is_downscaled_with_a_note_and_its_state_is_small_and_dropped(small_page, tmp_path):
    """Through gradio's client, as a browser: a 400x300 upload is analysed at 163x122 (the limit),
    the page says so, the session keeps the image, an 8-bit label map and embeddings at the
    decoder's stride (no (C, H, W) scores), and drops them after --state-minutes."""
    from gradio_client import Client, handle_file

    app, url = small_page
    path = tmp_path / "large.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (300, 400, 3), dtype=np.uint8)).save(path)
    client = Client(url, verbose=False)
    result = client.predict(handle_file(str(path)), api_name="/on_image")
    overlay_path, note = result[0], result[1]
    assert "400x300" in note and "163x122" in note and "--max-pixels" in note
    unknown_path, unknown_caption = result[2], result[3]  # the unknown-score picture and its caption
    u_width, u_height = Image.open(unknown_path).size  # the analysed 163x122, enlarged 5x as the similarity picture
    assert (u_width, u_height) == (5 * 163, 5 * 122) and "unknown score" in unknown_caption
    width, height = Image.open(overlay_path).size  # drawn enlarged, as the demo draws
    assert min(width, height) >= 511 and abs(width / height - 163 / 122) < 0.01
    (image, output), = [v for v in app.state_holder[client.session_hash].state_data.values() if v is not None]
    assert set(vars(output)) == {"embeddings", "prediction", "info"}
    assert image.shape == (122, 163, 3) and output.prediction.shape == (122, 163)
    assert image.dtype == output.prediction.dtype == np.uint8
    stride, padded = output.info.stride, output.info.padded_size
    assert output.embeddings.shape[1:] == (-(-padded[0] // stride), -(-padded[1] // stride))  # (D, h, w)
    give_up_at = time.time() + 30
    while time.time() < give_up_at and any(v is not None for v in
                                         app.state_holder[client.session_hash].state_data.values()):
        time.sleep(0.5)
    assert all(v is None for v in app.state_holder[client.session_hash].state_data.values())


def test_an_upload_that_is_no_image_gets_a_message(small_page, tmp_path):
    from gradio_client import Client, handle_file

    _, url = small_page
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(Exception, match=r"notes\.txt: not an image this page can read"):
        Client(url, verbose=False).predict(handle_file(str(path)), api_name="/on_image")


def test_unknown_score_picture_is_the_models_unknown_score(tmp_path):
    """The page's unknown-score picture shows the model's own ``unknown_score`` output
    (TEST.UNKNOWN_SCORE nearest_prototype): 1 - max_c max_k cos(x, p_ck), from the page's
    embeddings at the decoder's stride, on the colour scale 0..1."""
    import torch

    from protoseg.visualization.explorer import unknown_score_map

    cfg = web.setup_cfg(web.get_parser().parse_args([
        "--config-file", str(TOY_CONFIGS / "protoseg_r18-d8_fcn_toy.yaml"), "--allow-random-weights",
        "--opts", "DATASETS.TEST", "('toy_test_val',)"]))
    session = web.Session(cfg, alpha=0.6)
    rgb = np.random.RandomState(0).randint(0, 256, (128, 128, 3), dtype=np.uint8)  # the toy test size
    Image.fromarray(rgb).save(tmp_path / "scene.png")
    _, state, _ = session.analyse(str(tmp_path / "scene.png"))
    picture, caption = session.unknown_view(state)
    assert picture.shape[2] == 3 and picture.shape[0] == picture.shape[1] >= 128 and "unknown score" in caption

    model = session.explorer.model
    image = rgb[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else rgb
    model.unknown_score = "nearest_prototype"
    with torch.no_grad():
        expected = model([{"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "height": 128, "width": 128}])
    score = unknown_score_map(state[1], session.explorer.memory)
    np.testing.assert_allclose(score, expected[0]["unknown_score"].numpy(), atol=1e-5)
    assert 0.0 <= score.min() and score.max() <= 2.0
    assert web.Session.unknown_view(session, None) == (None, "")

