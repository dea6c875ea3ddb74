"""Child process of the hang test: serves, then keeps serving and shuts down while the server is hung.

    python -m tests.reliability.child_hang URL SPILL DIR

Serves 100 requests, writes ``DIR/ready``, waits for ``DIR/go`` (the parent
has SIGSTOPped the server), serves 300 more, waits until its writer reports
the store down, closes the Selector and exits (daemon threads die with the
interpreter, as in a real shutdown). Prints ``writer_down <seconds>`` and
``close <seconds>``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main() -> None:
    url, spill, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    from stopbandit import Selector
    from stopbandit.config import SelectorConfig, StoreConfig

    cfg = SelectorConfig(seed=0, store=StoreConfig(spill_path=spill, timeout=1.0, retry_interval=0.1,
                                                   flush_interval=0.02))
    sel = Selector.open(url, config=cfg, follow=False)
    for i in range(100):
        d = sel.choose("q", domain="math", request_id=f"before-{i}")
        sel.reward(d.decision_id, em=1.0, tokens=i)
    sel.flush(10)
    (work / "ready").touch()
    while not (work / "go").exists():
        time.sleep(0.01)
    t = time.monotonic()
    for i in range(300):
        d = sel.choose("q", domain="math", request_id=f"hung-{i}")
        sel.reward(d.decision_id, em=1.0, tokens=i)
    while sel.writer.health().store_ok and time.monotonic() - t < 30:
        time.sleep(0.01)
    print(f"writer_down {time.monotonic() - t:.3f}" if not sel.writer.health().store_ok else "writer_down never",
          flush=True)
    t = time.monotonic()
    sel.close()
    print(f"close {time.monotonic() - t:.3f}", flush=True)


if __name__ == "__main__":
    main()
