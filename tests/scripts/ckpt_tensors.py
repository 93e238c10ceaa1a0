"""Whole tensors from a checkpoint's shard files, following meta.json: an independent reader of
docs/checkpoint-format.md, for the resume, parallel and pipeline CLI tests. Every element must be
covered exactly once."""
import json
import numpy as np

def tensors(ck, section="tensors"):
    meta = json.load(open(f"{ck}/meta.json"))
    out = {t["name"]: np.full(t["shape"], np.nan, dtype=np.float32) for t in meta[section]}
    seen = {n: np.zeros(a.shape, dtype=np.int32) for n, a in out.items()}
    for sh in meta["shards"]:
        data = np.fromfile(f"{ck}/{sh['file']}", dtype="<f4")
        for p in sh["pieces"]:
            if p["name"] not in out:
                continue
            whole, count = out[p["name"]], seen[p["name"]]
            rows = whole.shape[0]
            w2, c2 = whole.reshape(rows, -1), count.reshape(rows, -1)
            s = p["slice"]
            sl = np.s_[s["start"]:s["start"] + s["length"], :] if s["dim"] == 0 else np.s_[:, s["start"]:s["start"] + s["length"]]
            b, e = p["elements"]
            part, cnt = w2[sl].copy().reshape(-1), c2[sl].copy().reshape(-1)
            part[b:e] = data[p["offset"] // 4:p["offset"] // 4 + (e - b)]
            cnt[b:e] += 1
            w2[sl], c2[sl] = part.reshape(w2[sl].shape), cnt.reshape(c2[sl].shape)
    for n, c in seen.items():
        assert (c == 1).all(), f"{ck}: {n} is not covered exactly once by the shard files"
    return out

def flat(ck, section="tensors"):
    """Every tensor of the section, whole, concatenated in manifest order."""
    t = tensors(ck, section)
    return np.concatenate([a.reshape(-1) for a in t.values()])
