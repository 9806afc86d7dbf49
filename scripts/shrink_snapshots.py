"""Copy a snapshot folder keeping only the rows that ``trail train`` can read.

Training and validation read, per window, the top ``--top`` items under the adapter's prior
(``--rescore-top``, 50 by default). Keeping the union of the top rows under *every* prior
therefore gives exactly the same examples for any ``--prior``, in a folder about a tenth of
the size: small enough to carry to a GPU machine that cannot download the data itself.
Every window folder is kept (the held-out windows too), so the train/validation/held-out
split is unchanged.

Usage: python scripts/shrink_snapshots.py SRC DST [--top 50]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.priors import PRIORS, prior_log_count  # noqa: E402
from schemas import WindowSnapshotRow  # noqa: E402


def shrink(source: Path, destination: Path, top: int) -> tuple[int, int]:
    """Write the shrunk copy; returns (rows read, rows kept)."""
    files = sorted(source.glob("window_end=*/*.parquet"))
    if not files:
        raise SystemExit(f"{source} holds no window_end=*/ Parquet files")
    fields = set(WindowSnapshotRow.model_fields)
    read = kept = 0
    for path in files:
        table = pq.read_table(path)
        rows = [
            WindowSnapshotRow.model_validate({k: v for k, v in r.items() if k in fields})
            for r in table.to_pylist()
        ]
        keep: set[int] = set()
        for prior in PRIORS:
            order = sorted(
                range(len(rows)), key=lambda i: (-prior_log_count(rows[i], prior), rows[i].item_id)
            )
            keep.update(order[:top])
        out = destination / path.parent.name
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(pa.array(sorted(keep), type=pa.int64())), out / path.name)
        read += len(rows)
        kept += len(keep)
    return read, kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    parser.add_argument("--top", type=int, default=50, help="trail train's --rescore-top")
    args = parser.parse_args()
    read, kept = shrink(args.source, args.destination, args.top)
    print(f"{args.source} -> {args.destination}: kept {kept:,} of {read:,} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
