"""The web app as its users meet it, in headless Chromium against `messenger serve`: a buyer and a seller
chatting live, an order delivered, accepted and sent back for a revision, contact details held and masked,
a moderator working the queue at /moderation, a phone, and the page embedded in a host page's iframe.
axe-core (npm, web/node_modules) checks every screen for serious or critical accessibility violations.

The service runs with CHAT_CONTACT_POLICY=hold and a 1 MiB scan limit, so a held message and a file
that only a moderator can clear (needs_review) are reached on purpose, not by racing the scanner.
Set MESSENGER_SCREENSHOT_DIR=docs to refresh the screenshots in docs/.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import threading
import time
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tests.e2e.conftest import RunningService, free_port, rest, start_service, stop_service
from tests.e2e.test_web_client_chromium import (
    AXE,
    EICAR,
    EXPIRY_ENV,
    SCAN_TIMEOUT_MS,
    SHORT_TTL,
    Person,
    browser,  # noqa: F401  (the module-scoped Chromium fixture)
    check_accessibility,
    fetch_raw,
    make_png,
    require_page,
)

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
SCAN_LIMIT = 1 * MiB  # larger files are not scanned: a moderator decides (needs_review)
# How soon a live console shows a change: well under the 60 s of its safety re-read.
LIVE_MS = 5000
# The marketplace page that embeds the chat, served by a tiny HTTP server of the test on loopback
# (Chromium does not let a public page frame a local address): localhost is another origin than 127.0.0.1.
HOST_PORT = free_port()
HOST = f"http://localhost:{HOST_PORT}"
HOST_PAGES: dict[str, bytes] = {}


class HostPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = HOST_PAGES.get(self.path, b"not found")
        self.send_response(200 if self.path in HOST_PAGES else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


CONTACTS = "Call me on +1 415 555 0134 or write to bob@example.com"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    host = http.server.ThreadingHTTPServer(("127.0.0.1", HOST_PORT), HostPage)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    running = start_service(
        tmp_path_factory.mktemp("webapp"),
        env={
            "CHAT_CONTACT_POLICY": "hold",
            "CLAMD_STREAM_MAX_LENGTH": str(SCAN_LIMIT),
            "CLAMD_CHUNK_SIZE": "4096",  # slower scans, so a delivery sent at upload time is sent first
            "MESSENGER_EMBED_ORIGINS": HOST,
        },
    )
    try:
        require_page(running)
        if fetch_raw(running, "/static/socket.io.min.js")[0] != 200:
            pytest.fail("no socket.io client to serve; install it with: npm ci --prefix web")
        if not AXE.is_file():
            pytest.fail(f"{AXE} is missing; install it with: npm ci --prefix web")
        yield running
    finally:
        stop_service(running)
        host.shutdown()
        host.server_close()


def screenshot(person: Person, name: str) -> None:
    shots = os.environ.get("MESSENGER_SCREENSHOT_DIR")
    if shots:
        person.page.screenshot(path=str(Path(shots) / f"{name}.png"))


def send(person: Person, text: str) -> None:
    person.page.fill("#composer-text", text)
    person.page.get_by_role("button", name="Send", exact=True).click()


def messages(person: Person) -> Any:
    return (
        person.page.get_by_role("list", name="Messages")
        .get_by_role("listitem")
        .filter(has=person.page.locator(".bubble"))
    )


def deliver(person: Person, files: list[Path], note: str) -> None:
    """The seller's Deliver order: a note and files, sent as soon as the files are up."""
    person.page.get_by_role("button", name="Deliver order").click()
    dialog = person.page.get_by_role("dialog", name=re.compile("Deliver order"))
    dialog.get_by_label("Note to the buyer").fill(note)
    person.page.set_input_files("#delivery-files", [str(f) for f in files])
    dialog.get_by_role("button", name="Send delivery").click()
    dialog.wait_for(state="hidden")


def card(person: Person, status: str) -> Any:
    return person.page.locator(f".delivery-card[data-status='{status}']").last


def padded_eicar(path: Path, size: int) -> None:
    """EICAR at the end of random bytes: still detected, and the scan takes a moment."""
    path.write_bytes(os.urandom(size - len(EICAR)) + EICAR)


