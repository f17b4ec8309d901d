#!/usr/bin/env python3
"""Prints the order in which the benchmark's measures run: 'RUN ITEM' per line, every item once per run.

usage: run_order.py --seed SEED --runs N [--after ITEM=FIRST ...] ITEM...
Each run's order is random (Python's random.Random(SEED), drawn run after run, so the same seed and
items give the same order), except that an ITEM named in --after ITEM=FIRST comes after FIRST in
the same run (a restore needs the file its save made): at each step one item is drawn uniformly
among those whose FIRST already ran.
"""
import argparse
import random
import sys


def main():
    parser = argparse.ArgumentParser(description="Random run order of the benchmark's measures.")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--after", action="append", default=[], metavar="ITEM=FIRST")
    parser.add_argument("items", nargs="+")
    args = parser.parse_args()
    needs = {}
    for pair in args.after:
        item, _, first = pair.partition("=")
        if item in args.items and first in args.items:
            needs[item] = first
    rng = random.Random(args.seed)
    for run in range(1, args.runs + 1):
        done, left = set(), list(args.items)
        while left:
            ready = [item for item in left if item not in needs or needs[item] in done]
            item = rng.choice(ready)
            left.remove(item)
            done.add(item)
            print(run, item)
    return 0


if __name__ == "__main__":
    sys.exit(main())
