"""The local cartridge page: the JSON API over plain HTTP (answers, 4xx, concurrency), then the page
itself in headless Debian chromium driven by Playwright (skipped without them, failed in CI). The
served model and the HTTP helpers are in tests/conftest.py; the HTTP layer's own tests (raw
sockets, Host names, deadlines, bursts) in test_webserver.py."""
import concurrent.futures
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import MEAN, STD, busy_or_ok, get, get_json, start_server
from neuraldx7_jax import cartridges, checkpoint, cli, data, dx7, sample, serve, webserver
from neuraldx7_jax.errors import Error

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
TIMEOUT = 60_000  # ms, for the browser on a busy machine


def needed(reason):
    """Skips with `reason` locally; fails in CI, which installs everything."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must install it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def model(app):
    """The served model (tests/conftest.py)."""
    return app.model


def cartridge_bytes(model, seed, temperature, tmp_path):
    """What `neuraldx7 generate --seed SEED --temperature T` writes."""
    (path, _), = cartridges.generate_cartridges(model, tmp_path / f"{seed}_{temperature}.syx", count=1, temperature=temperature, seed=seed)
    return path.read_bytes()


def reference_wav(voice):
    from neuraldx7_jax import audio

    return audio.wav_bytes(audio.render(voice, seconds=serve.NOTE_SECONDS), audio.SAMPLE_RATE)


# The API over plain HTTP.

@pytest.mark.parametrize("path, status, words", [
    ("/api/cartridge?seed=-1", 400, "bad seed"),
    ("/api/cartridge?seed=abc", 400, "bad seed"),
    ("/api/cartridge?seed=4294967296", 400, "bad seed"),
    ("/api/cartridge?seed=1&seed=2", 400, "given 2 times"),
    ("/api/cartridge.syx", 400, "seed is required"),
    ("/api/cartridge?seed=1&temperature=-0.5", 400, "bad temperature"),
    ("/api/cartridge?seed=1&temperature=nan", 400, "bad temperature"),
    ("/api/cartridge?seed=1&temperature=inf", 400, "bad temperature"),
    ("/api/cartridge?seed=1&temperature=hot", 400, "bad temperature"),
    ("/api/voice?seed=1&index=0", 400, "bad index"),
    ("/api/voice?seed=1&index=33", 400, "bad index"),
    ("/api/voice?seed=1", 400, "index is required"),
    ("/api/voice?seed=1&index=2&z=1,2,3", 400, "wrong latent length"),
    ("/api/voice?seed=1&index=2&z=1,2,3,4,5", 400, "wrong latent length"),
    ("/api/voice?seed=1&index=2&z=1,2,x,4", 400, "bad latent"),
    ("/api/voice?seed=1&index=2&z=1,2,nan,4", 400, "finite"),
    ("/api/voice?seed=1&index=2&z=1e39,0,0,0", 400, "finite float32"),
    ("/api/voice.wav?seed=1&index=2&note=128", 400, "bad note"),
    ("/api/voice?seed=1&index=2&sed=3", 400, "unknown parameter sed"),
    ("/api/cartridge?seed=1&like=3", 400, "bad like"),
    ("/api/cartridge?seed=1&like=3:33", 400, "bad like"),
    ("/api/cartridge?seed=1&mutate=3:0", 400, "bad mutate"),
    ("/api/cartridge?seed=1&mutate=3:2&amount=0", 400, "bad amount"),
    ("/api/cartridge?seed=1&mutate=3:2&amount=x", 400, "bad amount"),
    ("/api/cartridge?seed=1&amount=0.5", 400, "amount goes with mutate"),
    ("/api/cartridge?seed=1&mutate=3:2&like=3:2", 400, "give one"),
    ("/api/nothing", 404, "no such page"),
    ("/../pyproject.toml", 404, "no such page"),
    ("/serve.py", 404, "no such page"),
])
def test_bad_requests_get_a_4xx_with_a_json_error(url, path, status, words):
    got, headers, body = get(url + path.lstrip("/"))
    assert got == status and headers["Content-Type"] == "application/json"
    error = json.loads(body)
    assert words in error["error"] and error["status"] == status


def test_only_get_and_head(url):
    status, headers, body = get(url + "api/info", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD" and "use GET" in json.loads(body)["error"]
    status, headers, body = get(url + "api/cartridge.syx?seed=3", method="HEAD")
    assert status == 200 and headers["Content-Length"] == str(dx7.BULK_SIZE) and body == b""


def test_the_page_and_its_files_are_served_with_no_outside_sources(url):
    status, headers, body = get(url + "?seed=3&temperature=0.5")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"/app.js" in body
    assert headers["Content-Security-Policy"] == "default-src 'self'; frame-ancestors 'none'"
    assert headers["Server"] == "neuraldx7" and headers["X-Content-Type-Options"] == "nosniff"
    for name in ("app.js", "style.css"):
        status, _, body = get(url + name)
        assert status == 200 and b"http://" not in body and b"https://" not in body
    status, headers, _ = get(url + "favicon.svg")
    assert status == 200 and headers["Content-Type"] == "image/svg+xml"


def test_info_gives_slider_ranges_from_the_features_or_the_prior(url, model):
    info = get_json(url + "api/info")
    assert info["latent"] == 4 and info["range_source"] == "features" and info["model"]["step"] == 2
    np.testing.assert_allclose(info["low"], np.subtract(MEAN, 3 * np.array(STD)))
    np.testing.assert_allclose(info["high"], np.add(MEAN, 3 * np.array(STD)))
    low, center, high, source = checkpoint.latent_ranges(model._replace(features=None))
    assert source == "prior" and list(low) == [-3] * 4 and list(center) == [0] * 4 and list(high) == [3] * 4
    with pytest.raises(Error, match="positive stds"):
        checkpoint.latent_ranges(model._replace(features=dict(mean=MEAN, std=[1, 0, 1, 1])))


@pytest.mark.slow
def test_answers_are_those_of_the_library(url, model, tmp_path):
    for seed, temperature in ((7, 0.0), (8, 0.9)):
        cart = get_json(url + f"api/cartridge?seed={seed}&temperature={temperature}")
        status, headers, syx = get(url + f"api/cartridge.syx?seed={seed}&temperature={temperature}")
        assert status == 200 and f"seed{seed}_t{temperature:g}.syx" in headers["Content-Disposition"]
        assert syx == cartridge_bytes(model, seed, temperature, tmp_path)  # = `neuraldx7 generate`
        voices = dx7.parse(syx)
        assert cart["seed"] == seed and len(cart["voices"]) == 32 and dx7.is_valid(voices).all()
        assert [v["name"] for v in cart["voices"]] == [dx7.voice_name(v) for v in voices]
        assert [v["algorithm"] for v in cart["voices"]] == list(voices[:, 134].astype(int) + 1)
        z = np.asarray(cart["latents"], np.float32)
        assert z.shape == (32, 4)
        for index in (1, 32):  # a voice's own latent, sent back, decodes to the voice (noise included)
            zq = ",".join(map(repr, cart["latents"][index - 1]))
            voice = get_json(url + f"api/voice?seed={seed}&temperature={temperature}&index={index}&z={zq}")
            assert voice["values"] == voices[index - 1].tolist() and voice["z"] == cart["latents"][index - 1]
        single = get(url + f"api/voice.syx?seed={seed}&temperature={temperature}&index=5")[2]
        assert dx7.parse_single_voice(single).tolist() == voices[4].tolist()
    moved = [2.0, -1.0, 0.5, 3.0]
    voice = get_json(url + f"api/voice?seed=1&temperature=0&index=4&z={','.join(map(str, moved))}")
    expected = data.clean_names(sample.decode(model, np.float32([moved]), temperature=0.0))[0]  # argmax, as live control
    assert voice["values"] == expected.tolist() and voice["name"] == dx7.voice_name(expected)


def test_more_like_this_is_generate_like(url, app, model):
    """`like=SEED:INDEX` is a cartridge near voice INDEX of cartridge SEED, as `generate --like` draws it;
    without a temperature, at the default 1 (values sampled)."""
    source = app.cartridge_voices(3, 1.0).voices[6]
    got = get_json(url + "api/cartridge?seed=8&like=3:7")
    assert got["like"] == "3:7" and got["temperature"] == 1.0
    expected = next(cartridges.cartridges(model, 1, temperature=1.0, seed=8, prior=sample.like_prior(model, source[None], seed=8)))
    assert [v["name"] for v in got["voices"]] == [dx7.voice_name(v) for v in expected.voices]
    np.testing.assert_allclose(got["latents"], expected.z, rtol=1e-6)
    status, _, body = get(url + "api/cartridge.syx?seed=8&like=3:7")
    assert status == 200 and body == dx7.cartridge_message(expected.voices)
    voice = get_json(url + "api/voice?seed=8&like=3:7&index=2")
    assert voice["values"] == expected.voices[1].tolist()


def test_mutate_is_the_mutate_command(url, app, model):
    """`mutate=SEED:INDEX&amount=A` is a cartridge of 32 mutants of voice INDEX of cartridge SEED,
    as `neuraldx7 mutate` makes them with --amount A and the request's seed."""
    source = app.cartridge_voices(3, 1.0).voices[6]
    got = get_json(url + "api/cartridge?seed=8&mutate=3:7&amount=0.5")
    assert got["mutate"] == "3:7" and got["amount"] == 0.5 and got["like"] is None
    expected = sample.mutate(model, source[None], amount=0.5, count=32, seed=8)[0][0]
    status, _, body = get(url + "api/cartridge.syx?seed=8&mutate=3:7&amount=0.5")
    assert status == 200 and body == dx7.cartridge_message(expected)
    assert [v["name"] for v in got["voices"]] == [dx7.voice_name(source)] * 32  # names kept
    voice = get_json(url + "api/voice?seed=8&mutate=3:7&amount=0.5&index=2")
    assert voice["values"] == expected[1].tolist()
    assert get_json(url + "api/cartridge?seed=8&mutate=3:7")["amount"] == 0.3  # the default amount


