"""Images and local files: what a re-run costs, a pip install with a warm package cache, and a
10,000-file directory mount. Standalone (starts its own `kiln server`).

Figures (targets from issue 3, printed, never asserted):
- re-run of an unchanged app: build work on the server (ImageGetOrCreate handling, summed over
  the app's images, from the server's log) — target <= 50 ms;
- `pip_install` of five small pure-Python packages with a warm package cache: the forced
  rebuild of that layer ("done in" of its step) — target <= 3 s; next to it, `uv_pip_install`
  of the same five, and on the host a plain `pip install` / `uv pip install` into a fresh
  virtualenv with warm caches, in the same run;
- a 10,000-file directory (`add_local_dir`, copy=False): `modal run` wall time and files
  uploaded (the client's own count), first run and re-run with one file changed.

    .venv/bin/python bench/bench_images.py [--quick] [--json out.json]

KILN_HOME is $KILN_BENCH_HOME (default /tmp/kiln-bench-home), shared with the other benchmarks
(the default image is built there once); don't run two benchmarks on one home at once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from common import BENCH, RESULTS

PACKAGES = ["six", "idna", "iniconfig", "tomli", "packaging"]
TARGETS = {
    "image_rerun_build_ms": "<= 50",
    "pip_install_warm_s": "<= 3",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples, 2,000 files instead of 10,000")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--files", type=int, default=None, help="files in the mounted directory")
    args = parser.parse_args()
    samples = 1 if args.quick else 3
    files = args.files or (2_000 if args.quick else 10_000)

    server = Server.start(RESULTS / "logs" / f"kiln-images-{time.strftime('%Y%m%d-%H%M%S')}.log")
    try:
        result = run(server, samples, files)
    except BaseException:
        print(f"kiln server log tail ({server.log_path}):\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        server.stop()
    result["details"]["server_log"] = str(server.log_path)
    print_result(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


def run(server: Server, samples: int, files: int) -> dict[str, Any]:
    details: dict[str, Any] = {"samples": samples, "files": files, "packages": PACKAGES}
    print("images: warm-up (builds the images once; the default image too on a new home) ...", flush=True)
    t = time.perf_counter()
    server.modal_run("imports")
    server.modal_run("uv_imports")
    details["warmup_s"] = round(time.perf_counter() - t, 1)

    # 1. an unchanged re-run: what the server spends on images.
    rerun_ms, rerun_wall = [], []
    for _ in range(samples):
        mark = server.log_size()
        t = time.perf_counter()
        server.modal_run("imports")
        rerun_wall.append(time.perf_counter() - t)
        answered = [
            float(x)
            for x in re.findall(
                r"ImageGetOrCreate \S+: ready, answered in ([\d.]+) ms", server.log_since(mark)
            )
        ]
        assert answered, "the server log has no ImageGetOrCreate lines (KILN_LOG=INFO?)"
        rerun_ms.append(sum(answered))
        details["rerun_images"] = len(answered)
    print(f"images: unchanged re-run: {statistics.median(rerun_ms):.1f} ms of image work", flush=True)

    # 2. the pip_install layer rebuilt (force_build) with a warm package cache; uv next to it.
    pip_s = [
        server.forced_step_seconds("imports", "BENCH_FORCE_PIP", "RUN python -m pip install")
        for _ in range(samples)
    ]
    uv_s = [
        server.forced_step_seconds("uv_imports", "BENCH_FORCE_UV", "RUN /.uv/uv pip install")
        for _ in range(samples)
    ]
    print(
        f"images: pip_install (warm cache): {statistics.median(pip_s):.2f} s, uv_pip_install {statistics.median(uv_s):.2f} s",
        flush=True,
    )

    # 3. the same five packages on the host, into fresh virtualenvs, warm caches.
    host_pip = host_install(["pip"], samples)
    host_uv = host_install(["uv"], samples)
    print(f"images: host pip {host_pip:.2f} s, host uv {host_uv:.2f} s", flush=True)

    # 4. a directory of many files, mounted: first run, then one file changed.
    with tempfile.TemporaryDirectory(prefix="kiln-bench-files-") as tmp:
        root = Path(tmp) / "data"
        for i in range(files):
            path = root / f"d{i // 500:03d}" / f"f{i:05d}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{tmp} file {i}\n")
        env = {"BENCH_MOUNT_DIR": str(root)}
        first = server.modal_run("count_files", env, debug=True)
        (root / "d003" / "f01500.txt").write_text(f"changed at {time.time()}\n")
        again = server.modal_run("count_files", env, debug=True)
        same = server.modal_run("count_files", env, debug=True)
    for label, run_ in (("first", first), ("rerun", again), ("unchanged", same)):
        assert f"result: {files}" in run_.stdout, run_.stdout[-2000:]
        print(
            f"images: {files} files, {label} run: {run_.seconds:.2f} s, {uploaded(run_)} files uploaded",
            flush=True,
        )

    details.update(
        rerun_build_ms_samples=[round(x, 2) for x in rerun_ms],
        rerun_modal_run_wall_s=round(statistics.median(rerun_wall), 2),
        pip_install_warm_samples_s=pip_s,
        uv_pip_install_warm_samples_s=uv_s,
        mount_unchanged_rerun_s=round(same.seconds, 2),
        mount_unchanged_rerun_uploaded=uploaded(same),
        mount_first_client_mount_s=client_mount_seconds(first),
    )
    return {
        "peer": "kiln-images",
        "metrics": {
            "image_rerun_build_ms": round(statistics.median(rerun_ms), 2),
            "pip_install_warm_s": round(statistics.median(pip_s), 2),
            "uv_pip_install_warm_s": round(statistics.median(uv_s), 2),
            "host_pip_venv_warm_s": round(host_pip, 2),
            "host_uv_venv_warm_s": round(host_uv, 2),
            "mount_files_first_s": round(first.seconds, 2),
            "mount_files_first_uploaded": uploaded(first),
            "mount_files_rerun_one_changed_s": round(again.seconds, 2),
            "mount_files_rerun_one_changed_uploaded": uploaded(again),
            "mount_files_rerun_client_mount_s": client_mount_seconds(again),
        },
        "details": details,
        "notes": [
            "image_rerun_build_ms: server time answering ImageGetOrCreate for every image of an unchanged "
            f"re-run ({details['rerun_images']} images), summed; the whole `modal run` took "
            f"{details['rerun_modal_run_wall_s']} s (client start-up, app creation, the call)",
            "pip/uv_pip_install_warm_s: the forced rebuild of that one layer with kiln's warm pip/uv cache, as the "
            "build log's `done in` reports it (sandbox start, install, layer commit)",
            "host_*_venv_warm_s: `pip install` / `uv pip install` of the same packages into a fresh virtualenv on "
            "this machine, caches warm, the virtualenv's creation not counted",
            f"mount_files_*: wall time of a whole `modal run` with a {files}-file directory mounted (copy=False); "
            "uploaded = the client's own count of files it sent; client_mount_s = how long the client itself "
            "spent loading that mount (hashing every file and asking the server which are new): most of a re-run",
        ],
    }


class Run(subprocess.CompletedProcess[str]):
    seconds: float


def uploaded(result: Run) -> int:
    return sum(int(n) for n in re.findall(r"Uploaded (\d+) new files", result.stdout + result.stderr))


def client_mount_seconds(result: Run) -> float:
    """The longest mount load the client reports (hashing every file, asking which are new, uploading)."""
    found = re.findall(r"Uploaded \d+ new files and \d+ bytes in ([\d.]+)s", result.stdout + result.stderr)
    return round(max(float(x) for x in found), 2)


def host_install(tool: list[str], samples: int) -> float:
    """Median seconds of installing PACKAGES into a fresh virtualenv (the first, cache-warming run excluded)."""
    python = shutil.which("python3.11") or sys.executable
    times = []
    for attempt in range(samples + 1):
        with tempfile.TemporaryDirectory(prefix="kiln-bench-venv-") as tmp:
            venv = Path(tmp) / "venv"
            if tool == ["uv"]:
                subprocess.run(["uv", "venv", "-q", "--python", python, str(venv)], check=True, env=_uv_env())
                argv = ["uv", "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *PACKAGES]
            else:
                subprocess.run([python, "-m", "venv", str(venv)], check=True)
                argv = [
                    str(venv / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    *PACKAGES,
                ]
            t = time.perf_counter()
            subprocess.run(argv, check=True, env=_uv_env(), capture_output=True)
            if attempt:  # the first run warms the cache
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def _uv_env() -> dict[str, str]:
    uv_dir = str(Path(sys.executable).parent)  # the uv kiln itself uses, from the project's venv
    return {**os.environ, "PATH": f"{uv_dir}:{os.environ['PATH']}"}


class Server:
    """A `kiln server` subprocess on HOME (bench/common.py), and `modal run` of the bench app against it."""

    def __init__(self, server: common.Server) -> None:
        self.server = server
        self.process = server.process
        self.log_path = server.log_path

    @classmethod
    def start(cls, log_path: Path) -> Server:
        return cls(common.start_server(log_path))

    def stop(self) -> None:
        common.stop_server(self.server)

    def modal_run(self, which: str, env: dict[str, str] | None = None, debug: bool = False) -> Run:
        client_env = {
            **os.environ,
            **self.server.client_env(),
            **({"MODAL_LOGLEVEL": "DEBUG"} if debug else {}),
            **(env or {}),
        }
        t = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "modal", "run", "bench_images_app.py", "--which", which],
            cwd=BENCH, env=client_env, capture_output=True, text=True, timeout=1800, check=False,
        )  # fmt: skip
        result = Run(done.args, done.returncode, done.stdout, done.stderr)
        result.seconds = time.perf_counter() - t
        if done.returncode != 0:
            raise RuntimeError(f"`modal run {which}` failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return result

    def forced_step_seconds(self, which: str, flag: str, step: str) -> float:
        """The build time of a force-rebuilt step, from the build log."""
        out = self.modal_run(which, {flag: "1"})
        text = out.stdout + out.stderr
        match = re.search(rf"=> Step \d+/\d+: {re.escape(step)}.*?\n(?:.*\n)*?   done in ([\d.]+)s", text)
        assert match, text[-3000:]
        return float(match.group(1))

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log_path, errors="replace") as f:
            f.seek(offset)
            return f.read()

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def print_result(result: dict[str, Any]) -> None:
    rows = [(key, value, TARGETS.get(key, "")) for key, value in result["metrics"].items()]
    width = max(len(key) for key, _, _ in rows)
    print(f"\n[{result['peer']}]")
    print(f"  {'metric'.ljust(width)}  {'value':>10}  kiln target")
    for key, value, target in rows:
        print(f"  {key.ljust(width)}  {value!s:>10}  {target}")
    for note in result["notes"]:
        print(f"  note: {note}")


if __name__ == "__main__":
    main()
