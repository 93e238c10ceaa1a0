#!/usr/bin/python3
"""An independent PyTorch reference for ltrain (run by tests/test_torch_reference.cpp).

usage: /usr/bin/python3 tests/torch_reference.py DIR [--dtype float32|float64]

Reads what the C++ test wrote into DIR (config.json, manifest.json, weights.bin, tokens.bin,
targets.bin, grads.bin, ltrain.json), recomputes it with a functional LLaMA written from the
model's definition, torch autograd, torch.optim.AdamW and a schedule written from its definition,
prints a comparison table and exits 1 on any mismatch. --dtype float64 runs the reference in double
(to see how much of the difference is ltrain's fp32 rounding); the tolerances are for float32.
"""
import json
import math
import sys

import numpy as np
import torch

# Tolerances, for fp32 on both sides. The two sum in different orders, so they differ by
# rounding; measured with this test's data (ltrain fp32 against torch fp32, and against torch
# fp64 with --dtype float64, which gives the same numbers: the differences are fp32 rounding):
#  - step-1 loss: a mean of 48 cross-entropies of ~4.5; measured ~4e-8 relative (< 1 ulp).
LOSS_RTOL = 2e-6
#  - gradients, per element: |ltrain - torch| <= GRAD_ATOL * max|torch tensor| + GRAD_RTOL * |torch|.
#    Elements far below the tensor's largest are sums that cancel, so their error is set by the
#    large terms: hence an absolute part relative to the tensor's scale. Measured: the largest
#    error is <= 9e-7 of the tensor's scale (err/tol <= 0.1 with these values); a wrong RoPE
#    direction, kv-head mapping or attention scale gives errors of 1e-2..1 of the scale.
GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-4
#  - the 20-step curves (loss, grad norm): the trajectories start equal but Adam divides by
#    sqrt(v), so elements whose gradient is tiny (|g| ~ eps) turn rounding differences into update
#    differences of up to lr, and these can compound over steps. The tolerance therefore grows
#    linearly from CURVE_RTOL0 at step 1 to CURVE_RTOL1 at the last step. Measured: <= 3e-7 (loss)
#    and <= 9e-7 (grad norm) relative at every step, i.e. no visible growth over 20 steps.
CURVE_RTOL0, CURVE_RTOL1 = 5e-6, 5e-5
#  - learning rates: both computed in double from the same definition.
LR_RTOL = 1e-12


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, cos, sin):
    # x (B, T, NH, HD); Meta's layout: the pairs (2i, 2i+1) rotate by t * theta^(-2i/HD).
    B, T, NH, HD = x.shape
    xp = x.reshape(B, T, NH, HD // 2, 2)
    a, b = xp[..., 0], xp[..., 1]
    c, s = cos[:T].view(1, T, 1, HD // 2), sin[:T].view(1, T, 1, HD // 2)
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).reshape(B, T, NH, HD)


def attention(q, k, v):
    # q (B, T, H, HD), k and v (B, T, KV, HD): query head h reads kv head h // (H // KV).
    B, T, H, HD = q.shape
    rep = H // k.shape[2]
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, HD)
    scores = q @ k.transpose(-1, -2) / math.sqrt(HD)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)  # (B, T, H, HD)


def forward(P, m, tokens, targets, cos, sin):
    """Mean cross-entropy over all B*T tokens. P: name -> tensor (Hugging Face names)."""
    B, T = tokens.shape
    H, KV, L = m["num_attention_heads"], m["num_key_value_heads"], m["num_hidden_layers"]
    C, eps = m["hidden_size"], m["rms_norm_eps"]
    HD = C // H
    x = P["model.embed_tokens.weight"][tokens]  # (B, T, C)
    for l in range(L):
        p = "model.layers.%d." % l
        h = rmsnorm(x, P[p + "input_layernorm.weight"], eps)
        q = rope((h @ P[p + "self_attn.q_proj.weight"].t()).view(B, T, H, HD), cos, sin)
        k = rope((h @ P[p + "self_attn.k_proj.weight"].t()).view(B, T, KV, HD), cos, sin)
        v = (h @ P[p + "self_attn.v_proj.weight"].t()).view(B, T, KV, HD)
        x = x + attention(q, k, v).reshape(B, T, H * HD) @ P[p + "self_attn.o_proj.weight"].t()
        h = rmsnorm(x, P[p + "post_attention_layernorm.weight"], eps)
        gate = h @ P[p + "mlp.gate_proj.weight"].t()
        up = h @ P[p + "mlp.up_proj.weight"].t()
        x = x + (torch.nn.functional.silu(gate) * up) @ P[p + "mlp.down_proj.weight"].t()
    x = rmsnorm(x, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if m["tie_word_embeddings"] else P["lm_head.weight"]
    logits = x @ head.t()
    return torch.nn.functional.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1))


def lr_at(o, steps, step):
    """Linear warmup to lr over warmup_steps, cosine to min_lr_ratio*lr at decay_steps, flat."""
    end = o["decay_steps"] or steps
    lo = o["lr"] * o["min_lr_ratio"]
    if step <= o["warmup_steps"]:
        return o["lr"] * step / o["warmup_steps"]
    if step >= end:
        return lo
    progress = (step - o["warmup_steps"]) / (end - o["warmup_steps"])
    return lo + (o["lr"] - lo) * 0.5 * (1 + math.cos(math.pi * progress))


