"""pyarrow side of bench/decode.sh: read_table of the same columns of the same files, one thread.

Prints one JSON line like the Rust bench: rows, median seconds, rows/s, every run.
"""
import glob
import json
import statistics
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq


def main() -> None:
    data_dir, columns, runs = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    files = sorted(glob.glob(f"{data_dir}/**/*.parquet", recursive=True))
    if not files:
        sys.exit(f"no Parquet files under {data_dir}")
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    times, rows = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        rows = sum(pq.read_table(f, columns=columns, use_threads=False).num_rows for f in files)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({"rows": rows, "median_s": median, "rows_per_s": rows / median, "runs": times,
                      "pyarrow": pa.__version__}))


if __name__ == "__main__":
    main()
