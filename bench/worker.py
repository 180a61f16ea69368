"""Entry point of one trial process: `python -m bench.worker TRIAL_JSON OUT_JSON [--gpu|--cpu]`.

Reads a Trial, runs it with bench.runner in this fresh process, writes the trial record to
OUT_JSON atomically. Exit code 0 whenever a record was written, whatever its status.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.worker")
    ap.add_argument("trial_json", type=pathlib.Path)
    ap.add_argument("out_json", type=pathlib.Path)
    ap.add_argument("--executor", default="process")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--gpu", dest="gpu", action="store_const", const=True)
    g.add_argument("--cpu", dest="gpu", action="store_const", const=False)
    args = ap.parse_args(argv)

    from bench.runner import run_trial
    from bench.store import write_json_atomic
    from bench.trial import Trial

    trial = Trial.from_dict(json.loads(args.trial_json.read_text()))
    record = run_trial(trial, executor=args.executor, gpu=args.gpu)
    write_json_atomic(args.out_json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
