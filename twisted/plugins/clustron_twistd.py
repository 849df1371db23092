"""
Registers ``twistd clustron``.
"""

from twisted.application.service import ServiceMaker

clustron = ServiceMaker(
    "Clustron node",
    "clustron.tap",
    "Run a Clustron cluster node (see --help for its options).",
    "clustron",
)
