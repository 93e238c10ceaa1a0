#!/usr/bin/env python3
"""The peer benchmark: ltrain's model in plain PyTorch, timed the way `ltrain bench` times it.

    scripts/bench_pytorch.py --config FILE [key=value ...] [--variant eager|compile]
                             [--device cuda|cpu] [--warmup N] [--steps N] [--json FILE]
                             [--peak-tflops X]

Reads ltrain's YAML config (model.*, train.seq_len, train.micro_batch_size,
train.global_batch_tokens, optim.*), builds the same LLaMA (RMSNorm, RoPE on q and k, SwiGLU,
grouped-query attention, no biases, untied output unless model.tie_word_embeddings) and trains it
on synthetic tokens:

  eager    bf16 autocast, causal F.scaled_dot_product_attention, AdamW(fused=True) where the
           installed torch has it (CUDA, torch >= 2.0), else foreach
  compile  the same model under torch.compile (torch >= 2.0)

A timed step is what `ltrain bench` times (docs/benchmarking.md, "What is timed"): zero the
gradients, forward and backward of global_batch_tokens / (micro_batch_size * seq_len)
micro-batches with the loss scaled by their number, global-norm clipping at optim.grad_clip,
AdamW, and a device synchronize; host wall time; warm-up steps first; the figure is the median.
The tokens are built before the clock starts, uniformly random ids below vocab_size from a seeded
generator, targets the next id of the same stream.

FLOPs per token and MFU use the formulas and the peak table of docs/benchmarking.md (reimplemented
here, nothing is imported from ltrain):
  N      = L*(C*(H + 2KV)*HD + H*HD*C + 3*C*FF) + C*V
  causal = 6*N + 6*L*H*HD*T   (MFU)      PaLM = 6*N + 12*L*H*HD*T   (MFU PaLM)
  MFU    = FLOPs/token * tokens/s/GPU / peak (dense bf16)

Not the same as ltrain: PyTorch keeps every activation (train.recompute is ignored), so peak
memory is higher with selective recomputation configs; lower train.micro_batch_size if it does
not fit. Runs on one GPU (world size 1).

For a CPU smoke test with Debian's torch 1.13 (no scaled_dot_product_attention, no
torch.compile): --device cpu uses float32 (no autocast) and an explicit causal softmax attention.
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

PROG = "bench_pytorch.py"

# Dense bf16 tensor-core peaks in FLOP/s (never the "with sparsity" figures); the first entry whose
# text occurs in the device name wins, as in docs/benchmarking.md.
PEAK_TABLE = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
]


def die(msg):
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    sys.exit(2)


# ---- config ---------------------------------------------------------------------------------------
DEFAULTS = {
    "model.hidden_size": 256, "model.intermediate_size": 0, "model.multiple_of": 256,
    "model.ffn_dim_multiplier": 1.0, "model.num_hidden_layers": 4, "model.num_attention_heads": 4,
    "model.num_key_value_heads": 0, "model.rope_theta": 10000.0, "model.rms_norm_eps": 1e-5,
    "model.vocab_size": 32000, "model.max_position_embeddings": 2048, "model.tie_word_embeddings": False,
    "model.initializer_range": 0.02,
    "optim.lr": 3e-4, "optim.beta1": 0.9, "optim.beta2": 0.95, "optim.eps": 1e-5, "optim.weight_decay": 0.1,
    "optim.grad_clip": 1.0,
    "train.seq_len": 2048, "train.micro_batch_size": 1, "train.global_batch_tokens": 4194304, "train.seed": 1234,
}


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_config(path, overrides):
    try:
        import yaml
    except ImportError:
        die("PyYAML is not installed (Debian: apt-get install python3-yaml)")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except OSError as e:
        die(f"cannot read config '{path}': {e.strerror}")
    except yaml.YAMLError as e:
        die(f"config '{path}' is not valid YAML: {str(e).splitlines()[0]}")
    if not isinstance(raw, dict):
        die(f"config '{path}' must be a mapping of sections")
    cfg = dict(DEFAULTS)
    cfg.update(flatten(raw))
    for o in overrides:
        if "=" not in o:
            die(f"override '{o}' must be key=value")
        k, v = o.split("=", 1)
        cfg[k] = yaml.safe_load(v)
    for k in DEFAULTS:
        if isinstance(DEFAULTS[k], (int, float)) and not isinstance(DEFAULTS[k], bool):
            try:
                cfg[k] = type(DEFAULTS[k])(cfg[k])
            except (TypeError, ValueError):
                die(f"config key '{k}' must be a number, got {cfg[k]!r}")
    return cfg


class Shape:
    """The model's dimensions, named as in ltrain (C, H, KV, HD, FF, V, L, T)."""

    def __init__(self, cfg):
        self.C = cfg["model.hidden_size"]
        self.H = cfg["model.num_attention_heads"]
        self.KV = cfg["model.num_key_value_heads"] or self.H
        self.HD = self.C // self.H
        self.L = cfg["model.num_hidden_layers"]
        self.V = cfg["model.vocab_size"]
        self.T = cfg["train.seq_len"]
        self.B = cfg["train.micro_batch_size"]
        ff = cfg["model.intermediate_size"]
        if ff <= 0:  # LLaMA's rule, as ModelConfig::ffn_dim()
            h = int(2 * (4 * self.C) / 3)
            h = int(cfg["model.ffn_dim_multiplier"] * h)
            m = cfg["model.multiple_of"]
            ff = (h + m - 1) // m * m
        self.FF = ff
        self.tied = bool(cfg["model.tie_word_embeddings"])
        if self.C % self.H or self.H % self.KV or self.HD % 2:
            die(f"hidden_size {self.C}, heads {self.H}, kv heads {self.KV}: C must divide by H, H by KV, C/H be even")

    def matmul_params(self):
        C, H, KV, HD, FF, V, L = self.C, self.H, self.KV, self.HD, self.FF, self.V, self.L
        return L * (C * (H + 2 * KV) * HD + H * HD * C + 3 * C * FF) + C * V

    def flops_per_token(self):
        return 6 * self.matmul_params() + 6 * self.L * self.H * self.HD * self.T

    def flops_per_token_palm(self):
        return 6 * self.matmul_params() + 12 * self.L * self.H * self.HD * self.T


