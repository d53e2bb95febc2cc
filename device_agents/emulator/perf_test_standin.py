"""A stand-in for `onnxruntime_perf_test` on the emulated device: the real onnxruntime (Python) underneath,
the tool's command line and exactly its output (`performance_runner.cc`: the Run() block, then the statistics
block that is printed when no result file is given). So the perf-test path of the Android agent (push by
checksum, the libraries, parsing, separate visits) runs end to end without a phone.

Two generations of its command line, as upstream's `onnxruntime/test/perftest/command_args_parser.cc` and
`main.cc` have them (`GENERATIONS`):
- `getopt` (up to onnxruntime 1.22): `-h`, `--help` and any bad argument print the usage (`-m [test_mode]:
  ...`) and exit 255;
- `absl` (1.23 on, absl flags): `-h` is a flag nothing reads, so `-h` with no model is a parse failure that
  prints only "See 'onnxruntime_perf_test --help'." on stderr and exits 255; `--help` is absl's own help
  (stdout, "Flags from .../command_args_parser.cc:", `--m (Specifies the test mode...)`), exit 1; an unknown
  flag is "ERROR: Unknown command line flag" and exit 1. Its runs print `Average inference time cost total`.

`write_build(folder, generation=...)` lays out what a user's `--perf-test-dir` holds: `onnxruntime_perf_test`,
the shared library it links and VERSION_NUMBER. With a C compiler the binary is a real ELF launcher that links
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

GENERATIONS = ("getopt", "absl")
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


# absl's --help for the flags this stand-in reads (FlagsHelpImpl: the program usage message, then each flag of
# command_args_parser.cc as `--name (help); default: value;`, then the --helpfull tip).
ABSL_USAGE = (
    "onnxruntime_perf_test [options...] model_path [result_file]\n\nNote: Options may be specified with either \
a single dash(-option) or a double dash(--option). Both forms are accepted and treated identically.\n\nOptions:"
)
ABSL_FLAGS = (
    ("I", "Generates tensor input binding. Free dimensions are treated as 1 unless overridden using -f.", "false"),
    ("Z", "Disallows thread from spinning during runs to reduce cpu usage.", "false"),
    (
        "e",
        "Specifies the provider 'cpu','cuda','dnnl','tensorrt', 'nvtensorrtrtx', 'openvino', 'dml', 'acl', "
        "'nnapi', 'coreml', 'qnn', 'snpe', 'migraphx', 'xnnpack', 'vitisai' or 'webgpu'.",
        '"cpu"',
    ),
    ("h", "Print program usage.", "false"),
    ("m", "Specifies the test mode. Value could be 'duration' or 'times'.", '"duration"'),
    ("r", "Specifies the repeated times if running in 'times' test mode.", "1000"),
    ("s", "Shows statistics result, like P75, P90. If no result_file provided this defaults to on.", "false"),
    (
        "x",
        "Sets the number of threads used to parallelize the execution within nodes, A value of 0 means ORT will "
        "pick a default. Must >=0.",
        "0",
    ),
    (
        "y",
        "Sets the number of threads used to parallelize the execution of the graph (across nodes), A value of 0 "
        "means ORT will pick a default. Must >=0.",
        "0",
    ),
)
ABSL_FLAGS_FILE = "onnxruntime/test/perftest/command_args_parser.cc"  # absl prints the path it was built from
ABSL_PARSE_FAILED = "See 'onnxruntime_perf_test --help'."


def absl_help() -> str:
    """What `onnxruntime_perf_test --help` prints in the absl generation (to stdout, then exit 1)."""
    lines = [
        f"onnxruntime_perf_test: {ABSL_USAGE}",
        "",
        "  Flags from onnxruntime/test/perftest/command_args_parser.cc:",
    ]
    for name, text, default in ABSL_FLAGS:
        lines.append(f"    --{name} ({text}); default: {default};")
    return "\n".join(lines) + "\n\nTry --helpfull to get a list of all flags.\n"


def _g(value: float) -> str:
    """C++ ostream's default formatting of a double (6 significant digits)."""
    return f"{value:g}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    generation = "getopt"
    if argv[:1] == ["--dnas-generation"]:  # put there by write_build's launcher, never by a caller
        generation, argv = argv[1], argv[2:]
    if generation == "absl":
        return _main_absl(argv)
    return _main_getopt(argv)


def _main_getopt(argv: list[str]) -> int:
    """Up to onnxruntime 1.22: getopt; any parse failure (and -h, and --help, which getopt reads as the
    unknown option '-') prints the usage and returns -1."""
    if any(a.startswith("--") for a in argv):
        print("onnxruntime_perf_test: invalid option -- '-'", file=sys.stderr)
        print(USAGE, end="")
        return 255
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
    return _run(args, average_label="Average inference time cost", average_format=_g)


