"""torch.distributed all_reduce (sum) with the gloo backend on loopback: the reference side of
bench/allreduce.sh (issue 4 point 7). One process per rank (torch.multiprocessing spawn),
float32 tensors, the same sizes, ranks, warm-up and repetitions as the Rust bench
(worker/benches/ring_bandwidth.rs), and the same timing: a barrier before each iteration, each
rank times its own all_reduce, an iteration's time is the slowest rank's, the median over the
repetitions; the CPU time of an iteration (getrusage: user, and user + system) summed over the
ranks, their medians. Prints one JSON line per (n, size) in the Rust bench's format.

    bench/.venv/bin/python bench/allreduce_gloo.py
Environment: RANKS ("2 3 4"), SIZES_MIB ("1 4 16 64 256"), REPS (5), WARMUP (2).
"""

import json
import os
import resource
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MIB = 1 << 20


def env_list(name, default):
    return [int(v) for v in os.environ.get(name, default).replace(",", " ").split()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_times():
    """CPU time of this process (user, system), all threads: as the Rust bench's getrusage."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def upper_median(values):
    """The median as the Rust bench takes it: the upper middle value."""
    return sorted(values)[len(values) // 2]


def rank_main(rank, n, port, sizes, warmup, reps):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=n
    )
    for mib in sizes:
        # Small values, as in the Rust bench, so that repeated sums stay finite.
        buf = torch.full((mib * MIB // 4,), (rank + 1) * 1e-6, dtype=torch.float32)
        times, cpus = [], []
        for _ in range(warmup + reps):
            dist.barrier()
            before = cpu_times()
            t = time.perf_counter()
            dist.all_reduce(buf)
            times.append(time.perf_counter() - t)
            after = cpu_times()
            cpus.append([after[0] - before[0], after[1] - before[1]])
        slowest = torch.tensor(times[warmup:], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        total_cpu = torch.tensor(cpus[warmup:], dtype=torch.float64)  # [reps, (user, system)]
        dist.all_reduce(total_cpu, op=dist.ReduceOp.SUM)
        if rank == 0:
            times, cpus = slowest.tolist(), total_cpu.tolist()
            median = upper_median(times)
            algbw = mib * MIB / median / 1e9
            busbw = algbw * 2 * (n - 1) / n
            line = {"impl": "gloo", "n": n, "bytes": mib * MIB, "size_mib": mib,
                    "chunk_len": None, "reps": len(times), "median_s": median,
                    "algbw_gbps": algbw, "busbw_gbps": busbw, "times_s": times,
                    "cpu_s": upper_median([u + s for u, s in cpus]),
                    "cpu_user_s": upper_median([u for u, _ in cpus])}
            print(json.dumps(line), flush=True)
            print(f"gloo n={n} {mib} MiB: busbw {busbw:.3f} GB/s", file=sys.stderr, flush=True)
    dist.destroy_process_group()


def main():
    # Loopback only: gloo otherwise picks the interface the host name resolves to.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    sizes = env_list("SIZES_MIB", "1 4 16 64 256")
    reps = max(1, env_list("REPS", "5")[0])
    warmup = env_list("WARMUP", "2")[0]
    for n in env_list("RANKS", "2 3 4"):
        mp.spawn(rank_main, args=(n, free_port(), sizes, warmup, reps), nprocs=n, join=True)


if __name__ == "__main__":
    main()
