"""Rewrite FlashAttention's tests/test_flash_attn.py for a forward-only run on qattn (AST, not sed).

usage: python3 rewrite.py IN.py OUT.py [k/n[,test_name=k/n...]]     (env FA_DEVICE: cpu, the default, or cuda)

1. With FA_DEVICE=cpu, every string constant "cuda" becomes "cpu" (device= arguments and
   device = "cuda"); with FA_DEVICE=cuda the tests keep their device and run on qattn's CUDA backend.
2. Backward parts are removed from every test function: a statement that calls
   torch.autograd.grad or .backward(...) is dropped, and so is every later statement that reads
   a name such a statement assigned (dq, dk, dv, dqkv_ref, ...), transitively; an `if` whose
   body is left empty is dropped. Forward statements and assertions are untouched, tolerances
   included. What was removed is printed per function.
3. With k/n (default rate; test_name=k/n overrides it for one function), each parametrized test keeps a stable subset of its cases: those whose pytest id
   (the same id the full cartesian product would get) has crc32(id) % n < k (a test with at
   most 64 cases keeps them all). The stacked
   @pytest.mark.parametrize decorators become one parametrize over the kept combinations,
   indexing the original value lists (kept verbatim as module-level _FA_P<i> variables), so the
   values are FlashAttention's own. Collecting every case of the forward tests (~275k) takes
   ~7 GB per pytest process; this keeps collection proportional to what runs.
Nothing else changes; on the CPU, GPU queries (torch.cuda.get_device_capability /
get_device_properties) are answered by the runner's conftest.
"""
import ast
import os
import sys


def _is_backward_call(node):
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Attribute) and f.attr == "backward":
                return True
            if (isinstance(f, ast.Attribute) and f.attr == "grad" and isinstance(f.value, ast.Attribute)
                    and f.value.attr == "autograd"):
                return True
    return False


def _loads(node):
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _stores(node):
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


class _Pruner:
    def __init__(self):
        self.tainted = set()
        self.removed = []

    def block(self, stmts):
        out = []
        for s in stmts:
            if isinstance(s, (ast.If, ast.For, ast.While, ast.With)):
                head = s.test if isinstance(s, (ast.If, ast.While)) else (s.iter if isinstance(s, ast.For) else s.items[0].context_expr)
                if _loads(head) & self.tainted or _is_backward_call(head):
                    self.removed.append(ast.unparse(s).splitlines()[0])
                    self.tainted |= _stores(s)
                    continue
                s.body = self.block(s.body)
                if hasattr(s, "orelse"):
                    s.orelse = self.block(s.orelse)
                if not s.body and not getattr(s, "orelse", []):
                    continue
                if not s.body:
                    s.body = [ast.Pass()]
                out.append(s)
                continue
            if _is_backward_call(s) or (_loads(s) & self.tainted):
                self.removed.append(ast.unparse(s).splitlines()[0][:100])
                self.tainted |= _stores(s)
                continue
            out.append(s)
        return out


class _Cuda(ast.NodeTransformer):
    def visit_Constant(self, node):
        if node.value == "cuda":
            return ast.copy_location(ast.Constant("cpu"), node)
        return node


def _param_id(name, i, v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return str(v)
    return "%s%d" % (name, i)  # pytest's id for other objects (torch dtypes: dtype0, dtype1)


def _sample(tree, fn, k, n, counter):
    """Replace fn's stacked parametrize decorators by one over the kept combinations."""
    import itertools
    import math
    import zlib

    import torch
    env = {"torch": torch, "math": math, "is_sm75": False}
    decs = [d for d in fn.decorator_list if isinstance(d, ast.Call) and ast.unparse(d.func) == "pytest.mark.parametrize"]
    if not decs:
        return []
    others = [d for d in fn.decorator_list if d not in decs]
    axes = []  # bottom decorator first: pytest joins ids in that order
    new_vars = []
    for d in reversed(decs):
        names = [x.strip() for x in d.args[0].value.split(",")]
        var = "_FA_P%d" % counter[0]
        counter[0] += 1
        new_vars.append(ast.parse("%s = %s" % (var, ast.unparse(d.args[1]))).body[0])
        vals = eval(ast.unparse(d.args[1]), env)
        axes.append((names, var, vals))
    kept, total = [], 0
    small = math.prod(len(a[2]) for a in axes) <= 64
    for combo in itertools.product(*[range(len(a[2])) for a in axes]):
        total += 1
        parts = []
        for (names, var, vals), i in zip(axes, combo):
            v = vals[i]
            if len(names) > 1:
                parts += [_param_id(nm, i, x) for nm, x in zip(names, v)]
            else:
                parts.append(_param_id(names[0], i, v))
        pid = "-".join(parts)
        if small or zlib.crc32(pid.encode()) % n < k:
            kept.append((combo, pid))
    all_names = [nm for a in axes for nm in a[0]]
    elems = []
    for combo, pid in kept:
        vals = []
        for (names, var, _), i in zip(axes, combo):
            vals.append("*%s[%d]" % (var, i) if len(names) > 1 else "%s[%d]" % (var, i))
        elems.append("pytest.param(%s, id=%r)" % (", ".join(vals), pid))
    dec = ast.parse("pytest.mark.parametrize(%r, [%s])" % (",".join(all_names), ", ".join(elems))).body[0].value
    fn.decorator_list = others + [dec]
    print("%s: sampled %d of %d cases" % (fn.name, len(kept), total))
    return new_vars


def main(src, dst, sample=None):
    tree = ast.parse(open(src).read())
    device = os.environ.get("FA_DEVICE", "cpu")
    if device not in ("cpu", "cuda"):
        sys.exit("FA_DEVICE=%s: expected cpu or cuda" % device)
    if device == "cpu":
        tree = _Cuda().visit(tree)
    if sample:
        rates = {}
        for part in sample.split(","):
            name, _, frac = part.rpartition("=")
            rates[name] = tuple(int(x) for x in frac.split("/"))
        counter, body = [0], []
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                k, n = rates.get(node.name, rates.get("", (1, 1)))
                body += _sample(tree, node, k, n, counter)
            body.append(node)
        tree.body = body
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_"):
            p = _Pruner()
            fn.body = p.block(fn.body) or [ast.Pass()]
            if p.removed:
                print("%s: removed %d backward statement(s), e.g. %s" % (fn.name, len(p.removed), p.removed[0]))
    ast.fix_missing_locations(tree)
    with open(dst, "w") as f:
        f.write("# Generated by dev/fa_tests/rewrite.py from FlashAttention's tests/test_flash_attn.py: "
                "device %s, backward removed.\n" % device)
        f.write(ast.unparse(tree) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