def test_an_omitted_seed_is_drawn_and_returned(url):
    a, b = get_json(url + "api/cartridge"), get_json(url + "api/cartridge")
    assert 0 <= a["seed"] < 2 ** 31 and a["seed"] != b["seed"]


def test_wav_answers_are_riff_audio(url, app):
    if not app.audio:
        needed("dexed-py (the audio extra) is not installed")
    status, headers, body = get(url + "api/voice.wav?seed=3&index=2&note=48")
    assert status == 200 and headers["Content-Type"] == "audio/wav" and body[:4] == b"RIFF"
    voice = app.voice(3, 1.0, 2)[1]  # without a temperature: the default, 1
    from neuraldx7_jax import audio
    assert body == audio.wav_bytes(audio.render(voice, note=48, seconds=serve.NOTE_SECONDS), audio.SAMPLE_RATE)


@pytest.mark.slow
def test_concurrent_requests_get_their_own_answers(url, app, model, tmp_path):
    """Different seeds, temperatures and latents at once (none asked before: nothing cached);
    each answer equals the one computed alone, afterwards, by the library."""
    asks = [("syx", seed, t) for seed, t in ((101, 0.0), (102, 0.0), (103, 0.8), (104, 1.5))]
    asks += [("edit", seed, [seed / 100, -1.0, 0.25, 2.0]) for seed in (105, 106)]
    if app.audio:
        asks += [("wav", seed, t) for seed, t in ((107, 0.0), (108, 0.7))]
    start_together = threading.Barrier(len(asks))

    def ask(kind, seed, arg):
        start_together.wait()
        if kind == "syx":
            return get(url + f"api/cartridge.syx?seed={seed}&temperature={arg}")[2]
        if kind == "edit":
            return get_json(url + f"api/voice?seed={seed}&temperature=0.5&index=9&z={','.join(map(str, arg))}")
        return get(url + f"api/voice.wav?seed={seed}&temperature={arg}&index=6")[2]

    with concurrent.futures.ThreadPoolExecutor(len(asks)) as pool:
        answers = list(pool.map(lambda a: ask(*a), asks))
    for (kind, seed, arg), answer in zip(asks, answers):
        if kind == "syx":
            assert answer == cartridge_bytes(model, seed, arg, tmp_path)
        elif kind == "edit":  # voice 9 moved to z: decoded with its own value noise (its stream row)
            row = int(next(cartridges.cartridges(model, 1, temperature=0.5, seed=seed)).rows[8])
            rows = np.repeat(np.float32([arg]), 32, axis=0)
            voice = sample.decode(model, rows, temperature=0.5, seed=seed, batch=32, first_block=row // 32)[row % 32]
            expected = cartridges.name_voices(model, np.float32([arg]), voice[None])[0]
            assert answer["values"] == expected.tolist()
        else:
            voice = next(cartridges.cartridges(model, 1, temperature=arg, seed=seed)).voices[5]
            assert answer == reference_wav(voice)


def test_a_burst_in_process_runs_a_few_model_calls_at_once_and_all_are_answered(app, monkeypatch):
    """64 threads asking new cartridges of `App.respond` at once (64 wedged XLA's CPU client for
    good before model calls were bounded): at most MODEL_SLOTS run at once, each thread gets 200
    or a 503 with Retry-After once its wait for a slot expires, and the model answers afterwards."""
    running, peak, lock = [0], [0], threading.Lock()
    real = cartridges.cartridges

    def counted(*args, **kwargs):  # the real sampler, counting the calls inside it
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            yield from real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1
    monkeypatch.setattr(serve.cartridges, "cartridges", counted)
    monkeypatch.setattr(app, "slot_seconds", 1.0)
    together = threading.Barrier(64)

    def ask(i):
        together.wait()
        return app.respond("GET", f"/api/cartridge?seed={31000 + i}")
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(ask, range(64)))
    assert all(busy_or_ok(a.status, a.headers, a.body) for a in answers)
    assert {a.status for a in answers} == {200, 503}  # a 1 s wait cannot serve 64 of them
    assert peak[0] <= serve.MODEL_SLOTS
    assert app.respond("GET", "/api/cartridge?seed=31999").status == 200


