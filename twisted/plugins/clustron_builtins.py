"""
Clustron's built-in plugins, registered with Twisted's plugin system.

Every module imported here imports its optional dependencies lazily, so this
file always imports: a plugin module that fails to import vanishes silently
from Twisted's plugin lookup.
"""

from clustron.discovery.consul import consul_discovery
from clustron.discovery.dns import dns_discovery
from clustron.discovery.etcd import etcd_discovery
from clustron.discovery.mdns import mdns_discovery
from clustron.discovery.static import static_discovery
from clustron.election.bully import bully_election
from clustron.serializers.json import json_serializer
from clustron.serializers.msgpack import msgpack_serializer
from clustron.serializers.protobuf import protobuf_serializer
from clustron.transport.sim import sim_transport
from clustron.transport.tcp import tcp_transport
from clustron.transport.tls import tls_transport

__all__ = [
    "bully_election",
    "consul_discovery",
    "dns_discovery",
    "etcd_discovery",
    "mdns_discovery",
    "msgpack_serializer",
    "protobuf_serializer",
    "json_serializer",
    "sim_transport",
    "static_discovery",
    "tcp_transport",
    "tls_transport",
]
