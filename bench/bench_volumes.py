"""Volume figures: a 1 GiB file put into and read back from a Volume through the official client,
beside `cp` of the same file on the same disk, in one run.

- **put**: `vol.batch_upload()` + `put_file` of a 1 GiB file of random bytes (quick: 256 MiB): the
  client hashes it in 8 MiB blocks, uploads each block over HTTP, and kiln assembles the file in
  the volume (synced to disk before it answers). A fresh volume each sample, so no block is
  already held. The peer: `cp` of the file to the same disk, then `sync` of the copy (kiln's put is
  synced; the JSON also has `cp` alone).
- **get**: `vol.read_file_into_fileobj()` into a local file (what `modal volume get` does): one
  signed GET per block, streamed from the volume's file. The peer: `cp` alone (neither syncs).

MB/s are 10^6 bytes per second; median over the samples (default 3, quick 2).

    .venv/bin/python bench/bench_volumes.py [--quick] [--size-mb N] [--samples N] [--json out.json]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from common import HOME, RESULTS, arg_parser, emit, median, print_table, start_server, stop_server

MiB = 2**20


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--size-mb", type=int, help="file size in MiB (default 1024, quick 256)")
    parser.add_argument("--samples", type=int, help="samples of each figure (default 3, quick 2)")
    args = parser.parse_args()
    size = (args.size_mb or (256 if args.quick else 1024)) * MiB
    samples = args.samples or (2 if args.quick else 3)
    work = HOME / "bench-volumes"  # on the disk the volumes are on
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    source = work / "source.bin"
    _random_file(source, size)
    server = start_server(RESULTS / "logs" / f"kiln-volumes-{time.strftime('%Y%m%d-%H%M%S')}.log")
    os.environ.update(server.client_env())
    try:
        put, get = _kiln(source, work, samples)
    finally:
        stop_server(server)
    cp_synced = [
        _timed(["sh", "-c", f"cp {source} {work}/copy.bin && sync {work}/copy.bin"]) for _ in range(samples)
    ]
    cp_plain = [_timed(["cp", str(source), str(work / "copy.bin")]) for _ in range(samples)]
    shutil.rmtree(work, ignore_errors=True)

    def rate(seconds: list[float]) -> float:
        return size / median(seconds) / 1e6

    print_table(
        f"Volume put/get of a {size // MiB} MiB file: the client against kiln, and cp on the same disk",
        ["figure", "kiln", "cp + sync", "cp", "kiln / peer"],
        [
            [
                "put MB/s (peer: cp + sync)",
                rate(put),
                rate(cp_synced),
                rate(cp_plain),
                rate(put) / rate(cp_synced),
            ],
            ["get MB/s (peer: cp)", rate(get), rate(cp_synced), rate(cp_plain), rate(get) / rate(cp_plain)],
        ],
    )
    emit(
        {
            "peer": "kiln",
            "metrics": {
                "volume_put_mb_per_s": round(rate(put), 1),
                "volume_get_mb_per_s": round(rate(get), 1),
            },
            "details": {
                "size_bytes": size,
                "samples": samples,
                "cp_sync_mb_per_s": round(rate(cp_synced), 1),
                "cp_mb_per_s": round(rate(cp_plain), 1),
                "put_ratio_to_cp_sync": round(rate(put) / rate(cp_synced), 3),
                "get_ratio_to_cp": round(rate(get) / rate(cp_plain), 3),
                "put_seconds": put,
                "get_seconds": get,
            },
            "notes": [
                f"Volume put/get of {size // MiB} MiB: {rate(put):.0f} / {rate(get):.0f} MB/s; cp + sync on the "
                f"same disk {rate(cp_synced):.0f} MB/s, cp alone {rate(cp_plain):.0f} MB/s (kiln's put hashes, uploads over "
                "HTTP, assembles and syncs; its get does not sync, like cp)"
            ],
        },
        args.json,
    )


def _random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    subprocess.run(["sync", str(path)], check=True)


def _kiln(source: Path, work: Path, samples: int) -> tuple[list[float], list[float]]:
    import modal

    put, get = [], []
    for i in range(samples):
        name = f"bench-{time.time_ns()}"
        volume = modal.Volume.from_name(name, create_if_missing=True)
        volume.hydrate()
        started = time.perf_counter()
        with volume.batch_upload() as batch:
            batch.put_file(source, "/big.bin")
        put.append(time.perf_counter() - started)
        target = work / f"back-{i}.bin"
        started = time.perf_counter()
        with open(target, "wb") as f:
            volume.read_file_into_fileobj("big.bin", f)
        get.append(time.perf_counter() - started)
        if target.stat().st_size != source.stat().st_size:
            raise SystemExit(
                f"the file read back has {target.stat().st_size} bytes, not {source.stat().st_size}"
            )
        target.unlink()
        modal.Volume.objects.delete(name)
    return put, get


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
