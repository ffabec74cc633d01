"""The dashboard end to end in Debian's chromium, driven by Playwright (never a downloaded browser):
sign in, the overview's request count equals the ledger's, every page renders (budgets with the alerts
fired), a key is created and revoked, the playground streams, the login survives a reload and logout
forgets it; no console errors.
Screenshots of each page land in the test's tmp dir (and one of the failure, if any)."""

from __future__ import annotations

import asyncio
import os
import re
import time

import openai
import pytest

from tests.conftest import MASTER, make_config, openai_provider, require_service
from tests.cost_helpers import request

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
USAGE = re.compile(r"^\d+ tokens \(\d+ prompt \+ \d+ completion\) · \$\d+\.\d{6} · \d+ ms$")
pytestmark = pytest.mark.ui


@pytest.fixture
async def browser():
    if not HAVE_CHROMIUM:
        require_service("chromium", f"{CHROMIUM} not found (make test-ui installs it)")
    try:
        from playwright.async_api import async_playwright
    except ImportError as e:
        require_service("playwright", str(e))
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            await b.close()


async def test_dashboard_end_to_end(start_proxy, fake_openai, browser, tmp_path):
    fake_openai.reply = " ".join(f"w{i}" for i in range(24))
    cfg = make_config(
        providers={"up": openai_provider(fake_openai, timeouts={"first_byte": 5, "idle": 5, "total": 20})},
        models=[{"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]}],
        storage={"database": f"sqlite:///{tmp_path}/l.db"})
    server = await start_proxy(cfg)
    url = str(server.make_url(""))
    # A soft budget of $0.000001: the first call under it crosses every default threshold (50, 80, 100%).
    st, _, _ = await request(url, "POST", "/admin/budgets", {"id": "team-a", "amount_usd": 0.000001,
                                                             "period": "monthly", "hard": False})
    assert st == 200
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=MASTER)
    for i in range(3):
        under = {"metadata": {"budget_id": "team-a"}} if i == 0 else {}
        await client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}], **under)
    await client.close()
    deadline = time.monotonic() + 5                       # alerts are recorded in the background
    while len((await request(url, "GET", "/admin/budgets/team-a"))[1]["alerts"]) < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    st, vkey, _ = await request(url, "POST", "/admin/keys", {"name": "viewer"})
    assert st == 200
    own = openai.AsyncOpenAI(base_url=url + "/v1", api_key=vkey["key"])
    await own.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "mine"}])
    await own.close()
    st, ledger, _ = await request(url, "GET", "/v1/usage?limit=1000")
    assert st == 200 and len(ledger["data"]) == 4

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    tid = page.get_by_test_id
    try:
        await page.goto(url + "/ui/")
        await tid("login-key").fill(MASTER)
        await tid("login-submit").click()
        await tid("total-requests").wait_for()
        assert await tid("total-requests").inner_text() == str(len(ledger["data"]))
        assert (await tid("total-cost").inner_text()).startswith("$")
        await tid("chart-requests").locator("rect.bar").first.wait_for()          # a bar for the hour
        await page.screenshot(path=tmp_path / "overview.png", full_page=True)

        await tid("nav-budgets").click()
        await tid("budget-row").first.wait_for()
        assert "team-a" in await tid("budget-row").first.inner_text()
        fired = await tid("budget-row").first.get_by_test_id("budget-alerts").inner_text()
        assert re.findall(r"(\d+)%", fired) == ["50", "80", "100"], fired
        await page.screenshot(path=tmp_path / "budgets.png", full_page=True)

        await tid("nav-providers").click()
        await tid("provider-row").first.wait_for()
        await page.screenshot(path=tmp_path / "providers.png", full_page=True)

        await tid("nav-keys").click()
        await tid("key-name").fill("ui-test-key")
        await tid("key-create").click()
        secret = await tid("key-secret").inner_text()
        assert secret.startswith("sk-")
        row = tid("key-row").filter(has_text="ui-test-key")
        await row.wait_for()
        assert secret[:8] in await row.inner_text()          # the prefix is shown, never the secret
        await page.screenshot(path=tmp_path / "keys.png", full_page=True)
        await row.get_by_test_id("key-revoke").click()
        await row.get_by_test_id("confirm").click()
        await row.wait_for(state="detached")
        st, body, _ = await request(url, "GET", "/admin/keys?include_revoked=true")
        [made] = [k for k in body["data"] if k["name"] == "ui-test-key"]
        assert made["revoked"] is True

        fake_openai.delay = 0.03                              # ~0.7 s of stream: the text must grow meanwhile
        await tid("nav-playground").click()
        await tid("playground-model").select_option("gpt")
        await tid("playground-input").fill("Count for me")
        await tid("playground-send").click()
        seen: list[int] = []
        deadline = time.monotonic() + 10
        while not await tid("playground-usage").inner_text() and time.monotonic() < deadline:
            seen.append(len(await tid("playground-output").inner_text()))
            await page.wait_for_timeout(15)
        final = await tid("playground-output").inner_text()
        assert final == fake_openai.reply
        assert any(0 < n < len(final) for n in seen), seen     # partial text was on screen before the end
        usage_text = await tid("playground-usage").inner_text()
        assert USAGE.match(usage_text), usage_text
        await page.screenshot(path=tmp_path / "playground.png", full_page=True)

        await page.reload()                                   # session storage keeps the login
        await tid("playground-output").wait_for()
        await page.get_by_role("button", name="Log out").click()
        await tid("login-key").wait_for()
        assert await page.evaluate("sessionStorage.length") == 0
        await page.reload()
        await tid("login-key").fill(vkey["key"])               # a virtual key: its own usage, no admin pages
        await tid("login-key").press("Enter")                  # (signed in from the keyboard)
        await tid("total-requests").wait_for()
        assert await tid("total-requests").inner_text() == "1"
        assert not await tid("nav-keys").is_visible() and await tid("nav-playground").is_visible()
        assert errors == []
    except BaseException:
        await page.screenshot(path=tmp_path / "failure.png", full_page=True)
        print(f"screenshots: {tmp_path}")
        raise
    finally:
        await page.close()


async def test_ui_files_are_served_with_a_strict_policy(start_proxy, tmp_path):
    server = await start_proxy(make_config())
    url = str(server.make_url(""))
    st, body, headers = await request(url, "GET", "/ui/", headers={})
    assert st == 200 and b'data-testid="login-key"' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for name in ("app.js", "style.css", "favicon.svg"):
        st, _, _ = await request(url, "GET", f"/ui/{name}", headers={})
        assert st == 200, name
    st, body, _ = await request(url, "GET", "/ui/nope.js", headers={})
    assert st == 404 and body["error"]["type"] == "invalid_request_error"