def test_a_buyer_and_a_seller_chat_live_and_the_buyer_also_reads_on_a_phone(
    service: RunningService,
    browser: Any,  # noqa: F811
) -> None:
    run = uuid.uuid4().hex[:6]
    buyer_id, seller_id = f"buyer-{run}", f"seller-{run}"
    buyer = Person(browser, service, buyer_id)
    seller = Person(browser, service, seller_id)
    phone = None
    try:
        buyer.open_conversation(seller_id, "buyer")
        send(buyer, "Hello! Can you draw a logo for my bakery?")
        # The seller has no conversation open: the inbox, the tab title and the live region tell them.
        inbox = seller.page.get_by_role("list", name="Conversations")
        inbox.get_by_role("listitem").filter(has_text=buyer_id).wait_for()
        seller.page.wait_for_function("document.title === '(1) Messenger'")
        seller.page.wait_for_function(
            "document.getElementById('announcer').textContent.startsWith('New message from " + buyer_id + "')"
        )
        check_accessibility(seller, "inbox")
        screenshot(seller, "web-inbox")

        inbox.get_by_role("button", name=re.compile(buyer_id)).click()
        assert seller.page.text_content("#chat-title") == buyer_id
        seller.page.wait_for_function("document.title === 'Messenger'")
        assert messages(seller).count() == 1
        buyer.page.locator(".receipt.read").wait_for()  # read receipt back to the buyer

        seller.page.locator("#composer-text").press_sequentially("Sure", delay=20)
        buyer.page.wait_for_selector(f"#typing:has-text('{seller_id} is typing')")
        seller.page.press("#composer-text", "Enter")
        buyer.message("Sure").wait_for()
        buyer.page.locator("#presence.online").wait_for()

        # Edit and delete reach the other side live.
        own = buyer.page.locator(".message.mine").first
        own.get_by_role("button", name="Edit").click()
        own.locator("textarea.editor").fill("Hello! Can you draw a logo for my cake shop?")
        own.get_by_role("button", name="Save").click()
        seller.message("cake shop").locator(".edited").wait_for()
        send(buyer, "typo, ignore")
        seller.message("typo, ignore").wait_for()
        typo = buyer.page.locator(".message.mine").filter(has_text="typo, ignore")
        typo.get_by_role("button", name="Delete").click()
        typo.get_by_role("button", name="Really delete?").click()
        seller.page.locator(".message.deleted").wait_for()

        # Offline and back: what was missed arrives; a reload keeps the conversation open.
        seller.context.set_offline(True)
        seller.page.wait_for_selector("#connection[data-state='connecting']")
        send(buyer, "sent while you were offline")
        seller.context.set_offline(False)
        seller.message("sent while you were offline").wait_for()
        seller.page.reload()
        seller.page.wait_for_selector("#connection[data-state='live']")
        seller.message("sent while you were offline").wait_for()
        assert seller.page.text_content("#chat-title") == buyer_id
        # Read before the reload, so no unread badge comes back.
        assert seller.page.locator("#conversations li[data-unread='0']").count() == 1
        # Messages of one sender close together share one header; the day is shown once.
        assert seller.page.locator(".message .day").all_text_contents() == ["Today"]
        check_accessibility(seller, "conversation")
        screenshot(seller, "web-conversation")

        # A third context: the buyer on a phone sees the inbox and the conversation as two screens.
        phone = Person(browser, service, buyer_id, viewport=(390, 740))
        # Waited for: the inbox is shown once the sign-in has been answered, a moment after the page is ready.
        phone.page.get_by_role("list", name="Conversations").wait_for(state="visible")
        assert not phone.page.locator("#token-input").is_visible()  # no developer forms once signed in
        assert not phone.page.locator("#counterpart").is_visible()
        check_accessibility(phone, "phone inbox")
        screenshot(phone, "web-phone-inbox")
        phone.page.get_by_role("list", name="Conversations").get_by_role("button").first.click()
        phone.message("Sure").wait_for()
        assert not phone.page.get_by_role("list", name="Conversations").is_visible()
        assert phone.page.get_by_role("button", name="Send", exact=True).is_visible()
        check_accessibility(phone, "phone conversation")
        screenshot(phone, "web-phone-conversation")
        phone.page.get_by_role("button", name="Back to conversations").click()
        phone.page.get_by_role("list", name="Conversations").wait_for()
        assert buyer.problems == [] and seller.problems == [] and phone.problems == []
    finally:
        for person in (buyer, seller, phone):
            if person is not None:
                person.close()