def lookup_peak(device_name):
    for match, flops in PEAK_TABLE:
        if match in device_name:
            return flops, match
    return None, None


# ---- model ----------------------------------------------------------------------------------------
def build_model(torch, s, cfg, use_sdpa):
    nn = torch.nn
    F = torch.nn.functional

    class RMSNorm(nn.Module):
        def __init__(self, dim, eps):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):  # normalize in fp32, as ltrain's kernels do
            xf = x.float()
            y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            return (y * self.weight.float()).type_as(x)

    def rope(x, cos, sin):  # x (B, T, NH, HD), pairs (2i, 2i+1) rotated (Meta's interleaved layout)
        xr = x.float().reshape(*x.shape[:-1], -1, 2)
        x0, x1 = xr[..., 0], xr[..., 1]
        out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        return out.flatten(-2).type_as(x)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.wq = nn.Linear(s.C, s.H * s.HD, bias=False)
            self.wk = nn.Linear(s.C, s.KV * s.HD, bias=False)
            self.wv = nn.Linear(s.C, s.KV * s.HD, bias=False)
            self.wo = nn.Linear(s.H * s.HD, s.C, bias=False)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            q = rope(self.wq(x).view(B, T, s.H, s.HD), cos, sin).transpose(1, 2)   # (B, H, T, HD)
            k = rope(self.wk(x).view(B, T, s.KV, s.HD), cos, sin).transpose(1, 2)  # (B, KV, T, HD)
            v = self.wv(x).view(B, T, s.KV, s.HD).transpose(1, 2)
            if s.KV != s.H:  # grouped-query attention: each KV head serves H/KV query heads
                k = k.repeat_interleave(s.H // s.KV, dim=1)
                v = v.repeat_interleave(s.H // s.KV, dim=1)
            if use_sdpa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # torch < 2.0: explicit causal softmax (CPU smoke tests only)
                att = (q @ k.transpose(-2, -1)) / math.sqrt(s.HD)
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
                y = att.masked_fill(mask, float("-inf")).softmax(-1) @ v
            return self.wo(y.transpose(1, 2).reshape(B, T, s.H * s.HD))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Linear(s.C, s.FF, bias=False)  # gate
            self.w3 = nn.Linear(s.C, s.FF, bias=False)  # up
            self.w2 = nn.Linear(s.FF, s.C, bias=False)  # down

        def forward(self, x):
            return self.w2(F.silu(self.w1(x)) * self.w3(x))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn_norm = RMSNorm(s.C, cfg["model.rms_norm_eps"])
            self.attn = Attention()
            self.mlp_norm = RMSNorm(s.C, cfg["model.rms_norm_eps"])
            self.mlp = MLP()

        def forward(self, x, cos, sin):
            x = x + self.attn(self.attn_norm(x), cos, sin)
            return x + self.mlp(self.mlp_norm(x))

    class Llama(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(s.V, s.C)
            self.layers = nn.ModuleList(Block() for _ in range(s.L))
            self.norm = RMSNorm(s.C, cfg["model.rms_norm_eps"])
            self.lm_head = nn.Linear(s.C, s.V, bias=False)
            if s.tied:
                self.lm_head.weight = self.wte.weight
            inv = 1.0 / (cfg["model.rope_theta"] ** (torch.arange(0, s.HD, 2, dtype=torch.float32) / s.HD))
            ang = torch.outer(torch.arange(s.T, dtype=torch.float32), inv)  # (T, HD/2)
            self.register_buffer("cos", ang.cos()[None, :, None, :], persistent=False)
            self.register_buffer("sin", ang.sin()[None, :, None, :], persistent=False)
            std = cfg["model.initializer_range"]
            for name, p in self.named_parameters():
                if p.dim() == 2:  # output projections of the residual branches scaled by 1/sqrt(2L)
                    scaled = name.endswith("wo.weight") or name.endswith("w2.weight")
                    nn.init.normal_(p, 0.0, std / math.sqrt(2 * s.L) if scaled else std)

        def forward(self, tokens, targets):
            x = self.wte(tokens)
            for layer in self.layers:
                x = layer(x, self.cos, self.sin)
            logits = self.lm_head(self.norm(x))
            return F.cross_entropy(logits.float().reshape(-1, s.V), targets.reshape(-1))

    return Llama()


# ---- the benchmark --------------------------------------------------------------------------------
def run(args):
    try:
        import torch
    except ImportError:
        die("PyTorch is not installed (Debian: apt-get install python3-torch)")
    cfg = load_config(args.config, args.overrides)
    s = Shape(cfg)
    major = int(torch.__version__.split(".")[0])
    if args.variant == "compile" and not hasattr(torch, "compile"):
        die(f"--variant compile needs torch >= 2.0 (installed: {torch.__version__})")
    if args.device == "cuda" and not torch.cuda.is_available():
        die("--device cuda: no CUDA device is visible (use --device cpu for a smoke test)")
    if cfg["train.global_batch_tokens"] % (s.B * s.T):
        die(f"train.global_batch_tokens ({cfg['train.global_batch_tokens']}) must be a multiple of "
            f"micro_batch_size * seq_len = {s.B * s.T}")
    accum = cfg["train.global_batch_tokens"] // (s.B * s.T)
    dev = torch.device(args.device)
    torch.manual_seed(cfg["train.seed"])
    use_sdpa = hasattr(torch.nn.functional, "scaled_dot_product_attention")
    model = build_model(torch, s, cfg, use_sdpa).to(dev)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg["optim.weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    adam_kw = dict(lr=cfg["optim.lr"], betas=(cfg["optim.beta1"], cfg["optim.beta2"]), eps=cfg["optim.eps"])
    fused = False
    if args.device == "cuda" and major >= 2:
        try:
            opt = torch.optim.AdamW(groups, fused=True, **adam_kw)
            fused = True
        except (TypeError, RuntimeError):
            opt = torch.optim.AdamW(groups, foreach=True, **adam_kw)
    else:
        opt = torch.optim.AdamW(groups, **adam_kw)
    step_model = torch.compile(model) if args.variant == "compile" else model
    autocast = args.device == "cuda"  # bf16 autocast on the GPU; fp32 on the CPU smoke test

    gen = torch.Generator().manual_seed(cfg["train.seed"])
    n_steps = args.warmup + args.steps
    # Built before the clock starts: per step, `accum` micro-batches of B x (T+1) ids.
    data = torch.randint(0, s.V, (n_steps, accum, s.B, s.T + 1), generator=gen).to(dev)

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    def one_step(i):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        losses = []
        for a in range(accum):
            chunk = data[i, a]
            inp, tgt = chunk[:, :-1], chunk[:, 1:]
            with torch.autocast(device_type=args.device, dtype=torch.bfloat16, enabled=autocast):
                loss = step_model(inp, tgt)
            (loss / accum).backward()
            losses.append(loss.detach())
        if cfg["optim.grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["optim.grad_clip"])
        opt.step()
        total = float(torch.stack(losses).mean())  # synchronizes, as ltrain's global loss sum does
        sync()
        return total

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_ms, losses = [], []
    for i in range(n_steps):
        sync()
        t0 = time.perf_counter()
        loss = one_step(i)
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            step_ms.append(dt * 1e3)
            losses.append(loss)
    med = statistics.median(step_ms)
    tok_s = cfg["train.global_batch_tokens"] / (med / 1e3)
    if args.device == "cuda":
        device_name = torch.cuda.get_device_name()
        mem = torch.cuda.max_memory_allocated()
    else:
        device_name = f"CPU {platform.processor() or platform.machine()} x {torch.get_num_threads()} threads"
        mem = None
    if args.peak_tflops:
        peak, peak_source = args.peak_tflops * 1e12, "--peak-tflops"
    else:
        peak, match = lookup_peak(device_name)
        peak_source = f"table: {match}" if match else None
    fpt, fpt_palm = s.flops_per_token(), s.flops_per_token_palm()
    return {
        "tool": "bench_pytorch.py",
        "variant": args.variant,
        "config": args.config,
        "overrides": args.overrides,
        "torch_version": torch.__version__,
        "device": args.device,
        "device_name": device_name,
        "autocast_bf16": autocast,
        "attention": "scaled_dot_product_attention" if use_sdpa else "explicit causal softmax",
        "adamw": "fused" if fused else "foreach" if args.device == "cuda" else "default",
        "world_size": 1,
        "seq_len": s.T,
        "micro_batch_size": s.B,
        "grad_accum_steps": accum,
        "tokens_per_step": cfg["train.global_batch_tokens"],
        "warmup_steps": args.warmup,
        "steps": args.steps,
        "step_ms": med,
        "step_ms_min": min(step_ms),
        "step_ms_max": max(step_ms),
        "step_ms_all": step_ms,
        "tokens_per_sec": tok_s,
        "tokens_per_sec_per_rank": tok_s,
        "tokens_per_sec_per_gpu": tok_s,
        "flops_per_token": fpt,
        "flops_per_token_palm": fpt_palm,
        "tflops_per_rank": fpt * tok_s / 1e12,
        "peak_tflops_per_rank": peak / 1e12 if peak else None,
        "peak_source": peak_source,
        "mfu": fpt * tok_s / peak if peak else None,
        "mfu_palm": fpt_palm * tok_s / peak if peak else None,
        "memory_bytes": mem,
        "params": sum(p.numel() for p in model.parameters()),
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }


def report(r):
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"
    mem = "n/a (CPU)" if r["memory_bytes"] is None else f"{r['memory_bytes'] / 2**30:.2f} GiB peak allocated"
    lines = [
        f"bench_pytorch.py [{r['variant']}] torch {r['torch_version']} on {r['device_name']}",
        f"  model          {r['params'] / 1e6:.2f}M parameters, T {r['seq_len']}, micro-batch {r['micro_batch_size']}"
        f" x {r['grad_accum_steps']} per step ({r['tokens_per_step']} tokens)",
        f"  setup          autocast bf16 {r['autocast_bf16']}, {r['attention']}, AdamW {r['adamw']}",
        f"  step           {r['step_ms']:.2f} ms median of {r['steps']} (min {r['step_ms_min']:.2f}, max {r['step_ms_max']:.2f})",
        f"  throughput     {r['tokens_per_sec_per_gpu']:.1f} tokens/s/GPU, {r['tflops_per_rank']:.2f} TFLOP/s",
        f"  MFU            {pct(r['mfu'])} causal | {pct(r['mfu_palm'])} PaLM"
        + ("" if r["peak_source"] else " (no peak: give --peak-tflops X)"),
        f"  memory         {mem}",
        f"  loss           {r['loss_first']:.4f} -> {r['loss_last']:.4f}",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="ltrain YAML config")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, as for ltrain")
    ap.add_argument("--variant", choices=["eager", "compile"], default="eager")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    ap.add_argument("--json", help="also write the figures as JSON to this file")
    ap.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s per GPU (default: the table)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        die("--steps must be >= 1 and --warmup >= 0")
    if args.peak_tflops is not None and not (args.peak_tflops > 0 and math.isfinite(args.peak_tflops)):
        die("--peak-tflops must be a positive number")
    if args.json and os.path.dirname(args.json) and not os.path.isdir(os.path.dirname(args.json)):
        die(f"--json '{args.json}': directory '{os.path.dirname(args.json)}' does not exist")
    r = run(args)
    sys.stdout.write(report(r))
    if args.json:
        tmp = f"{args.json}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=2)
            f.write("\n")
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
