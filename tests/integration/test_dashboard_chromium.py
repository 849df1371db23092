"""
The dashboard (C{GET /}) in real headless Chromium against a live cluster of
three C{twistd -n clustron} processes: it renders the members, shows a node
killed with C{kill -9} turning dead, carries out a drain, and makes a 403
for a token with a low role plain.

Chromium is Debian's C{/usr/bin/chromium}, driven by the C{playwright}
Python package (its own browser downloads are never used). The tests skip,
saying why, when either is missing.

Set C{CLUSTRON_UPDATE_SCREENSHOT=1} to also write the final screenshot to
C{docs/_static/dashboard.png} (the operations guide shows it); otherwise it
goes to the test's temporary directory only.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from clustron.testkit.processes import ProcessCluster

CHROMIUM = "/usr/bin/chromium"

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: Where the operations guide's screenshot lives.
SCREENSHOT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "docs",
    "_static",
    "dashboard.png",
)

#: Generous bound for the processes to start and form one view.
SETTLE = 30.0

#: The LAN profile declares a member dead 1.6 s after it stops answering;
#: the page learns of it from the event stream at once (or from its poll,
#: every 3 s). This bounds the whole chain with a wide margin.
DEAD_SHOWN_WITHIN = 10.0

#: Bound, in milliseconds, for any one wait on the page.
PAGE_TIMEOUT_MS = 15_000

VIEWER_TOKEN = "viewer-token-for-the-dashboard-test"


def _playwright() -> Any:
    if not os.path.exists(CHROMIUM):
        raise SkipTest(
            f"{CHROMIUM} is missing (Debian package 'chromium': apt-get install chromium)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SkipTest(
            "the playwright Python package is missing (pip install playwright; "
            "its browser download is not needed)"
        ) from None
    return sync_playwright


class DashboardInChromiumTests(TestCase):
    """
    The dashboard of node C{n1} of a live three-node cluster.
    """

    timeout = 120

    def setUp(self) -> None:
        self.sync_playwright = _playwright()
        self.cluster = ProcessCluster(
            3,
            directory=self.mktemp(),
            token="admin-token-for-the-dashboard-test",
            overrides={
                "admin": {
                    "tokens": [
                        {
                            "name": "harness",
                            "role": "admin",
                            "token": "admin-token-for-the-dashboard-test",
                        },
                        {"name": "watcher", "role": "viewer", "token": VIEWER_TOKEN},
                    ]
                }
            },
        )
        self.addCleanup(self.cluster.stop)

    def test_live_cluster(self) -> Any:
        """
        The page shows the three members and the coordinator; a viewer's
        drain is refused with the 403 message shown and the actions
        disabled; a node killed with C{kill -9} is shown dead within the
        detection time; an admin's drain shows the member draining.
        """
        return deferToThread(self._live_cluster)

    def _launch(self, playwright: Any) -> Any:
        return playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=PAGE_TIMEOUT_MS
        )

    def _open(self, browser: Any, token: str, errors: list[str]) -> Any:
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, color_scheme="light")
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{self.cluster.admin_url('n1')}/?token={token}")
        return page

    def _live_cluster(self) -> None:
        cluster = self.cluster
        cluster.start()
        view = cluster.wait_formed(timeout=SETTLE)
        coordinator = view["coordinator"]
        errors: list[str] = []
        with self.sync_playwright() as playwright:
            browser = self._launch(playwright)
            try:
                page = self._open(browser, cluster.token, errors)
                self._renders_members(page, coordinator)
                self._viewer_is_refused(browser, errors)
                victim = "n2"
                self._kill_shows_dead(page, victim)
                drained = "n3"
                self._drain(page, drained)
                path = self._screenshot(page)
                self.assertTrue(os.path.getsize(path) > 10_000, path)
            finally:
                browser.close()
        self.assertEqual(errors, [], "the page raised JavaScript errors")

    def _renders_members(self, page: Any, coordinator: str) -> None:
        rows = "#members-body tr[data-node-id]"
        page.wait_for_function(
            "n => document.querySelectorAll(n).length === 3", arg=rows + '[data-state="alive"]'
        )
        ids = page.eval_on_selector_all(rows, "rows => rows.map(r => r.dataset.nodeId)")
        self.assertEqual(sorted(ids), ["n1", "n2", "n3"])
        # The token left the address bar once the page took it.
        self.assertNotIn("token=", page.url)
        # The drawing: three members, the coordinator marked, lines to both peers.
        self.assertEqual(page.locator("#topology-nodes g.node.state-alive").count(), 3)
        marked = page.eval_on_selector_all(
            "#topology-nodes g.node.coordinator", "nodes => nodes.map(n => n.dataset.nodeId)"
        )
        self.assertEqual(marked, [coordinator])
        self.assertEqual(page.locator("#topology-nodes g.coordinator path.crown-shape").count(), 1)
        page.wait_for_function(
            "() => document.querySelectorAll('#topology-edges line.edge-up').length === 2"
        )
        self.assertEqual(page.locator("#quorum-banner").get_attribute("data-has-quorum"), "true")
        self.assertIn("Quorum held", page.inner_text("#quorum-banner"))
        self.assertEqual(page.inner_text("#observer-id"), "n1")
        page.wait_for_selector("#stream-status.pill-live")

    def _viewer_is_refused(self, browser: Any, errors: list[str]) -> None:
        page = self._open(browser, VIEWER_TOKEN, errors)
        try:
            page.wait_for_selector('#members-body tr[data-node-id="n2"]')
            page.click('button[data-action="drain"][data-node="n2"]')
            page.click("#confirm-ok")
            notice = page.wait_for_selector("#notice.notice-error")
            message = notice.inner_text()
            self.assertIn("Permission denied", message)
            self.assertIn("operator", message)
            self.assertIn("viewer", message)
            # Having learnt the role, the page disables every action and says why.
            page.wait_for_function(
                "() => [...document.querySelectorAll('#dashboard button[data-action]')]"
                ".every(b => b.disabled)"
            )
            self.assertIn("viewer", page.inner_text("#role-note"))
            doc = self.cluster.cluster_doc("n1")
            assert doc is not None
            self.assertFalse(
                any(m["draining"] for m in doc["view"]["members"]), "a viewer drained a member"
            )
        finally:
            page.close()

    def _kill_shows_dead(self, page: Any, victim: str) -> None:
        self.cluster.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        page.wait_for_selector(
            f'#members-body tr[data-node-id="{victim}"][data-state="dead"]',
            timeout=DEAD_SHOWN_WITHIN * 1000,
        )
        elapsed = time.monotonic() - killed
        self.assertLess(elapsed, DEAD_SHOWN_WITHIN)
        page.wait_for_selector(f'#topology-nodes g.node.state-dead[data-node-id="{victim}"]')
        page.wait_for_selector(f'#topology-edges line.edge-down[data-peer="{victim}"]')
        died = page.locator('#events li[data-type="member_died"]')
        died.first.wait_for()
        self.assertIn(victim, died.first.inner_text())
        reason = page.inner_text(f'#members-body tr[data-node-id="{victim}"] td.reason')
        self.assertIn("dead", reason)

    def _drain(self, page: Any, node_id: str) -> None:
        page.click(f'button[data-action="drain"][data-node="{node_id}"]')
        self.assertIn(node_id, page.inner_text("#confirm-text"))
        page.click("#confirm-ok")
        page.wait_for_selector(f'#members-body tr[data-node-id="{node_id}"][data-draining="true"]')
        page.wait_for_selector(f'#topology-nodes g.node.draining[data-node-id="{node_id}"]')
        notice = page.wait_for_selector("#notice.notice-ok")
        self.assertIn(f"Drain {node_id}", notice.inner_text())
        page.locator('#events li[data-type="member_draining"]').first.wait_for()
        doc = self.cluster.cluster_doc("n1")
        assert doc is not None
        drained = {m["node_id"]: m["draining"] for m in doc["view"]["members"]}
        self.assertTrue(drained[node_id])
        # Success says nothing against the admin role: remove stays offered.
        remove = page.locator(f'button[data-action="remove"][data-node="{node_id}"]')
        self.assertTrue(remove.is_enabled())
        # A draining member is never coordinator: the page shows who took over.
        page.wait_for_function(
            "n => { const c = document.querySelector('#topology-nodes g.node.coordinator');"
            " return c !== null && c.dataset.nodeId !== n; }",
            arg=node_id,
        )

    def _screenshot(self, page: Any) -> str:
        page.wait_for_selector("#notice.notice-ok")
        page.evaluate("() => { document.getElementById('notice').hidden = true; }")
        path = os.path.abspath(self.mktemp() + ".png")
        page.screenshot(path=path, full_page=True)
        if os.environ.get("CLUSTRON_UPDATE_SCREENSHOT") == "1":
            os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
            page.screenshot(path=SCREENSHOT, full_page=True)
        return path
