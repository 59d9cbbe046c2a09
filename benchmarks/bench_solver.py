"""Time the exact GeneralPoints solver on every 4-card rank multiset under both rules.

Run: PYTHONPATH=workflow python3 benchmarks/bench_solver.py [--target 24] [--num-cards 4]
Prints, per rule, the number of rank multisets, the share solvable, and the time for
solvability plus one solution each (caches cleared before the run, so the time is cold); the
total also gives CPU time, which a busy machine disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import time
from itertools import combinations_with_replacement

from sftvsrl.tasks.gp import FACE_RANKS, RANKS, card_value
from sftvsrl.tasks.gp_solver import clear_caches, one_solution, solvable


def run(target: int, num_cards: int) -> float:
    clear_caches()
    multisets = list(combinations_with_replacement(RANKS, num_cards))
    start, cpu_start = time.perf_counter(), time.process_time()
    for rule in ("id", "ood"):
        t0 = time.perf_counter()
        n_ok = 0
        for ranks in multisets:
            values = [card_value(r, rule) for r in ranks]
            if solvable(values, target):
                n_ok += 1
                assert one_solution(values, target) is not None
        dt = time.perf_counter() - t0
        print(f"rule={rule}: {len(multisets)} multisets, solvable {n_ok} ({n_ok / len(multisets):.1%}), {dt:.3f} s")
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    faced = [ms for ms in multisets if any(r in FACE_RANKS for r in ms)]
    n_faced = sum(solvable([card_value(r, "ood") for r in ms], target) for ms in faced)
    print(
        f"rule=ood, >=1 face card (the eval_ood_rule pool): {len(faced)} multisets, "
        f"solvable {n_faced} ({n_faced / len(faced):.1%})"
    )
    print(f"total {total:.3f} s wall, {cpu:.3f} s CPU (target={target}, num_cards={num_cards})")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=int, default=24)
    ap.add_argument("--num-cards", type=int, default=4)
    args = ap.parse_args()
    run(args.target, args.num_cards)


if __name__ == "__main__":
    main()