def test_a_seller_delivers_three_files_and_the_buyer_accepts_once_they_are_cleared(
    service: RunningService,
    browser: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:6]
    buyer_id, seller_id, order = f"buyer-{run}", f"seller-{run}", f"order-{run}"
    buyer = Person(browser, service, buyer_id)
    seller = Person(browser, service, seller_id)
    moderator = Person(browser, service, f"mod-{run}", moderator=True, path="/moderation")
    try:
        buyer.open_conversation(seller_id, "buyer", order)
        seller.open_conversation(buyer_id, "seller", order)
        files = [tmp_path / "logo.png", tmp_path / "logo-dark.png", tmp_path / "poster.png"]
        make_png(files[0], (320, 200))
        make_png(files[1], (200, 200))
        make_png(files[2], (700, 700), noise=True)  # above the scan limit: a moderator must clear it
        assert files[2].stat().st_size > SCAN_LIMIT
        seller.page.get_by_role("button", name="Deliver order").click()
        check_accessibility(seller, "deliver order dialog")
        seller.page.get_by_role("button", name="Cancel").click()
        deliver(seller, files, "Here are the logo and the poster")

        # Pending while the poster waits for a moderator; both sides see the card.
        pending = card(buyer, "pending")
        pending.wait_for(timeout=SCAN_TIMEOUT_MS)
        assert "First delivery" in (pending.text_content() or "")
        card(seller, "pending").wait_for()
        assert buyer.page.get_by_role("button", name="Accept delivery").count() == 0
        screenshot(buyer, "web-delivery-pending")

        # The moderator sees the file's metadata, never a download link, and releases it with a note.
        item = moderator.page.locator(".item.kind-attachment").filter(has_text="poster.png")
        item.wait_for(timeout=SCAN_TIMEOUT_MS)
        assert item.locator("a").count() == 0
        assert "needs_review" in (item.text_content() or "")
        check_accessibility(moderator, "moderation queue")
        screenshot(moderator, "web-moderation")
        item.get_by_role("button", name="Release").click()
        item.get_by_role("button", name="Confirm release").click()
        item.get_by_text("A note is required.").wait_for()
        item.get_by_label(re.compile("Note for the audit log")).fill("poster checked by hand: a plain image")
        item.get_by_role("button", name="Confirm release").click()
        moderator.page.locator("#audit-body tr").filter(has_text="poster checked by hand").wait_for()

        # Cleared, scanned files previewed: the card turns ready live, and the buyer opens a preview.
        card(buyer, "ready").wait_for(timeout=SCAN_TIMEOUT_MS)
        delivery_message = buyer.page.locator(".message.kind-delivery")
        assert delivery_message.locator(".attachment").count() == 3
        delivery_message.locator(".attachment[data-status='ready'] .preview-button").first.click()
        lightbox = buyer.page.get_by_role("dialog")
        lightbox.wait_for()
        assert buyer.page.locator("#lightbox-image").evaluate("img => img.complete && img.naturalWidth > 0")
        check_accessibility(buyer, "lightbox")
        screenshot(buyer, "web-lightbox")
        lightbox.get_by_role("button", name="Close").click()
        check_accessibility(buyer, "delivery card")
        screenshot(buyer, "web-delivery-ready")
        buyer.page.get_by_role("button", name="Accept delivery").click()
        card(buyer, "accepted").wait_for()
        card(seller, "accepted").wait_for()
        assert all(p.problems == [] for p in (buyer, seller, moderator)), [buyer.problems, seller.problems]
    finally:
        for person in (buyer, seller, moderator):
            person.close()


def test_a_revision_request_reaches_the_seller_and_an_infected_redelivery_is_blocked(
    service: RunningService,
    browser: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:6]
    buyer_id, seller_id, order = f"buyer-{run}", f"seller-{run}", f"order-{run}"
    buyer = Person(browser, service, buyer_id)
    seller = Person(browser, service, seller_id)
    try:
        buyer.open_conversation(seller_id, "buyer", order)
        seller.open_conversation(buyer_id, "seller", order)
        first = tmp_path / "draft.png"
        make_png(first, (160, 120))
        deliver(seller, [first], "First draft")
        card(buyer, "ready").wait_for(timeout=SCAN_TIMEOUT_MS)
        buyer.page.get_by_role("button", name="Request revision").click()
        buyer.page.get_by_label("What should change?").fill("Please use a darker red")
        buyer.page.get_by_role("button", name="Send revision request").click()
        asked = card(seller, "revision_requested")
        asked.wait_for()
        assert "Please use a darker red" in (asked.text_content() or "")

        # The second delivery carries an infected file. The page refuses to deliver a file already found
        # infected, so Send delivery is pressed while it is still going up (the page then sends the
        # delivery the moment the upload completes, before the scan ends); holding the upload's
        # `complete` until then makes that order certain.
        infected = tmp_path / "final-artwork.bin"
        padded_eicar(infected, 1_000_000)
        held: list[Any] = []
        seller.page.route("**/api/v1/attachments/*/complete", lambda route: held.append(route))
        seller.page.get_by_role("button", name="Deliver order").click()
        dialog = seller.page.get_by_role("dialog", name=re.compile("Deliver order"))
        dialog.get_by_label("Note to the buyer").fill("Final version")
        seller.page.set_input_files("#delivery-files", str(infected))
        while not held:
            seller.page.wait_for_timeout(20)
        dialog.get_by_role("button", name="Send delivery").click()
        dialog.get_by_role("button", name="Sending when uploaded…").wait_for()
        held[0].continue_()
        seller.page.unroute("**/api/v1/attachments/*/complete")
        dialog.wait_for(state="hidden")
        blocked = card(buyer, "blocked")
        blocked.wait_for(timeout=SCAN_TIMEOUT_MS)
        assert "Revision 1" in (blocked.text_content() or "")
        card(seller, "blocked").wait_for()
        assert buyer.page.locator(".message.kind-delivery").last.locator("a.download").count() == 0
        assert buyer.page.get_by_role("button", name="Accept delivery").count() == 0
        screenshot(seller, "web-delivery-blocked")
        assert buyer.problems == [] and seller.problems == [], buyer.problems + seller.problems
    finally:
        buyer.close()
        seller.close()