def test_lru_cache_keeps_the_latest():
    cache, made = serve.LruCache(2), []
    make = lambda k: lambda: made.append(k) or k * 10  # noqa: E731
    assert [cache.get(k, make(k)) for k in (1, 2, 1, 3, 2, 1)] == [10, 20, 10, 30, 20, 10]
    assert made == [1, 2, 3, 2, 1]
    assert serve.LruCache(0).get(1, make(1)) == 10 and serve.LruCache(0).get(1, make(1)) == 10


@pytest.mark.slow
def test_serve_command_announces_its_url_and_binds_loopback(served_workdir, capsys, monkeypatch):
    servers = []
    make = webserver.make_server
    monkeypatch.setattr(webserver, "make_server", lambda *a: servers.append(make(*a)) or servers[-1])
    codes = []
    argv = ["serve", "--port", "0", "--checkpoint", str(served_workdir)]
    thread = threading.Thread(target=lambda: codes.append(cli.main(argv)))
    thread.start()
    out = ""
    try:
        for _ in range(1200):
            out += capsys.readouterr().out
            if "serving on" in out or codes:
                break
            thread.join(0.1)
        assert servers, f"the command did not start: {codes}"
        host, port = servers[0].server_address[:2]
        assert host == "127.0.0.1" and f"serving on http://127.0.0.1:{port}/" in out
        assert get_json(f"http://127.0.0.1:{port}/api/info")["latent"] == 4
    finally:
        if servers:
            servers[0].shutdown()
        thread.join(60)
    assert codes == [0]
    assert cli.main(["serve", "--port", "0", "--checkpoint", str(served_workdir / "nothing")]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err


# The page in a real browser.

@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        needed('playwright is not installed (pip install -e ".[web]")')
    if not Path(CHROMIUM).exists():
        needed(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def names_on(page):
    return page.locator("#voices td.name").all_inner_texts()


@pytest.mark.slow
def test_the_page_generates_plays_edits_and_downloads(browser, url, app, model, tmp_path):
    page = browser.new_page(accept_downloads=True, bypass_csp=True)  # the page's CSP forbids the test's evals
    page.set_default_timeout(TIMEOUT)
    page.goto(url)
    page.wait_for_function("document.querySelectorAll('#voices tr').length === 32")
    first = page.url
    assert "seed=" in first

    with page.expect_response(lambda r: "/api/cartridge?" in r.url):  # a new cartridge
        page.click("#new")
    page.wait_for_function(f"location.href !== {json.dumps(first)}")
    seed = int(page.input_value("#seed"))
    assert page.input_value("#temperature") == "1"  # the page starts at the default temperature
    cart = get_json(url + f"api/cartridge?seed={seed}&temperature=1")
    page.wait_for_function(f"document.querySelector('#voices td.name').textContent === "
                           f"{json.dumps(cart['voices'][0]['name'])}")
    assert names_on(page) == [v["name"] for v in cart["voices"]]
    algorithms = page.locator("#voices tr td:nth-child(3)").all_inner_texts()
    assert algorithms == [str(v["algorithm"]) for v in cart["voices"]]

    if app.audio:  # play voice 3: a WAV answer, and the audio element knows its duration
        with page.expect_response(lambda r: "/api/voice.wav?" in r.url) as answer:
            page.locator("#voices tr").nth(2).locator("button.play").click()
        assert answer.value.status == 200 and answer.value.body()[:4] == b"RIFF" and "index=3" in answer.value.url
        page.wait_for_function("document.getElementById('player').duration > 1")

    page.locator("#voices tr").nth(4).locator("button.edit").click()  # edit voice 5
    page.wait_for_selector("#editor:not([hidden])")
    page.wait_for_function("document.getElementById('editor').dataset.decodes === '1'")
    assert page.locator("#sliders input[type=range]").count() == 4
    assert page.inner_text("#edit-name") == cart["voices"][4]["name"]
    high = MEAN[1] + 3 * STD[1]
    with page.expect_response(lambda r: "/api/voice?" in r.url and "z=" in r.url) as answer:
        page.eval_on_selector("#sliders input[data-dim='1']", f"""s => {{
            s.value = {high}; s.dispatchEvent(new Event('input', {{bubbles: true}})); }}""")
    page.wait_for_function("document.getElementById('editor').dataset.decodes === '2'")
    moved = answer.value.json()
    z = [float(x) for x in page.get_attribute("#editor", "data-z").split(",")]
    assert z[1] == pytest.approx(high) and z[0] == pytest.approx(cart["latents"][4][0])
    expected = app.voice(seed, 1.0, 5, np.float32(z))[1]  # the page shows the voice decoded at the new latent
    assert moved["values"] == expected.tolist() and page.inner_text("#edit-name") == dx7.voice_name(expected)
    changed = int(np.sum(expected != app.voice(seed, 1.0, 5)[1]))
    assert page.inner_text("#edit-changed") == (f"{changed} of 155 values changed" if changed else "as generated")

    with page.expect_download() as download:
        page.click("#download")
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    assert path.name == f"neuraldx7_seed{seed}_t1.syx" and path.stat().st_size == dx7.BULK_SIZE
    voices = dx7.load(path)
    assert len(voices) == 32 and dx7.is_valid(voices).all()
    assert path.read_bytes() == cartridge_bytes(model, seed, 1.0, tmp_path)

    with page.expect_response(lambda r: "/api/cartridge?" in r.url and "mutate=" in r.url) as answer:
        page.fill("#amount", "50")
        page.click("#mutate")  # 32 mutants of voice 5, half of its values changed
    mutants = answer.value.json()
    assert mutants["mutate"] == f"{seed}:5" and mutants["amount"] == 0.5
    page.wait_for_function("location.search.includes('mutate=')")
    expected = sample.mutate(model, app.voice(seed, 1.0, 5)[1][None], amount=0.5, count=32, seed=mutants["seed"])[0][0]
    assert get(url + f"api/cartridge.syx?seed={mutants['seed']}&mutate={seed}:5&amount=0.5")[2] == \
        dx7.cartridge_message(expected)
    page.go_back()
    page.wait_for_function("!location.search.includes('mutate=')")

    page.fill("#temperature", "0.8")  # the same seed at another temperature, in the address
    page.dispatch_event("#temperature", "change")
    page.wait_for_function("location.search.includes('temperature=0.8')")
    warm = get_json(url + f"api/cartridge?seed={seed}&temperature=0.8")
    page.wait_for_function(f"[...document.querySelectorAll('#voices td.name')].map(c => c.textContent).join('|') === "
                           f"{json.dumps('|'.join(v['name'] for v in warm['voices']))}")
    page.goto(page.url)  # the address reproduces the cartridge
    page.wait_for_function("document.querySelectorAll('#voices tr').length === 32")
    assert names_on(page) == [v["name"] for v in warm["voices"]] and page.input_value("#seed") == str(seed)
    page.close()


@pytest.mark.slow
def test_the_page_says_how_to_get_audio_when_the_extra_is_missing(browser, model):
    address, stop = start_server(serve.App(model, audio=False))
    try:
        status, _, body = get(address + "api/voice.wav?seed=1&index=1")
        assert status == 501 and serve.AUDIO_INSTALL in json.loads(body)["error"]
        page = browser.new_page()  # under the page's own CSP: it must work with no inline or outside code
        page.set_default_timeout(TIMEOUT)
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(address + "?seed=4")
        page.locator("#voices tr").nth(31).wait_for()
        assert page.is_visible("#audio-note") and serve.AUDIO_INSTALL in page.inner_text("#audio-note")
        assert page.locator("#voices button.play:disabled").count() == 32
        assert page.input_value("#seed") == "4" and not problems
        page.close()
    finally:
        stop()
