"""
Checks of the Kubernetes examples in C{examples/kubernetes/}: the node
configuration they generate is valid, and the SRV name it looks up is the
one the headless Service publishes.
"""

from __future__ import annotations

import string
from typing import Any

import yaml
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from clustron.config import NodeConfig
from clustron.discovery.dns import dns_discovery

EXAMPLES = FilePath(__file__).parent().parent().child("examples").child("kubernetes")


def load(name: str) -> dict[str, dict[str, Any]]:
    """
    The documents of a manifest by kind.
    """
    with open(EXAMPLES.child(name).path) as f:
        return {document["kind"]: document for document in yaml.safe_load_all(f)}


class ManifestTests(SynchronousTestCase):
    """
    Both manifests (StatefulSet and Deployment) are checked the same way.
    """

    def check(self, name: str, workload: str) -> None:
        documents = load(name)
        service, config_map = documents["Service"], documents["ConfigMap"]
        pods = documents[workload]
        namespace = service["metadata"]["namespace"]
        self.assertEqual(service["spec"]["clusterIP"], "None")
        self.assertTrue(service["spec"]["publishNotReadyAddresses"])
        self.assertEqual(service["spec"]["selector"], pods["spec"]["selector"]["matchLabels"])
        [port] = service["spec"]["ports"]

        template = config_map["data"]["node.yaml.in"]
        environ = {
            "POD_NAME": f"{pods['metadata']['name']}-0",
            "POD_IP": "10.244.1.7",
            "CLUSTRON_ADMIN_TOKEN": "example-token",
        }
        # The container fills the template in with os.path.expandvars; for
        # ${NAME} references string.Template does the same.
        text = string.Template(template).substitute(environ)
        config = NodeConfig.from_dict(
            yaml.safe_load(text),
            environ=environ,
            discovery_validators={"dns": dns_discovery.validate},
        )
        self.assertEqual(config.node_id, environ["POD_NAME"])
        self.assertEqual(config.advertise_address, ("10.244.1.7", port["port"]))
        self.assertEqual(
            config.discovery["dns"]["name"],
            f"_{port['name']}._{port['protocol'].lower()}.{service['metadata']['name']}"
            f".{namespace}.svc.cluster.local",
        )
        self.assertEqual(config.membership.bootstrap_expect, pods["spec"]["replicas"])

        [container] = pods["spec"]["template"]["spec"]["containers"]
        self.assertIn("/etc/clustron/node.yaml.in", container["args"][0])
        mounted = {m["mountPath"] for m in container["volumeMounts"]}
        self.assertIn("/etc/clustron", mounted)
        self.assertEqual({e["name"] for e in container["env"]}, set(environ))
        self.assertIn(port["port"], [p["containerPort"] for p in container["ports"]])

    def test_statefulset(self) -> None:
        """
        The StatefulSet example is consistent.
        """
        self.check("statefulset.yaml", "StatefulSet")
        pods = load("statefulset.yaml")["StatefulSet"]
        self.assertEqual(pods["spec"]["serviceName"], "clustron")
        self.assertEqual(pods["spec"]["podManagementPolicy"], "Parallel")

    def test_deployment(self) -> None:
        """
        The Deployment example is consistent.
        """
        self.check("deployment.yaml", "Deployment")
