"""Ids that must be unique, not secret: a random head drawn per process and a counter.

`uuid.uuid4().hex` costs a `getrandom` system call and about 2 µs of Python a call; a
Responses answer made two. These cost a counter step and a format: unique across workers,
instances and restarts (the head is random, drawn again in a forked child by
`os.register_at_fork`: ids are a property of the process, not of an object).
"""

from __future__ import annotations

import itertools
import os


class ProcessIds:
    __slots__ = ("_counter", "_head", "_random_bytes", "_template")

    def __init__(self, template: str, random_bytes: int) -> None:
        """`template`: the head around `{random}` (hex of `random_bytes` random bytes)."""
        self._template = template
        self._random_bytes = random_bytes
        self._head = ""
        self._counter = itertools.count(1)
        self.draw()
        os.register_at_fork(after_in_child=self.draw)

    def draw(self) -> None:
        self._head = self._template.format(random=os.urandom(self._random_bytes).hex())
        self._counter = itertools.count(1)

    def next(self) -> str:
        """A fresh id: the head, then the counter in hex."""
        return f"{self._head}{next(self._counter):x}"