class Report:
    def __init__(self):
        self.passed = self.failed = 0
        # err/scale: the largest error over the largest |torch| value; err/tol: the largest ratio
        # of an element's error to its tolerance (< 1 passes).
        print("%-52s %11s %10s %9s  %s" % ("quantity (ltrain vs torch)", "max abs err", "err/scale",
                                           "err/tol", "ok"))

    def check(self, name, got, ref, atol, rtol):
        """got: ltrain, ref: torch. Per element |got - ref| <= atol + rtol*|ref| (atol, rtol arrays ok)."""
        got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
        err = np.abs(got - ref)
        ok = bool(np.all(err <= atol + rtol * np.abs(ref))) and np.all(np.isfinite(got))
        ok = ok and np.any(ref != 0)  # an all-zero reference proves nothing
        scale = max(np.abs(ref).max(), 1e-30)
        ratio = np.max(err / np.maximum(atol + rtol * np.abs(ref), 1e-300))
        print("%-52s %11.3e %10.3e %9.2e  %s" % (name, err.max(), err.max() / scale, ratio,
                                                "ok" if ok else "FAIL"))
        self.passed += ok
        self.failed += not ok


def main():
    d = sys.argv[1]
    dtype = torch.float64 if "--dtype" in sys.argv and sys.argv[-1] == "float64" else torch.float32
    cfg = json.load(open(d + "/config.json"))
    m, o = cfg["model"], cfg["optim"]
    B, T, steps = cfg["batch"], cfg["seq_len"], cfg["steps"]
    manifest = json.load(open(d + "/manifest.json"))
    flat = np.fromfile(d + "/weights.bin", dtype="<f4")
    flat_grads = np.fromfile(d + "/grads.bin", dtype="<f4")
    ref = json.load(open(d + "/ltrain.json"))
    tokens = torch.from_numpy(np.fromfile(d + "/tokens.bin", dtype="<i4").astype(np.int64)).view(steps, B, T)
    targets = torch.from_numpy(np.fromfile(d + "/targets.bin", dtype="<i4").astype(np.int64)).view(steps, B, T)

    def unflatten(buf, e):
        n = int(np.prod(e["shape"]))
        return buf[e["offset"]:e["offset"] + n].reshape(e["shape"])

    P = {e["name"]: torch.tensor(unflatten(flat, e), dtype=dtype, requires_grad=True) for e in manifest}
    HD = m["hidden_size"] // m["num_attention_heads"]
    inv = m["rope_theta"] ** (-2.0 * np.arange(HD // 2) / HD)
    angle = np.arange(T)[:, None] * inv[None, :]  # in double, as the definition
    cos, sin = torch.tensor(np.cos(angle), dtype=dtype), torch.tensor(np.sin(angle), dtype=dtype)
    rep = Report()

    # Step 1: loss and every gradient from the initial weights.
    loss = forward(P, m, tokens[0], targets[0], cos, sin)
    grads = torch.autograd.grad(loss, list(P.values()))
    rep.check("step-1 loss", ref["step1_loss"], loss.item(), 0.0, LOSS_RTOL)
    for e, g in zip(manifest, grads):
        g = g.detach().double().numpy()
        rep.check("grad " + e["name"], unflatten(flat_grads, e), g, GRAD_ATOL * np.abs(g).max(), GRAD_RTOL)

    # 20 steps: torch.optim.AdamW, decay only on the tensors ltrain marks as decaying.
    decay = [P[e["name"]] for e in manifest if e["decay"]]
    no_decay = [P[e["name"]] for e in manifest if not e["decay"]]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])
    params = list(P.values())
    losses, norms, lrs = [], [], []
    for s in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = forward(P, m, tokens[s - 1], targets[s - 1], cos, sin)
        loss.backward()
        # Clipping by hand: torch.nn.utils.clip_grad_norm_ scales by max_norm / (norm + 1e-6)
        # clamped to 1, ltrain by max_norm / norm when norm > max_norm. The 1e-6 is a ~1e-6
        # relative difference, invisible here, but the reference should be the definition.
        norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
        if o["grad_clip"] > 0 and norm > o["grad_clip"]:
            for p in params:
                p.grad.mul_(o["grad_clip"] / norm)
        lr = lr_at(o, steps, s)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        losses.append(loss.item())
        norms.append(norm)
        lrs.append(lr)

    curve_rtol = np.linspace(CURVE_RTOL0, CURVE_RTOL1, steps)
    rep.check("loss curve (%d steps)" % steps, ref["loss"], losses, 0.0, curve_rtol)
    rep.check("grad norm curve (before clipping)", ref["grad_norm"], norms, 0.0, curve_rtol)
    rep.check("lr schedule", ref["lr"], lrs, 0.0, LR_RTOL)
    rel = np.abs(np.array(ref["loss"]) - losses) / np.abs(losses)
    print("step  loss(ltrain)  loss(torch)   rel err    grad norm  clipped  lr")
    for s in range(steps):
        print("%4d  %12.7f  %12.7f  %9.2e  %9.5f  %7s  %.6f" % (s + 1, ref["loss"][s], losses[s], rel[s],
              norms[s], "yes" if norms[s] > o["grad_clip"] > 0 else "no", lrs[s]))
    print("torch reference: %d passed, %d failed (reference in %s)" % (
        rep.passed, rep.failed, str(dtype).replace("torch.", "")))
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
