"""
``twistd clustron``: options, service construction, log observer set-up.
(In integration: building the node binds it to the global reactor, though
nothing here runs it.)
"""

from __future__ import annotations

import os

from twisted.application.service import Application
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.trial.unittest import TestCase

from clustron.tap import NodeService, Options, makeService

NODE = """\
cluster_id: t
node_id: n1
listen: "tcp:17399:interface=127.0.0.1"
advertise: "127.0.0.1:17399"
logging: {{format: {fmt}, level: {level}}}
"""


class TapTests(TestCase):
    def write(self, fmt: str = "text", level: str = "info") -> str:
        path = os.path.join(self.mktemp() + ".yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(NODE.format(fmt=fmt, level=level))
        return path

    def test_config_required(self) -> None:
        with self.assertRaises(usage.UsageError) as raised:
            Options().parseOptions([])
        self.assertIn("--config", str(raised.exception))

    def test_bad_log_format(self) -> None:
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--config", "x.yaml", "--log-format", "xml"])

    def test_default_logging_keeps_twistd_observer(self) -> None:
        options = Options()
        options.parseOptions(["--config", self.write()])
        service = makeService(options)
        self.assertIsInstance(service, NodeService)
        application = Application("t")
        service.setServiceParent(application)
        self.assertIsNone(application.getComponent(ILogObserver, None))

    def test_json_logging_installs_observer(self) -> None:
        options = Options()
        options.parseOptions(["--config", self.write(fmt="json")])
        service = makeService(options)
        application = Application("t")
        service.setServiceParent(application)
        self.assertIsNotNone(application.getComponent(ILogObserver, None))

    def test_invalid_config_exits_2(self) -> None:
        path = self.write(level="loud")
        options = Options()
        options.parseOptions(["--config", path])
        with self.assertRaises(SystemExit) as raised:
            makeService(options)
        self.assertEqual(raised.exception.code, 2)
