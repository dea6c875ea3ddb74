"""QueueAge: an upper bound on the oldest queued row's wait, from the consumer's notes alone."""

from __future__ import annotations

import time

from stopbandit.replay.queue_age import QueueAge


def test_the_age_bounds_the_oldest_rows_wait_from_above_and_forgets_taken_rows():
    q = QueueAge()
    assert q.age(0) == 0.0
    q.note(0)
    t_first = time.monotonic()  # rows 0-2 are queued after the note above
    time.sleep(0.05)
    q.note(3)  # three rows queued by now
    time.sleep(0.05)
    assert q.age(3) >= time.monotonic() - t_first - 1e-3  # row 0 waited at most since the first note
    q.taken = 3  # all three taken; two more queued after the note above, made 0.1 s after the first
    time.sleep(0.02)
    age = q.age(2)
    assert 0.02 <= age <= time.monotonic() - t_first - 0.09  # measured from the later note, not the first
    assert len(q._marks) <= 3  # notes nobody needs are dropped
