"""
The worked example of C{docs/testing.rst} runs and passes: its first code
block is extracted, executed, and its test case run.
"""

from __future__ import annotations

import os
import textwrap
import unittest
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

_DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def code_blocks(path: str) -> list[str]:
    """
    @return: the literal blocks (after a line ending in C{::}) of an RST
        file, dedented.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks = []
    index = 0
    while index < len(lines):
        if lines[index].rstrip().endswith("::"):
            index += 1
            block = []
            while index < len(lines) and (not lines[index].strip() or lines[index].startswith(" ")):
                block.append(lines[index])
                index += 1
            blocks.append(textwrap.dedent("\n".join(block)).strip("\n"))
        else:
            index += 1
    return blocks


class WorkedExampleTests(SynchronousTestCase):
    def test_worked_example_passes(self) -> None:
        blocks = code_blocks(os.path.join(_DOCS, "testing.rst"))
        example = next(block for block in blocks if "class CounterTests" in block)
        namespace: dict[str, Any] = {"__name__": "docs_testing_example"}
        exec(compile(example, "docs/testing.rst", "exec"), namespace)
        suite = unittest.defaultTestLoader.loadTestsFromTestCase(namespace["CounterTests"])
        result = unittest.TestResult()
        suite.run(result)
        self.assertEqual(result.testsRun, 2)
        problems = [text for _, text in result.failures + result.errors]
        self.assertEqual(problems, [], "\n".join(problems))