def test_contact_details_are_held_for_a_moderator_and_reach_the_buyer_masked(
    service: RunningService,
    browser: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:6]
    buyer_id, seller_id = f"buyer-{run}", f"seller-{run}"
    buyer = Person(browser, service, buyer_id)
    seller = Person(browser, service, seller_id)
    moderator = Person(browser, service, f"mod-{run}", moderator=True, path="/moderation")
    try:
        buyer.open_conversation(seller_id, "buyer")
        seller.open_conversation(buyer_id, "seller")
        send(seller, CONTACTS)
        # The sender is told why it has not gone out; the buyer sees that something waits, not what.
        mine = seller.message(CONTACTS)
        mine.locator(".notes").filter(has_text="Held for a moderator").wait_for()
        held = buyer.page.locator(".message.theirs.held")
        held.wait_for()
        assert "waiting for a moderator" in (held.text_content() or "")
        assert "415" not in (held.text_content() or "") and "bob@" not in (held.text_content() or "")
        check_accessibility(buyer, "held message")
        screenshot(seller, "web-held-sender")
        screenshot(buyer, "web-held-recipient")
        # A file too large to scan, sent in the chat: the moderator will reject it.
        big = tmp_path / "portfolio.png"
        make_png(big, (700, 700), noise=True)
        seller.attach(big)
        send(seller, "and my portfolio")
        buyer.message("and my portfolio").locator(".attachment[data-status='needs_review']").wait_for(
            timeout=SCAN_TIMEOUT_MS
        )

        message_item = moderator.page.locator(".item.kind-message").filter(has_text="bob@example.com")
        message_item.wait_for(timeout=SCAN_TIMEOUT_MS)
        message_item.get_by_role("button", name="Release").click()
        message_item.get_by_label(re.compile("Note for the audit log")).fill("phone and e-mail get masked")
        message_item.get_by_role("button", name="Confirm release").click()
        file_item = moderator.page.locator(".item.kind-attachment").filter(has_text="portfolio.png")
        file_item.wait_for()
        file_item.get_by_role("button", name="Reject").click()
        file_item.get_by_label(re.compile("Note for the audit log")).fill("not something to send in a chat")
        file_item.get_by_role("button", name="Confirm reject").click()
        moderator.page.locator("#audit-body tr").filter(has_text="not something to send").wait_for()
        check_accessibility(moderator, "moderation audit log")

        # Released: the buyer sees it with the contact details masked, and is told so.
        masked = buyer.page.locator(".message.theirs").filter(has_text="Contact details in this message were hidden")
        masked.wait_for()
        assert "bob@example.com" not in (masked.text_content() or "")
        assert seller.message(CONTACTS).locator(".notes").filter(has_text="hidden from the other side").count() == 1
        rejected = buyer.message("and my portfolio").locator(".attachment[data-status='rejected']")
        rejected.wait_for()
        assert rejected.locator("a.download").count() == 0
        # The buyer reports the message.
        masked.get_by_role("button", name="Report").click()
        masked.get_by_label("Why are you reporting this?").fill("asks me to leave the platform")
        masked.get_by_role("button", name="Send report").click()
        masked.get_by_text("Reported to the moderators").wait_for()
        check_accessibility(buyer, "masked message and report")
        screenshot(buyer, "web-masked-recipient")
        assert all(p.problems == [] for p in (buyer, seller, moderator)), [buyer.problems, seller.problems]
    finally:
        for person in (buyer, seller, moderator):
            person.close()


