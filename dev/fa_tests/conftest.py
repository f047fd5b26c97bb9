"""conftest for FlashAttention's rewritten tests on the CPU through the qattn shim (dev/fa_tests/run.sh).

- torch.cuda.get_device_capability / get_device_properties answer for a GPU of capability 9.0 with
  a large memory: the capability only steers backward checks (removed) and the dtype list
  (fp16 and bf16); the memory only the "reference implementation OOM" skips.
- flash_attn.Unsupported (a feature qattn lacks) and qattn.QattnUnsupportedError become skips
  whose reason is the message.
- FA_SAMPLE=k/n keeps the test cases whose crc32(node id) % n < k (stable across runs); unset = all.
- FA_SUMMARY=path: per test function passed / failed / skipped and skip reasons, as text.
"""
import collections
import os
import types
import zlib

import pytest
import torch

torch.cuda.get_device_capability = lambda device=None: (9, 0)
torch.cuda.get_device_properties = lambda device=None: types.SimpleNamespace(
    total_memory=1 << 40, name="cpu (qattn shim)", major=9, minor=0)
torch.set_num_threads(int(os.environ.get("FA_TORCH_THREADS", "1")))

import flash_attn  # noqa: E402
import qattn  # noqa: E402


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    try:
        return (yield)
    except (flash_attn.Unsupported, qattn.QattnUnsupportedError) as e:
        pytest.skip("unsupported: %s" % str(e).splitlines()[0][:160])


def pytest_collection_modifyitems(config, items):
    spec = os.environ.get("FA_SAMPLE")
    if not spec:
        return
    k, n = (int(x) for x in spec.split("/"))
    keep, drop = [], []
    for it in items:
        (keep if zlib.crc32(it.nodeid.encode()) % n < k else drop).append(it)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)


_results = collections.defaultdict(collections.Counter)
_reasons = collections.defaultdict(collections.Counter)
_failed = collections.defaultdict(list)


def pytest_runtest_logreport(report):
    fn = report.nodeid.split("::")[-1].split("[")[0]
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            reason = reason.replace("Skipped: ", "") or "pytest.skip() without a reason (FA's own condition)"
            _results[fn]["skipped"] += 1
            _reasons[fn][reason] += 1
        elif report.failed:
            _results[fn]["failed"] += 1
            _failed[fn].append(report.nodeid.split("::")[-1])
        else:
            _results[fn]["passed"] += 1


def pytest_terminal_summary(terminalreporter):
    if not _results:  # xdist controller: the workers' reports arrive here too (logreport runs on it)
        return
    lines = ["", "per test function: passed / failed / skipped"]
    for fn in sorted(_results):
        c = _results[fn]
        lines.append("  %-48s %6d %6d %6d" % (fn, c["passed"], c["failed"], c["skipped"]))
        for r, n in _reasons[fn].most_common():
            lines.append("      skip x%-5d %s" % (n, r))
        for nid in _failed[fn][:20]:
            lines.append("      FAILED %s" % nid)
    text = "\n".join(lines)
    terminalreporter.write_line(text)
    path = os.environ.get("FA_SUMMARY")
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
