#!/usr/bin/python3
"""An independent Hugging Face-style Llama forward pass, to check `ltrain export-hf`.

usage: /usr/bin/python3 tests/hf_reference.py [--transformers] HFDIR LOGITS_FILE TOKEN [TOKEN ...]

Reads HFDIR the way transformers' LlamaForCausalLM would see it (config.json, model.safetensors
or model.safetensors.index.json + shards; safetensors parsed here, without the safetensors
package), runs the forward pass written from the Hugging Face Llama definition -- RoPE in the
ROTATE-HALF layout (x * cos + rotate_half(x) * sin, with cos/sin of the HD/2 frequencies repeated
over both halves), grouped-query attention by repeat_interleave of the kv heads -- in float64, and
compares the logits of every position with LOGITS_FILE: float32 (T, V) row-major, row t = ltrain's
logits after tokens[0..t]. Exits 1 when max |diff| > 1e-4 * max |logit|.

The q/k rows in HFDIR must be in Hugging Face's rotate-half order for this to pass: ltrain's own
interleaved layout, exported without the permutation, fails by orders of magnitude.

--transformers also loads HFDIR with transformers' LlamaForCausalLM.from_pretrained (fp32, CPU)
and compares its logits the same way (an interpreter with the transformers package is needed;
tests/test_hf.cpp does this when LTRAIN_TRANSFORMERS_PYTHON names one).
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch

RTOL = 1e-4  # of max |logit|; ltrain computes in fp32, this reference in fp64


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = memoryview(blob)[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = data[b:end]
        if e["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif e["dtype"] == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif e["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f"{path}: tensor {name}: dtype {e['dtype']} not handled")
        out[name] = torch.from_numpy(a.astype(np.float64).reshape(e["shape"]))
    return out


def load_weights(d):
    single = os.path.join(d, "model.safetensors")
    if os.path.exists(single):
        return read_safetensors(single)
    index = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    w = {}
    for fn in sorted(set(index["weight_map"].values())):
        w.update(read_safetensors(os.path.join(d, fn)))
    return w


def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(cfg, w, tokens):
    C = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads") or H
    HD = C // H
    L = cfg["num_hidden_layers"]
    eps = cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta", 10000.0)
    T = len(tokens)

    inv_freq = 1.0 / (theta ** (torch.arange(0, HD, 2, dtype=torch.float64) / HD))  # (HD/2)
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)  # (T, HD/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, HD): the same angle on row i and row i + HD/2
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]  # broadcast over heads

    x = w["model.embed_tokens.weight"][torch.tensor(tokens)]  # (T, C)
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for l in range(L):
        p = f"model.layers.{l}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(T, H, HD)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(T, KV, HD)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(T, KV, HD)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // KV, dim=1)  # query head i reads kv head i // (H / KV)
        v = v.repeat_interleave(H // KV, dim=1)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # (H, T, HD)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HD) + mask, dim=-1) @ v
        x = x + att.transpose(0, 1).reshape(T, H * HD) @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T  # (T, V)


def compare(label, got, ref, V):
    diff = (got - ref).abs()
    scale = ref.abs().max().item()
    err = diff.max().item()
    worst = divmod(int(diff.argmax().item()), V)
    ok = err <= RTOL * scale and scale > 0 and bool(torch.isfinite(got).all())
    print(f"{label}: {got.shape[0]} positions x {V} logits, max |ltrain - hf| = {err:.3e} "
          f"(at position {worst[0]}, token {worst[1]}), max |logit| = {scale:.3e}, "
          f"relative {err / max(scale, 1e-300):.3e}, tolerance {RTOL:.0e}: {'OK' if ok else 'MISMATCH'}")
    return ok


def transformers_logits(d, tokens):
    import transformers
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0]
    return transformers.__version__, logits.double()


def main():
    args = sys.argv[1:]
    use_transformers = "--transformers" in args
    args = [a for a in args if a != "--transformers"]
    if len(args) < 3:
        raise SystemExit(__doc__)
    d, logits_file = args[0], args[1]
    tokens = [int(t) for t in args[2:]]
    cfg = json.load(open(os.path.join(d, "config.json")))
    assert cfg.get("model_type") == "llama" and cfg.get("hidden_act", "silu") == "silu", cfg
    assert cfg.get("rope_scaling") is None, cfg
    w = load_weights(d)
    ref = forward(cfg, w, tokens)
    V = cfg["vocab_size"]
    got = torch.from_numpy(np.fromfile(logits_file, dtype="<f4").astype(np.float64))
    if got.numel() != len(tokens) * V:
        raise SystemExit(f"{logits_file}: {got.numel()} floats, expected {len(tokens)} x {V}")
    got = got.view(len(tokens), V)
    ok = compare("hf reference", got, ref, V)
    if use_transformers:
        version, tl = transformers_logits(d, tokens)
        ok = compare(f"transformers {version} LlamaForCausalLM (fp32)", got, tl, V) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