def test_a_host_page_embeds_one_conversation_and_hands_over_the_token_by_post_message(
    service: RunningService,
    browser: Any,  # noqa: F811
) -> None:
    run = uuid.uuid4().hex[:6]
    buyer_id, seller_id = f"buyer-{run}", f"seller-{run}"
    conversation = rest(service, buyer_id, "POST", "/conversations", {"buyer_id": buyer_id, "seller_id": seller_id})
    rest(service, seller_id, "POST", f"/conversations/{conversation['id']}/messages", {"client_id": "c1", "text": "hi"})
    token = service.token(buyer_id)
    # Only the configured host may frame /embed; the main page may not be framed at all.
    embed_csp = fetch_raw(service, "/embed")[1]["content-security-policy"]
    assert f"frame-ancestors {HOST}" in embed_csp
    assert "frame-ancestors 'none'" in fetch_raw(service, "/")[1]["content-security-policy"]

    host_page = f"""<!doctype html><html lang="en"><head><title>Marketplace</title></head><body>
<h1>Order page</h1>
<iframe id="chat" title="Chat with the seller" width="900" height="600"
        src="{service.url}/embed?conversation={conversation["id"]}"></iframe>
<script>
  window.addEventListener('message', (event) => {{
    if (event.origin !== '{service.url}' || event.data.type !== 'messenger:ready') return;
    document.getElementById('chat').contentWindow.postMessage(
      {{type: 'messenger:auth', token: '{token}'}}, '{service.url}');
  }});
</script></body></html>"""
    HOST_PAGES["/orders/1"] = host_page.encode()
    context = browser.new_context(viewport={"width": 960, "height": 700})
    try:
        page = context.new_page()
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        page.goto(f"{HOST}/orders/1")
        frame = page.frame_locator("#chat")
        frame.locator(".message").filter(has_text="hi").wait_for()
        assert frame.locator("#chat-title").text_content() == seller_id
        assert not frame.locator("#inbox").is_visible()  # one conversation, no inbox
        frame.get_by_role("textbox", name="Message", exact=True).fill("hello from the order page")
        frame.get_by_role("button", name="Send", exact=True).click()
        frame.locator(".message.mine:not(.pending)").filter(has_text="hello from the order page").wait_for()
        # The token travelled by postMessage only: in no URL, and not stored by the framed page.
        assert not [u for u in urls if token in u]
        embedded = next(f for f in page.frames if f.url.startswith(service.url))
        # (A browser that blocks third-party storage refuses sessionStorage to the frame altogether.)
        assert embedded.evaluate("() => { try { return sessionStorage.length; } catch (e) { return 0; } }") == 0
        shots = os.environ.get("MESSENGER_SCREENSHOT_DIR")
        if shots:
            page.screenshot(path=str(Path(shots) / "web-embed.png"))

        # The contract's sign-in link `/?token=…` works too, and the token leaves the address bar at once.
        direct = context.new_page()
        direct.goto(f"{service.url}/?token={token}")
        direct.wait_for_selector("#connection[data-state='live']")
        direct.get_by_role("list", name="Conversations").get_by_role("listitem").filter(has_text=seller_id).wait_for()
        assert token not in direct.url
    finally:
        context.close()


