"""Compares a parallel run with a single-process run of the same global batch: the loss, grad-norm
and validation curves (metrics.jsonl) and the final weights (the runs' Hugging Face exports, which
assemble every layout's shards into whole tensors). fp32 reductions in another order change the
last bits; a missing reduction, a wrong slice or a double count is O(1).
Usage: compare_runs.py SINGLE_RUN SINGLE_HF OTHER_RUN OTHER_HF STEPS"""
import json
import struct
import sys

import numpy as np


def curves(run):
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
    steps = [r for r in rows if "loss" in r]
    return ([r["loss"] for r in steps], [r["grad_norm"] for r in steps],
            [r["val_loss"] for r in rows if "val_loss" in r])


def tensors(hf):
    raw = open(f"{hf}/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    kinds = {"F32": "<f4", "F64": "<f8"}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=kinds[t["dtype"]])
    return out


single, single_hf, other, other_hf, steps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
(la, ga, va), (lb, gb, vb) = curves(single), curves(other)
assert len(la) == len(lb) == steps, (len(la), len(lb))
assert len(va) == len(vb) > 0, (len(va), len(vb))
rel = lambda xs, ys: max(abs(x - y) / abs(x) for x, y in zip(xs, ys))
dl, dg, dv = rel(la, lb), rel(ga, gb), rel(va, vb)
wa, wb = tensors(single_hf), tensors(other_hf)
assert wa.keys() == wb.keys() and wa, "the exports hold different tensors"
scale = max(np.abs(w).max() for w in wa.values())
assert scale > 0, "the single run's weights are all zero"
dw = max(np.abs(wa[k] - wb[k]).max() for k in wa) / scale
print(f"    {other}: max rel diff loss {dl:.2e}, grad_norm {dg:.2e}, val_loss {dv:.2e}; weights {dw:.2e}")
assert dl < 1e-5 and dg < 1e-4 and dv < 1e-5, "loss curves differ"
assert dw < 1e-5, "final weights differ"
