"""Child process of the crash tests: serves decisions and rewards until it is killed.

After each ``choose`` and each ``reward`` returns, it appends ``d|o <id>
<monotonic time>`` to the ack file with one unbuffered ``write`` (which a
``kill -9`` cannot tear or lose), so the parent knows exactly what was
acknowledged and when.

``--slow-fsync S`` makes every ``os.fsync`` of the process (the spill's)
take S seconds longer: a slow or contended disk.

    python -m tests.reliability.child_serve URL ACKS SPILL [--durable] [--flush-interval S] [--outage-flag PATH]
        [--slow-fsync S] [--timeout S]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("acks")
    ap.add_argument("spill")
    ap.add_argument("--durable", action="store_true")
    ap.add_argument("--flush-interval", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=5.0, help="[store] timeout: the deadline of a database call")
    ap.add_argument("--outage-flag", default=None, help="SQLite: the store is 'down' while this file exists")
    ap.add_argument("--slow-fsync", type=float, default=0.0, help="seconds added to every os.fsync (a slow disk)")
    args = ap.parse_args()

    if args.slow_fsync:
        real_fsync = os.fsync

        def slow_fsync(fd: int) -> None:
            time.sleep(args.slow_fsync)
            real_fsync(fd)

        os.fsync = slow_fsync

    from stopbandit import Selector
    from stopbandit.config import SelectorConfig, StoreConfig

    cfg = SelectorConfig(seed=0, store=StoreConfig(spill_path=args.spill, durable=args.durable,
                                                   flush_interval=args.flush_interval, retry_interval=0.1,
                                                   timeout=args.timeout))
    sel = Selector.open(args.url, config=cfg, follow=False)
    if args.outage_flag:
        from tests.reliability.helpers import install_sqlite_outage

        flag = args.outage_flag
        install_sqlite_outage(sel.store.engine, lambda: os.path.exists(flag), watch=True)
    fd = os.open(args.acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, b"ready\n")
    i = 0
    while True:
        key = f"c{i}"
        sel.choose("what is 2+2", domain="math", request_id=key)
        os.write(fd, f"d {key} {time.monotonic():.6f}\n".encode())
        sel.reward(key, em=1.0, tokens=i)
        os.write(fd, f"o {key} {time.monotonic():.6f}\n".encode())
        i += 1


if __name__ == "__main__":
    main()