def test_an_embedded_page_whose_host_hands_out_short_tokens_stays_on_one_socket_across_their_expiries(
    service: RunningService,  # serves the host page
    start: Any,
    browser: Any,  # noqa: F811
) -> None:
    expiring = start(env={"MESSENGER_EMBED_ORIGINS": HOST, **EXPIRY_ENV}, name="expiring")
    run = uuid.uuid4().hex[:6]
    buyer_id, seller_id = f"buyer-{run}", f"seller-{run}"
    conversation = rest(expiring, buyer_id, "POST", "/conversations", {"buyer_id": buyer_id, "seller_id": seller_id})
    path = f"/orders/expiring-{run}"
    # The host's backend would mint a short token per request: here each one lasts SHORT_TTL longer.
    minted = time.monotonic()
    tokens = [expiring.token(buyer_id, ttl=SHORT_TTL * (i + 1)) for i in range(12)]
    host_page = f"""<!doctype html><html lang="en"><head><title>Marketplace</title></head><body>
<h1>Order page</h1>
<iframe id="chat" title="Chat with the seller" width="900" height="600"
        src="{expiring.url}/embed?conversation={conversation["id"]}"></iframe>
<script>
  const tokens = {json.dumps(tokens)};
  window.asked = 0;
  window.addEventListener('message', (event) => {{
    if (event.origin !== '{expiring.url}' || event.data.type !== 'messenger:ready') return;
    const token = tokens[Math.min(window.asked, tokens.length - 1)];
    window.asked += 1;
    document.getElementById('chat').contentWindow.postMessage({{type: 'messenger:auth', token}}, '{expiring.url}');
  }});
</script></body></html>"""
    HOST_PAGES[path] = host_page.encode()
    context = browser.new_context(viewport={"width": 960, "height": 700})
    try:
        page = context.new_page()
        sockets: list[Any] = []
        sent: list[str] = []
        pushed: list[str] = []

        def opened(ws: Any) -> None:
            sockets.append(ws.url)
            ws.on("framesent", lambda payload: sent.append(payload) if isinstance(payload, str) else None)
            ws.on("framereceived", lambda payload: pushed.append(payload) if isinstance(payload, str) else None)

        page.on("websocket", opened)
        page.goto(HOST + path)
        frame = page.frame_locator("#chat")
        frame.locator("#connection[data-state='live']").wait_for()

        # Before each token expires the page asks its host and hands the new one to the live session.
        page.wait_for_timeout(max(0, (minted + SHORT_TTL + 1 - time.monotonic()) * 1000))
        rest(expiring, seller_id, "POST", f"/conversations/{conversation['id']}/messages",
             {"client_id": "c1", "text": f"after the first expiry {run}"})  # fmt: skip
        frame.locator(".message").filter(has_text=f"after the first expiry {run}").wait_for()
        page.wait_for_timeout(max(0, (minted + 3 * SHORT_TTL + 1 - time.monotonic()) * 1000))
        rest(expiring, seller_id, "POST", f"/conversations/{conversation['id']}/messages",
             {"client_id": "c2", "text": f"after the third expiry {run}"})  # fmt: skip
        frame.locator(".message").filter(has_text=f"after the third expiry {run}").wait_for()

        assert page.evaluate("window.asked") >= 4  # three refreshes at least, one per expiry passed
        assert len([f for f in sent if f.startswith("42") and '"session:refresh"' in f]) >= 3
        assert len(sockets) == 1, sockets  # never reopened
        assert len([f for f in sent if f.startswith("40")]) == 1  # one CONNECT: no reconnect
        assert not [f for f in pushed if "session:expired" in f]
        assert frame.locator("#connection").get_attribute("data-state") == "live"
        assert frame.locator("#error").is_hidden()
        # axe runs inside the embedded frame (check_accessibility evaluates in whatever `.page` it is given).
        embedded = next(f for f in page.frames if f.url.startswith(expiring.url))
        check_accessibility(cast(Person, SimpleNamespace(page=embedded)), "an embedded page that refreshed its token")
    finally:
        context.close()


def test_a_moderation_console_whose_token_expires_shows_it_and_gets_no_more_pushes(
    start: Any,
    browser: Any,  # noqa: F811
) -> None:
    expiring = start(env={"CHAT_CONTACT_POLICY": "hold", **EXPIRY_ENV}, name="console-expiring")
    run = uuid.uuid4().hex[:6]
    buyer_id, seller_id = f"buyer-{run}", f"seller-{run}"
    conversation = rest(expiring, buyer_id, "POST", "/conversations", {"buyer_id": buyer_id, "seller_id": seller_id})

    def held(text: str) -> str:
        sent = rest(expiring, buyer_id, "POST", f"/conversations/{conversation['id']}/messages",
                    {"client_id": uuid.uuid4().hex, "text": text})  # fmt: skip
        assert sent["held"], sent
        return str(sent["id"])

    ttl = SHORT_TTL + 4  # time for a push before the expiry too
    console = Person(browser, expiring, f"mod-{run}", moderator=True, path="/moderation", ttl=ttl)
    try:
        before = held(f"{run} before: write to me at before-{run}@example.com")
        console.page.locator(".item.kind-message").filter(has_text=f"{run} before").wait_for(timeout=LIVE_MS)
        assert [frame for frame in console.pushed if "moderation:queue_changed" in frame and before in frame]

        console.page.wait_for_selector("#connection[data-state='refused']", timeout=(ttl + 10) * 1000)
        assert console.page.text_content("#connection") == "token expired"
        assert (console.page.text_content("#error-text") or "").startswith("token_expired:")
        check_accessibility(console, "a moderation console whose token has expired")

        after = held(f"{run} after: write to me at after-{run}@example.com")
        console.page.wait_for_timeout(2500)  # the queue's projection polls every second: a push would be here
        assert not [frame for frame in console.pushed if after in frame]
        assert len([f for f in console.frames_sent if f.startswith("40")]) == 1  # no retry with the expired token
        assert console.problems == []
    finally:
        console.close()


def test_the_moderation_console_is_served_with_the_strict_policy(service: RunningService) -> None:
    status, headers, body = fetch_raw(service, "/moderation")
    assert status == 200 and b"/static/moderation.js" in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert shutil.which("chromium") or Path("/usr/bin/chromium").is_file()