def _main_absl(argv: list[str]) -> int:
    """onnxruntime 1.23 on: absl::ParseCommandLine. `-x` and `--x`, `-x 4` and `-x=4` are one flag; booleans
    take no value; what is left are the positionals (the model, maybe a result file)."""
    known = {name for name, _, _ in ABSL_FLAGS}
    booleans = {"I", "Z", "h", "s"}
    values: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            positional += argv[i + 1 :]
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            i += 1
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name == "help":
            print(absl_help(), end="")
            return 1  # absl's HandleUsageFlags: help is exit 1
        if name not in known:
            print(f"ERROR: Unknown command line flag '{name}'", file=sys.stderr)
            return 1
        if name in booleans:
            values[name] = value if eq else "true"
        elif eq:
            values[name] = value
        elif i + 1 < len(argv):
            values[name] = argv[i + 1]
            i += 1
        else:
            print(f"ERROR: Missing the value for the flag '{name}'", file=sys.stderr)
            return 1
        i += 1
    args = argparse.Namespace(
        e=values.get("e", "cpu"), m=values.get("m", "duration"), r=int(values.get("r", "1000")),
        x=int(values.get("x", "0")), y=int(values.get("y", "0")), I=values.get("I") == "true",
        Z=values.get("Z") == "true", s=values.get("s") == "true" or len(positional) == 1,
        model=positional[0] if positional else None,
    )  # fmt: skip
    # ParseArguments returns false (main: the one line on stderr, return -1) on a bad value or no model;
    # FLAGS_h is defined but never read.
    if args.e != "cpu" or args.m not in ("duration", "times") or args.r <= 0 or not 1 <= len(positional) <= 2:
        print(ABSL_PARSE_FAILED, end="", file=sys.stderr)
        return 255
    print(f"Setting intra_op_num_threads to {args.x}")
    if args.Z:
        print("Disabling intra-op thread spinning between runs")
    return _run(args, average_label="Average inference time cost total", average_format=lambda v: f"{v:f}")


def _run(args: argparse.Namespace, *, average_label: str, average_format) -> int:  # type: ignore[no-untyped-def]
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
    print(f"{average_label}: {average_format(total / len(costs) * 1000)} ms")
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
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
extern int dnas_cxx_marker(void);
extern char **environ;

/* perf_test_server.py: hand the command line and stdio to the emulator's fork server. Returns -1 to fall
   back to exec'ing Python (no server, or it refused); otherwise this process's exit status. */
static int via_server(char **args, int nargs) {
    const char *path = getenv("DNAS_PERF_TEST_SERVER");
    if (!path || !*path || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) return -1;
    static char req[65536], cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) return -1;
    char count[16];
    snprintf(count, sizeof count, "%d", nargs);
    uint32_t len = 0;
    const char *head[2] = {cwd, count};
    for (int i = 0; i < 2 + nargs; i++) {
        const char *field = i < 2 ? head[i] : args[i - 2];
        size_t n = strlen(field) + 1;
        if (4 + len + n > sizeof req) return -1;
        memcpy(req + 4 + len, field, n); len += n;
    }
    for (char **e = environ; *e; e++) {  /* the child takes this environment, as exec would have */
        size_t n = strlen(*e) + 1;
        if (4 + len + n > sizeof req) return -1;
        memcpy(req + 4 + len, *e, n); len += n;
    }
    memcpy(req, &len, 4);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0) return -1;
    struct sockaddr_un addr = {0};
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) { close(s); return -1; }
    int fds[3] = {0, 1, 2};
    union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof fds)]; } control;  /* cmsghdr-aligned */
    memset(&control, 0, sizeof control);
    struct iovec iov = {req, 4 + len};
    struct msghdr msg = {0};
    msg.msg_iov = &iov; msg.msg_iovlen = 1;
    msg.msg_control = control.buf; msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET; cm->cmsg_type = SCM_RIGHTS; cm->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cm), fds, sizeof fds);
    /* No EINTR retries: this process installs no signal handlers, so no call here is interrupted. */
    if (sendmsg(s, &msg, MSG_NOSIGNAL) != (ssize_t)(4 + len)) { close(s); return -1; }
    char answer;
    if (recv(s, &answer, 1, MSG_WAITALL) != 1 || answer != 'A') { close(s); return -1; }
    int status;
    if (recv(s, &status, sizeof status, MSG_WAITALL) != sizeof status) {
        fprintf(stderr, "onnxruntime_perf_test: the perf_test server went away\n");
        return 127;
    }
    close(s);
    if (WIFSIGNALED(status)) { signal(WTERMSIG(status), SIG_DFL); raise(WTERMSIG(status)); }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 127;
}

int main(int argc, char **argv) {
    char *args[argc + 4];
    args[0] = PYTHON; args[1] = SCRIPT; args[2] = "--dnas-generation"; args[3] = GENERATION;
    for (int i = 1; i < argc; i++) args[i + 3] = argv[i];
    args[argc + 3] = 0;
    if (dnas_cxx_marker() != 42) return 3;
    int code = via_server(args, argc + 3);
    if (code >= 0) return code;
    const char *strict = getenv("DNAS_PERF_TEST_SERVER_STRICT");  /* tests: prove a launch went through it */
    if (strict && strcmp(strict, "1") == 0) {
        fprintf(stderr, "onnxruntime_perf_test: the perf_test server did not run this launch\n");
        return 126;
    }
    execv(PYTHON, args);
    perror("execv");
    return 127;
}
"""


def write_build(folder: Path, *, version: str | None = None, generation: str = "getopt") -> Path:
    """A `--perf-test-dir` for the emulated device, whose binary parses its command line as `generation`
    does (`getopt`: onnxruntime up to 1.22; `absl`: 1.23 on). Returns the folder."""
    import onnxruntime

    if generation not in GENERATIONS:
        raise ValueError(f"generation must be one of {GENERATIONS}, not {generation!r}")
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
                            f'-DPYTHON="{python}"', f'-DSCRIPT="{script}"', f'-DGENERATION="{generation}"'],
                           check=True)  # fmt: skip
    else:
        binary.write_text(f'#!/bin/sh\nexec {shlex.quote(str(python))} {shlex.quote(str(script))} '
                          f'--dnas-generation {generation} "$@"\n')  # fmt: skip
    binary.chmod(0o755)
    (folder / "VERSION_NUMBER").write_text(f"{version or onnxruntime.__version__}\n")
    return folder


if __name__ == "__main__":
    raise SystemExit(main())
