"""`ProcessIds`: unique in a process, and a forked child draws a head of its own (a worker of
`serve --workers N` is a fork: without that, two workers would hand out the same ids)."""

from __future__ import annotations

import os

from proxy.ids import ProcessIds


def test_ids_are_unique_and_a_forked_child_draws_its_own_head() -> None:
    ids = ProcessIds("x:{random}:", 10)
    made = [ids.next() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    head = made[0][: len("x:") + 20]
    assert all(i.startswith(head) for i in made)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then out without running the parent's cleanup
        os.write(write, ids.next().encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = os.read(read, 200).decode()
    os.close(read)
    assert status == 0 and child.startswith("x:") and not child.startswith(head)
    assert child.endswith(":1")  # its counter starts again too