def test_the_moderation_console_is_live_on_a_desk_and_on_a_phone_and_keeps_a_note_being_typed(
    service: RunningService,
    browser: Any,  # noqa: F811
) -> None:
    run = uuid.uuid4().hex[:6]
    buyer_id, seller_id = f"buyer-{run}", f"seller-{run}"
    desk = Person(browser, service, f"mod-{run}", moderator=True, path="/moderation")
    phone = Person(browser, service, f"mod2-{run}", moderator=True, path="/moderation", viewport=(390, 740))
    consoles = (desk, phone)
    try:
        for console in consoles:  # the first read is done, so what follows can only come by a push
            console.page.wait_for_function("document.getElementById('queue-updated').textContent !== ''")
        conversation = rest(service, buyer_id, "POST", "/conversations", {"buyer_id": buyer_id, "seller_id": seller_id})

        def held(text: str) -> str:
            sent = rest(service, buyer_id, "POST", f"/conversations/{conversation['id']}/messages",
                        {"client_id": uuid.uuid4().hex, "text": text})  # fmt: skip
            assert sent["held"], sent
            return str(sent["id"])

        def item(console: Person, text: str) -> Any:
            return console.page.locator(".item.kind-message").filter(has_text=text)

        first = held(f"{run} first: write to me at first-{run}@example.com")
        for console in consoles:  # seconds, not the minute of the safety re-read
            item(console, f"{run} first").wait_for(timeout=LIVE_MS)
            pushes = [frame for frame in console.pushed if "moderation:queue_changed" in frame and first in frame]
            assert pushes and all("example.com" not in frame for frame in pushes), console.pushed
        check_accessibility(desk, "live moderation queue")
        check_accessibility(phone, "phone moderation queue")

        # On the phone a moderator starts a note; another item arrives and the list re-renders around it.
        mine = item(phone, f"{run} first")
        mine.get_by_role("button", name="Reject").click()
        note = mine.get_by_label(re.compile("Note for the audit log"))
        note.press_sequentially("asks to leave", delay=10)
        held(f"{run} second: or at second-{run}@example.com")
        for console in consoles:
            item(console, f"{run} second").wait_for(timeout=LIVE_MS)
        assert note.input_value() == "asks to leave"
        assert phone.page.evaluate("document.activeElement.tagName") == "TEXTAREA"

        # The desk moderator decides the first one: the phone's note stays, the item marked decided.
        decided = item(desk, f"{run} first")
        decided.get_by_role("button", name="Release").click()
        decided.get_by_label(re.compile("Note for the audit log")).fill("only an e-mail address: masked")
        decided.get_by_role("button", name="Confirm release").click()
        decided.wait_for(state="detached")
        mine.get_by_text("Another moderator has decided this").wait_for(timeout=LIVE_MS)
        assert note.input_value() == "asks to leave"
        assert mine.get_by_role("button", name="Confirm reject").is_disabled()
        check_accessibility(phone, "phone moderation queue, decided elsewhere")
        screenshot(phone, "web-phone-moderation")
        mine.get_by_role("button", name="Cancel").click()
        mine.wait_for(state="detached")
        assert item(phone, f"{run} second").count() == 1
        assert all(c.page.get_attribute("#connection", "data-state") == "live" for c in consoles)
        assert desk.problems == [] and phone.problems == [], [desk.problems, phone.problems]
    finally:
        for console in consoles:
            console.close()


