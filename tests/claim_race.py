"""Helper for tests/test_faults.py: CONTENDERS processes claim one stopped run at the same moment, ROUNDS times.

``python claim_race.py URI RUN_ID ROUNDS CONTENDERS`` prints one JSON line per round: which contenders won and
which were refused. Between rounds the winner ends the run (as a resumed attempt does), which frees it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys


def contender(index: int, uri: str, run_id: str, rounds: int, start: mp.Barrier, claimed: mp.Barrier,
              ended: mp.Barrier, results: mp.Queue) -> None:
    from labbook.run.owners import RunClaimed, claim
    from labbook.run.recorder import Recorder
    from labbook.store.read import open_reader

    for number in range(rounds):
        run = open_reader(uri).find_run(run_id)
        start.wait()
        try:
            attempt = claim(uri, run)
            won = True
        except RunClaimed as exc:
            attempt, won = str(exc), False
        claimed.wait()
        if won:
            Recorder.for_run(uri, run_id).end("KILLED", "the attempt ended")
        results.put({"round": number, "contender": index, "won": won, "attempt": attempt})
        ended.wait()


if __name__ == "__main__":
    uri, run_id, rounds, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ctx = mp.get_context("spawn")
    barriers = [ctx.Barrier(n) for _ in range(3)]
    results = ctx.Queue()
    procs = [ctx.Process(target=contender, args=(i, uri, run_id, rounds, *barriers, results)) for i in range(n)]
    for p in procs:
        p.start()
    found = [results.get(timeout=300) for _ in range(rounds * n)]
    for p in procs:
        p.join(timeout=60)
    for number in range(rounds):
        print(json.dumps([r for r in found if r["round"] == number]))
