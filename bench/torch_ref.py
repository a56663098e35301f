#!/usr/bin/env python3
"""PyTorch reference timings for the shapes of `node dist/kernels-test/bench.js --full` and
kernels-test/block-bench.ts, on the same CUDA card, and the final ours / PyTorch table.

  python3 bench/torch_ref.py [--out torch.json] [--no-blocks]   time PyTorch (needs CUDA)
  python3 bench/torch_ref.py --summarize DIR                     table from DIR/bench.log, DIR/block.json,
                                                                 DIR/torch.json (no torch needed)

Every op runs in bf16 (activations and weights) except the rows whose weight is f32 in bench.js
(`w=f32`), which run in f32 (TF32 off, PyTorch's default for matmul). Timing: 3 warm-up calls, then
CUDA events around each of N calls (N so that the row takes about 1 s, at least 5); the minimum is
reported, as bench.js reports its minimum. Shape keys match bench.js's `shape` column exactly.
"""
import argparse
import json
import math
import os
import re
import sys

# ---- shapes: keep in step with kernels-test/bench.ts (--full) and kernels-test/block-bench.ts -------

FULL_MS = [1, 4, 64, 256, 1024, 2 * (4096 + 4096 + 640)]
FULL_NS = [3072, 9216, 12288, 21504]


def linear_shapes():
    out = [(1024, 1024, 1024, "f32")]
    for n in FULL_NS:
        for m in FULL_MS:
            out.append((m, 3072, n, "bf16"))
    out += [(4096, 3072, 3072, "f32"), (4096, 12288, 3072, "bf16")]
    return out


ATTN = [(8832, 24, 128)]
CONV = [(512, 512, 128), (512, 512, 256), (256, 256, 512), (128, 128, 1024)]
BLOCK = dict(H=3072, heads=24, mlp=12288, B=2, T=640, Limg=8192)


# ---- timing -------------------------------------------------------------------------------------


def time_cuda(torch, fn, target_ms=1000.0):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    one = max(start.elapsed_time(end), 1e-3)
    n = int(min(200, max(5, target_ms / one)))
    times = []
    for _ in range(n):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return min(times), sum(times) / len(times)