def test_star_archive_filters_and_search_work_against_the_server(
    service: RunningService,
    browser: Any,  # noqa: F811
) -> None:
    run = uuid.uuid4().hex[:6]
    buyer_id, first_seller, second_seller = f"buyer-{run}", f"seller-a-{run}", f"seller-b-{run}"
    # Two conversations, each with a message from its seller (set up over REST, as another device would).
    for seller_id, text in ((first_seller, f"the pastel logo {run}"), (second_seller, f"the bold banner {run}")):
        opened = rest(service, buyer_id, "POST", "/conversations", {"buyer_id": buyer_id, "seller_id": seller_id})
        rest(service, seller_id, "POST", f"/conversations/{opened['id']}/messages", {"client_id": run, "text": text})
    buyer = Person(browser, service, buyer_id)
    try:
        page = buyer.page
        inbox = page.get_by_role("list", name="Conversations")
        row = inbox.get_by_role("listitem")
        row.filter(has_text=first_seller).wait_for()
        filters = page.get_by_role("group", name="Show conversations")
        filters.wait_for()  # the server speaks contract 1.1: the inbox tools are shown

        inbox.get_by_role("button", name=re.compile(first_seller)).click()
        star = page.get_by_role("button", name="Star", exact=True)
        star.click()
        page.wait_for_selector("#star[aria-pressed='true']")
        filters.get_by_role("button", name="Starred").click()
        row.filter(has_text=second_seller).wait_for(state="detached")
        assert row.filter(has_text=first_seller).count() == 1
        assert rest(service, first_seller, "GET", "/conversations")["conversations"][0]["starred"] is False

        filters.get_by_role("button", name="All").click()
        row.filter(has_text=second_seller).wait_for()
        inbox.get_by_role("button", name=re.compile(second_seller)).click()
        page.get_by_role("button", name="Archive", exact=True).click()
        page.wait_for_selector("#archive[aria-pressed='true']")
        row.filter(has_text=second_seller).wait_for(state="detached")  # All leaves the archive out
        filters.get_by_role("button", name="Archived").click()
        row.filter(has_text=second_seller).wait_for()
        assert row.filter(has_text=first_seller).count() == 0

        page.get_by_role("search").get_by_label("Search messages").fill("pastel logo")
        page.get_by_role("search").get_by_role("button", name="Search").click()
        results = page.locator("#search-list li")
        results.filter(has_text=f"the pastel logo {run}").wait_for()
        assert results.count() == 1

        # Mark unread: the page goes back to the inbox and the server counts it unread for the buyer alone.
        filters.get_by_role("button", name="All").click()
        inbox.get_by_role("button", name=re.compile(first_seller)).click()
        page.get_by_role("button", name="Mark unread").click()
        page.locator(f"#conversations li[data-unread='1']:has-text('{first_seller}')").wait_for()
        marked = rest(service, buyer_id, "GET", "/conversations?filter=unread")["conversations"]
        assert [c["counterpart"]["id"] for c in marked] == [first_seller]

        # A new message from the other side takes the conversation out of the archive.
        archived = rest(service, buyer_id, "GET", "/conversations?filter=archived")["conversations"][0]
        rest(
            service,
            second_seller,
            "POST",
            f"/conversations/{archived['id']}/messages",
            {"client_id": "again", "text": "hi"},
        )
        filters.get_by_role("button", name="All").click()
        row.filter(has_text=second_seller).wait_for()
        assert buyer.problems == []
    finally:
        buyer.close()


def test_a_buyer_blocks_the_seller_from_the_page_and_nobody_can_send_until_unblocked(
    service: RunningService,
    browser: Any,  # noqa: F811
) -> None:
    run = uuid.uuid4().hex[:6]
    buyer_id, seller_id = f"buyer-{run}", f"pushy-seller-{run}"
    opened = rest(service, buyer_id, "POST", "/conversations", {"buyer_id": buyer_id, "seller_id": seller_id})
    path = f"/conversations/{opened['id']}/messages"
    rest(service, seller_id, "POST", path, {"client_id": f"{run}-1", "text": "buy my other gigs"})
    buyer = Person(browser, service, buyer_id, viewport=(390, 740))  # on a phone, where people block
    try:
        page = buyer.page
        page.get_by_role("list", name="Conversations").get_by_role("button", name=re.compile(seller_id)).click()
        messages(buyer).filter(has_text="buy my other gigs").wait_for()
        block = page.get_by_role("button", name="Block", exact=True)
        block.click()
        page.wait_for_selector("#block[aria-pressed='true']")
        notice = page.get_by_role("status").filter(has_text="neither of you can send messages here")
        notice.wait_for()
        assert page.get_by_role("button", name="Send", exact=True).is_disabled()
        assert page.get_by_role("textbox", name="Message", exact=True).is_disabled()
        check_accessibility(buyer, "a conversation the buyer blocks, on a phone")
        screenshot(buyer, "phone-blocked")
        assert [b["user_id"] for b in rest(service, buyer_id, "GET", "/blocks")["blocks"]] == [seller_id]
        # The other side is refused by the server, not only by this page.
        with pytest.raises(urllib.error.HTTPError) as refused:
            rest(service, seller_id, "POST", path, {"client_id": f"{run}-2", "text": "hello?"})
        assert refused.value.code == 403 and json.loads(refused.value.read())["error"]["code"] == "blocked"

        block.click()
        page.wait_for_selector("#block[aria-pressed='false']")
        notice.wait_for(state="hidden")
        send(buyer, f"fine, what is it {run}")
        messages(buyer).filter(has_text=f"fine, what is it {run}").wait_for()
        assert rest(service, buyer_id, "GET", "/blocks")["blocks"] == []
        assert buyer.problems == []
    finally:
        buyer.close()
