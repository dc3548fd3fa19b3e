"""Run command lines in a child process with a time limit and an address-space limit.

Hostile input is tested where a failure would hurt: a hang or a runaway allocation in the child
ends the child (and fails the test), never the test run or the machine. Several command lines
share one child, so torch is imported once per test, not once per case.
"""
import json
import os
import resource
import subprocess
import sys

CHILD = r"""
import contextlib, io, json, sys, traceback
from fractalgen.cli import main

results = {}
for name, argv in json.load(sys.stdin).items():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = -1
    results[name] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


def run_cases(cases: dict, seconds: float = 180, memory_gib: float = 2.0, cwd=None) -> dict:
    """{name: argv} -> {name: (exit code, stdout, stderr)}; the child may use `memory_gib` of address space."""
    limit = int(memory_gib * 2**30)

    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    given = json.dumps({k: [str(a) for a in v] for k, v in cases.items()})
    proc = subprocess.run([sys.executable, "-c", CHILD], input=given,
                          capture_output=True, text=True, timeout=seconds, preexec_fn=limits, env=env, cwd=cwd,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: tuple(result) for name, result in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def assert_one_line_error(result, command, *words):
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"fractalgen {command}: error: "), err
    for w in words:
        assert w in lines[0], lines[0]