def run_torch(args):
    import torch
    import torch.nn.functional as F

    assert torch.cuda.is_available(), "no CUDA device"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    print(f"torch {torch.__version__} on {name}", flush=True)
    rows = []

    def record(shape, flops, t):
        ms, mean = t
        r = dict(shape=shape, ms=ms, mean_ms=mean, tflops=flops / ms / 1e9)
        rows.append(r)
        print(f"| {shape:<40} | {ms:10.3f} | {mean:10.3f} | {r['tflops']:8.2f} |", flush=True)

    print(f"| {'shape':<40} | {'min ms':>10} | {'mean ms':>10} | {'TFLOP/s':>8} |")
    g = torch.Generator(device=dev).manual_seed(0)
    for m, k, n, w in linear_shapes():
        dt = torch.bfloat16 if w == "bf16" else torch.float32
        x = torch.randn(m, k, device=dev, dtype=dt, generator=g) * 0.5
        wt = torch.randn(n, k, device=dev, dtype=dt, generator=g) * 0.5
        record(f"linear M={m} K={k} N={n} w={w}", 2 * m * n * k, time_cuda(torch, lambda: F.linear(x, wt)))
        del x, wt
    for L, H, D in ATTN:
        q, k, v = (torch.randn(1, H, L, D, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(3))
        record(f"attention L={L} H={H} Dh={D}", 4 * H * L * L * D, time_cuda(torch, lambda: F.scaled_dot_product_attention(q, k, v)))
        del q, k, v
    for C, O, S in CONV:
        x = torch.randn(1, C, S, S, device=dev, dtype=torch.bfloat16, generator=g)
        wt = torch.randn(O, C, 3, 3, device=dev, dtype=torch.bfloat16, generator=g) * 0.05
        record(f"conv2d 3x3 {C}->{O} {S}x{S}", 2 * O * C * 9 * S * S, time_cuda(torch, lambda: F.conv2d(x, wt, padding=1)))
        del x, wt
    torch.cuda.empty_cache()
    blocks = [] if args.no_blocks else run_blocks(torch, F, dev, g)
    out = dict(device=name, torch=torch.__version__, rows=rows, blocks=blocks)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


def run_blocks(torch, F, dev, g):
    """FLUX DoubleStreamBlock / SingleStreamBlock in plain bf16 PyTorch (SDPA attention), same sizes and
    FLOP count as block-bench.ts: time per block and peak CUDA memory above the weights and inputs."""
    H, heads, M, B, T, Li = (BLOCK[k] for k in ("H", "heads", "mlp", "B", "T", "Limg"))
    L, hd, bf = T + Li, H // heads, torch.bfloat16

    def lin(n, k):
        return (torch.randn(n, k, device=dev, dtype=bf, generator=g) / math.sqrt(k), torch.randn(n, device=dev, dtype=bf, generator=g) * 0.02)

    def rms(x, s):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(bf) * s

    def rope(x, cos, sin):  # interleaved pairs, x [B, heads, L, hd]
        x2 = x.float().reshape(*x.shape[:-1], -1, 2)
        a, b = x2[..., 0], x2[..., 1]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2).to(bf)

    pos = torch.arange(L, device=dev, dtype=torch.float32)[:, None]
    freqs = 10000.0 ** (-torch.arange(hd // 2, device=dev, dtype=torch.float32) * 2 / hd)
    cos, sin = torch.cos(pos * freqs), torch.sin(pos * freqs)
    vec = F.silu(torch.randn(B, H, device=dev, dtype=bf, generator=g))

    def stream():
        return dict(mod=lin(6 * H, H), qkv=lin(3 * H, H), qs=torch.ones(hd, device=dev, dtype=bf), ks=torch.ones(hd, device=dev, dtype=bf),
                    proj=lin(H, H), mlp0=lin(M, H), mlp2=lin(H, M))

    def qkv_of(x, w, qs, ks):
        q, k, v = F.linear(x, *w).view(B, x.shape[1], 3, heads, hd).permute(2, 0, 3, 1, 4)
        return rms(q, qs), rms(k, ks), v

    def attend(q, k, v):
        o = F.scaled_dot_product_attention(rope(q, cos, sin), rope(k, cos, sin), v)
        return o.transpose(1, 2).reshape(B, L, H)

    def double(img, txt, si, st):
        mi = F.linear(vec, *si["mod"])[:, None].chunk(6, -1)
        mt = F.linear(vec, *st["mod"])[:, None].chunk(6, -1)
        ni = (1 + mi[1]) * F.layer_norm(img, (H,), eps=1e-6) + mi[0]
        nt = (1 + mt[1]) * F.layer_norm(txt, (H,), eps=1e-6) + mt[0]
        iq, ik, iv = qkv_of(ni, si["qkv"], si["qs"], si["ks"])
        tq, tk, tv = qkv_of(nt, st["qkv"], st["qs"], st["ks"])
        a = attend(torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2))
        ta, ia = a[:, :T], a[:, T:]
        img = img + mi[2] * F.linear(ia, *si["proj"])
        img = img + mi[5] * F.linear(F.gelu(F.linear((1 + mi[4]) * F.layer_norm(img, (H,), eps=1e-6) + mi[3], *si["mlp0"]), approximate="tanh"), *si["mlp2"])
        txt = txt + mt[2] * F.linear(ta, *st["proj"])
        txt = txt + mt[5] * F.linear(F.gelu(F.linear((1 + mt[4]) * F.layer_norm(txt, (H,), eps=1e-6) + mt[3], *st["mlp0"]), approximate="tanh"), *st["mlp2"])
        return img, txt

    def single(x, w):
        sh, sc, gt = F.linear(vec, *w["mod"])[:, None].chunk(3, -1)
        xm = (1 + sc) * F.layer_norm(x, (H,), eps=1e-6) + sh
        qkv, mlp = torch.split(F.linear(xm, *w["l1"]), [3 * H, M], -1)
        q, k, v = qkv.reshape(B, L, 3, heads, hd).permute(2, 0, 3, 1, 4)
        a = attend(rms(q, w["qs"]), rms(k, w["ks"]), v)
        return x + gt * F.linear(torch.cat((a, F.gelu(mlp, approximate="tanh")), 2), *w["l2"])

    attn_flops = 4 * B * heads * L * L * hd
    res = []
    with torch.no_grad():
        img = torch.randn(B, Li, H, device=dev, dtype=bf, generator=g)
        txt = torch.randn(B, T, H, device=dev, dtype=bf, generator=g)
        si, st = stream(), stream()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t = time_cuda(torch, lambda: double(img, txt, si, st))
        flops = 2 * B * L * (H * 3 * H + H * H + 2 * H * M) + 2 * 2 * B * 6 * H * H + attn_flops
        res.append(dict(block="double", ms=t[0], mean_ms=t[1], tflops=flops / t[0] / 1e9, peak_bytes=torch.cuda.max_memory_allocated(),
                        transient_peak_bytes=torch.cuda.max_memory_allocated() - base))
        del si, st
        x = torch.cat((txt, img), 1)
        w = dict(mod=lin(3 * H, H), l1=lin(3 * H + M, H), l2=lin(H, H + M), qs=torch.ones(hd, device=dev, dtype=bf), ks=torch.ones(hd, device=dev, dtype=bf))
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t = time_cuda(torch, lambda: single(x, w))
        flops = 2 * B * L * (H * (3 * H + M) + (H + M) * H) + 2 * B * 3 * H * H + attn_flops
        res.append(dict(block="single", ms=t[0], mean_ms=t[1], tflops=flops / t[0] / 1e9, peak_bytes=torch.cuda.max_memory_allocated(),
                        transient_peak_bytes=torch.cuda.max_memory_allocated() - base))
    for r in res:
        print(f"| block {r['block']:<34} | {r['ms']:10.3f} | {r['mean_ms']:10.3f} | {r['tflops']:8.2f} | peak {r['peak_bytes'] / 2**30:.2f} GiB", flush=True)
    return res


# ---- summary ------------------------------------------------------------------------------------

ROW = re.compile(r"^\|\s*((?:linear|attention|conv2d)[^|]*?)\s*\|\s*([^|]*?)\s*\|\s*([0-9.]+)\s*\|\s*([0-9.]+)\s*\|")


def summarize(d):
    ours = {}
    try:
        for line in open(os.path.join(d, "bench.log")):
            m = ROW.match(line)
            if m and m.group(2) != "naive":  # keep the auto / tiled row of each shape
                ours.setdefault(m.group(1), float(m.group(3)))
    except OSError:
        pass
    torch_rows, torch_blocks, dev = {}, {}, "?"
    try:
        tj = json.load(open(os.path.join(d, "torch.json")))
        dev = tj.get("device", "?")
        torch_rows = {r["shape"]: r for r in tj.get("rows", [])}
        torch_blocks = {r["block"]: r for r in tj.get("blocks", [])}
    except (OSError, ValueError):
        pass
    blocks = {}
    try:
        bj = json.load(open(os.path.join(d, "block.json")))
        blocks = {r["block"]: r for r in bj.get("results", [])}
    except (OSError, ValueError):
        pass

    out = [f"ours (WebGPU/Dawn, f32 activations, bf16 weights) vs PyTorch bf16 on {dev}", "",
           f"| {'shape':<40} | {'ours ms':>9} | {'torch ms':>9} | {'ours/torch':>10} | {'torch TFLOP/s':>13} |",
           f"|{'-' * 42}|{'-' * 11}|{'-' * 11}|{'-' * 12}|{'-' * 15}|"]
    keys = list(dict.fromkeys(list(ours) + list(torch_rows)))
    for k in keys:
        o, t = ours.get(k), torch_rows.get(k)
        ratio = f"{o / t['ms']:.2f}x" if o is not None and t else "-"
        out.append(f"| {k:<40} | {o if o is not None else float('nan'):9.2f} | {t['ms'] if t else float('nan'):9.3f} | {ratio:>10} | "
                   f"{t['tflops'] if t else float('nan'):13.1f} |")
    for b in ("double", "single"):
        o, t = blocks.get(b), torch_blocks.get(b)
        if not o and not t:
            continue
        oms = o["minMs"] if o else float("nan")
        tms = t["ms"] if t else float("nan")
        ratio = f"{oms / tms:.2f}x" if o and t else "-"
        out.append(f"| {'block ' + b:<40} | {oms:9.2f} | {tms:9.3f} | {ratio:>10} | {t['tflops'] if t else float('nan'):13.1f} |")
    out.append("")
    for b in ("double", "single"):
        o, t = blocks.get(b), torch_blocks.get(b)
        if o or t:
            og = f"{o['peakBytes'] / 2**30:.2f} GiB (weights {o['weightBytes'] / 2**30:.2f}, transient {o['transientPeakBytes'] / 2**30:.2f})" if o else "-"
            tg = f"{t['peak_bytes'] / 2**30:.2f} GiB (transient {t['transient_peak_bytes'] / 2**30:.2f})" if t else "-"
            out.append(f"peak GPU, {b} block: ours {og}; torch {tg}")
    text = "\n".join(out) + "\n"
    with open(os.path.join(d, "summary.md"), "w") as f:
        f.write(text)
    print(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="torch.json")
    ap.add_argument("--no-blocks", action="store_true")
    ap.add_argument("--summarize", metavar="DIR")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize)
    else:
        run_torch(args)


if __name__ == "__main__":
    sys.exit(main())
