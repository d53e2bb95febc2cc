"""A stand-in for `onnxruntime_perf_test` on the emulated device: the real onnxruntime (Python) underneath,
the tool's command line and exactly its output (onnxruntime 1.1x `performance_runner.cc`: the Run() block,
then the statistics block that is printed when no result file is given). So the perf-test path of the
Android agent (push by checksum, the libraries, parsing, separate visits) runs end to end without a phone.

`write_build(folder)` lays out what a user's `--perf-test-dir` holds: `onnxruntime_perf_test`, the
shared library it links and VERSION_NUMBER. With a C compiler the binary is a real ELF launcher that links
`libc++_shared.so` (an empty shared library built beside it), so the device's dynamic loader refuses to
start it unless the agent pushed that library, as a phone's does; without one it is a script.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

USAGE = """perf_test [options...] model_path [result_file]
Options:
\t-m [test_mode]: Specifies the test mode. Value could be 'duration' or 'times'.
\t-e [cpu|cuda|dnnl|tensorrt|openvino|dml|acl|nnapi|coreml|qnn|snpe|rocm|migraphx|xnnpack|vitisai]: Specifies the provider.
\t-r [repeated_times]: Specifies the repeated times if running in 'times' test mode.Default:1000.
\t-x [intra_op_num_threads]: Sets the number of threads used to parallelize the execution within nodes.
\t-I: Generate tensor input binding (Free dimensions are treated as 1.)
\t-Z [Force thread to stop spinning between runs]: disallow thread from spinning during runs to reduce cpu usage.
\t-h: help
"""  # noqa: E501


def _g(value: float) -> str:
    """C++ ostream's default formatting of a double (6 significant digits)."""
    return f"{value:g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-e", default="cpu")
    parser.add_argument("-m", default="duration")
    parser.add_argument("-r", type=int, default=1000)
    parser.add_argument("-x", type=int, default=0)
    parser.add_argument("-y", type=int, default=0)
    parser.add_argument("-I", action="store_true")
    parser.add_argument("-Z", action="store_true")
    parser.add_argument("-s", action="store_true")  # "Show statistics result": the percentiles need it
    parser.add_argument("-h", action="store_true")
    parser.add_argument("model", nargs="?")
    parser.add_argument("result_file", nargs="?")
    args, _ = parser.parse_known_args(argv)
    if args.h or not args.model or args.e != "cpu" or args.r <= 0:
        print(USAGE, end="")
        return 255  # perf_test's main returns -1 after printing its usage
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.x
    opts.inter_op_num_threads = args.y
    if args.Z:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    start = time.perf_counter()
    try:
        sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # what the tool prints on a model it cannot load, and its status
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    created = time.perf_counter() - start
    feeds = {
        i.name: np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape],
                                                         dtype=np.float32)
        for i in sess.get_inputs()
    }  # fmt: skip
    first = time.perf_counter()
    sess.run(None, feeds)  # its one warm-up run
    first_ms = int((time.perf_counter() - first) * 1e3)
    costs = []
    run_start = time.perf_counter()
    for _ in range(args.r):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        costs.append(time.perf_counter() - t0)
    run_time = time.perf_counter() - run_start
    total = sum(costs)
    print(f"Session creation time cost: {_g(created)} s")
    print(f"First inference time cost: {first_ms} ms")
    print(f"Total inference time cost: {_g(total)} s")
    print(f"Total inference requests: {len(costs)}")
    print(f"Average inference time cost: {_g(total / len(costs) * 1000)} ms")
    print(f"Total inference run time: {_g(run_time)} s")
    print(f"Number of inferences per second: {_g(len(costs) / run_time)} ")
    if not args.s:
        return 0
    print("Avg CPU usage: 100 %")
    print("Peak working set size: 25165824 bytes")
    print("Avg CPU usage:100\nPeak working set size:25165824")
    print(f"Runs:{len(costs)}")
    ordered, n = sorted(costs), len(costs)
    for name, q in (("P50", 0.5), ("P90", 0.9), ("P95", 0.95), ("P99", 0.99), ("P999", 0.999)):
        if name == "P50":
            print(f"Min Latency: {_g(ordered[0])} s")
            print(f"Max Latency: {_g(ordered[-1])} s")
        print(f"{name} Latency: {_g(ordered[int(n * q)])} s")  # its rule: index floor(n * q) of the sorted runs
    return 0


LAUNCHER_C = r"""
#include <unistd.h>
#include <stdio.h>
extern int dnas_cxx_marker(void);
int main(int argc, char **argv) {
    char *args[argc + 2];
    args[0] = PYTHON; args[1] = SCRIPT;
    for (int i = 1; i < argc; i++) args[i + 1] = argv[i];
    args[argc + 1] = 0;
    if (dnas_cxx_marker() != 42) return 3;
    execv(PYTHON, args);
    perror("execv");
    return 127;
}
"""


def write_build(folder: Path, *, version: str | None = None) -> Path:
    """A `--perf-test-dir` for the emulated device. Returns the folder."""
    import onnxruntime

    folder.mkdir(parents=True, exist_ok=True)
    script, python = Path(__file__).resolve(), Path(sys.executable)
    binary = folder / "onnxruntime_perf_test"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc:
        with tempfile.TemporaryDirectory() as tmp:
            lib_c, main_c = Path(tmp) / "lib.c", Path(tmp) / "main.c"
            lib_c.write_text("int dnas_cxx_marker(void) { return 42; }\n")
            main_c.write_text(LAUNCHER_C)
            subprocess.run([cc, "-shared", "-fPIC", "-o", str(folder / "libc++_shared.so"), str(lib_c)], check=True)
            subprocess.run([cc, "-o", str(binary), str(main_c), f"-L{folder}", "-l:libc++_shared.so",
                            f'-DPYTHON="{python}"', f'-DSCRIPT="{script}"'], check=True)  # fmt: skip
    else:
        binary.write_text(f'#!/bin/sh\nexec {shlex.quote(str(python))} {shlex.quote(str(script))} "$@"\n')
    binary.chmod(0o755)
    (folder / "VERSION_NUMBER").write_text(f"{version or onnxruntime.__version__}\n")
    return folder


if __name__ == "__main__":
    raise SystemExit(main())
