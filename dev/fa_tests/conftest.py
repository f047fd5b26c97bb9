"""conftest for FlashAttention's rewritten tests through the qattn shim (dev/fa_tests/run.sh).

- On the CPU (FA_DEVICE=cpu, the default), torch.cuda.get_device_capability / get_device_properties
  answer for a GPU of capability 9.0 with a large memory: the capability only steers backward checks (removed) and the dtype list
  (fp16 and bf16); the memory only the "reference implementation OOM" skips.
- flash_attn.Unsupported (a feature qattn lacks) and qattn.QattnUnsupportedError become skips
  whose reason is the message.
- FA_MAX_SEQLEN_K=N: skip cases with a sequence longer than N (memory of a shared host).
- FA_SUMMARY=path: per test function passed / failed / skipped and skip reasons, as text.
"""
import collections
import os
import types

import pytest
import torch

if os.environ.get("FA_DEVICE", "cpu") == "cpu":  # on a GPU (FA_DEVICE=cuda) torch answers itself
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


@pytest.fixture(autouse=True)
def _seqlen_cap(request):
    """FA_MAX_SEQLEN_K=N skips cases whose seqlen_k (or seqlen) exceeds N: FlashAttention's references
    and paged caches at 128k keys take several GB per case, too much for a shared host."""
    cap = int(os.environ.get("FA_MAX_SEQLEN_K", "0"))
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    lk = max(params.get("seqlen_k", 0), params.get("seqlen_q", 0), params.get("seqlen", 0))
    if cap and lk > cap:
        pytest.skip("run configuration: seqlen %d > FA_MAX_SEQLEN_K=%d (host memory)" % (lk, cap))


_results = collections.defaultdict(collections.Counter)
_reasons = collections.defaultdict(collections.Counter)
_failed = collections.defaultdict(list)


def pytest_runtest_logreport(report):
    fn = report.nodeid.split("::")[-1].split("[")[0]
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            reason = reason.replace("Skipped: ", "")
            if reason in ("", "Skipped"):
                reason = "FlashAttention's own pytest.skip() (a combination the test excludes)"
            _results[fn]["skipped"] += 1
            _reasons[fn][reason] += 1
        elif report.failed:
            _results[fn]["failed"] += 1
            _failed[fn].append(report.nodeid.split("::")[-1])
        else:
            _results[fn]["passed"] += 1
        if os.environ.get("FA_SUMMARY") and not os.environ.get("PYTEST_XDIST_WORKER") and sum(sum(c.values()) for c in _results.values()) % 25 == 0:
            _write(os.environ["FA_SUMMARY"], _text() + "\n(partial)")


def _write(path, text):
    with open(path, "w") as f:
        f.write(text + "\n")


def _text():
    lines = ["", "per test function: passed / failed / skipped"]
    for fn in sorted(_results):
        c = _results[fn]
        lines.append("  %-48s %6d %6d %6d" % (fn, c["passed"], c["failed"], c["skipped"]))
        for r, n in _reasons[fn].most_common():
            lines.append("      skip x%-5d %s" % (n, r))
        for nid in _failed[fn][:20]:
            lines.append("      FAILED %s" % nid)
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter):
    if not _results or os.environ.get("PYTEST_XDIST_WORKER"):  # the xdist controller gets every report
        return
    text = _text()
    terminalreporter.write_line(text)
    if os.environ.get("FA_SUMMARY"):
        _write(os.environ["FA_SUMMARY"], text)
