"""The disconnect soak of tests/soak, longer and harsher: more sends, more frequent drops.

    python bench/soak.py [--sends 5000] [--gaps 0.01,0.06] [--client python|javascript|both]

Runs the same test (same devices, same proxy, same verdict) with bigger settings and prints its
figures as it goes: sends, drops, reconnects per device, seconds. Exits non-zero when any device
ended without every message exactly once, in order, with every change applied.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=5000)
    parser.add_argument("--gaps", default="0.01,0.06", help="min,max seconds between drops")
    parser.add_argument("--client", choices=["python", "javascript", "both"], default="both")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per run")
    args = parser.parse_args()
    env = {
        **os.environ,
        "SOAK_SENDS": str(args.sends),
        "SOAK_DROP_GAPS": args.gaps,
        "SOAK_TIMEOUT": str(args.timeout),
        "PYTHONPATH": str(REPO),
    }
    selection = [] if args.client == "both" else ["-k", args.client]
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/soak", *selection]
    print(f"soak: {args.sends} sends, a drop every {args.gaps} s, clients: {args.client}", flush=True)
    return subprocess.call(command, cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main())
