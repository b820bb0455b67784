#!/usr/bin/env python3
"""torch_ctglip.py - the CT-GLIP network of core/model.h in PyTorch (eager),
the baseline side of bench/gpu.sh.  build/bench/gpu (bench/gpu.c) is the
other side; both print one JSON line per measurement with the same fields,
evaluate the same synthetic data and count FLOPs with the same formula.

  python3 bench/torch_ctglip.py --model models/default.ctglip --mode infer,train
  python3 bench/torch_ctglip.py --mode plan ...      (no torch needed)
  python3 bench/torch_ctglip.py --mode check --dump FILE   (parity with model.c)

The network (model.h, model.c), built from the model config:
  C_l = width * mult^l capped at max_width; level l has the patch / 2^l.
  encoder level 0: residual block in_ch -> C_0, stride 1; level l = 1..depth:
    residual block C_{l-1} -> C_l, stride 2 (its first conv and its 1x1 skip
    conv downsample);
  decoder level l = depth-1..0: ConvTranspose3d(k=2, s=2, bias) C_{l+1} ->
    C_l, concat [up, encoder skip], residual block 2*C_l -> C_l;
  head: 1x1x1 conv (bias) C_0 -> K+1 logits;
  residual block: conv3x3(no bias) - inorm - lrelu - conv3x3(no bias) -
    inorm, plus conv1x1(no bias) - inorm of the input, added, then lrelu;
  instance norm: per sample and channel, biased variance, eps 1e-5, affine;
  input: HU clipped to [hu_lo, hu_hi] and scaled to [-1, 1];
  organ pooling: mean of the level-0 decoder output (C_0 channels) inside
    each class of a label map (training: the labels; inference: the argmax
    of the averaged logits), then Linear C_0 -> hidden, ReLU, Linear
    hidden -> E, L2 normalisation (fp32, as in cunet);
  text side: Linear text_dim -> E (when text_dim > 0), L2 normalisation.

The model file (core/model_io.c, model.h), little-endian, version 3:
  "CTGLIPMD", u32 version, u32 ncfg (16; 15 before version 3), i32 in_ch,
  n_classes, width, depth, mult, max_width, embed_dim, mlp_hidden, text_dim,
  patch[3] (z y x), f32 hu_lo, hu_hi, slope; (version 3) u32 pool (0 mean,
  1 mean+max: the MLP reads [mean | max], 2*C_0 values); u32 K, K x {u32 v2 id, u32 len, name}; u32 len,
  text encoder identity; (version 2) f32 spacing[3], u32 n_meta, n_meta x
  {u32 len, key, u32 len, value}; u32 n_tensors, n_tensors x {u32 len, name,
  u64 count}; u64 n_params, n_params f32; 32 bytes SHA-256 of all before.
  Parameter tensors: convs [cout][cin][k][k][k] (x fastest, = PyTorch's
  Conv3d weight); the k2s2 transposed conv [cout][cin][2][2][2] (PyTorch's
  ConvTranspose3d keeps [cin][cout][...]: transposed when loading); linear
  [out][in].  The loader checks that the file's tensor table is exactly the
  one this module's architecture implies (names, order, sizes).

Modes (JSON line fields: impl, mode, config, spacing, precision, median_s,
samples_per_s, tflops, gflop, device and details):
  infer  sliding-window inference as mdl_infer / cu_infer: windows of the
         patch size step by round(patch * (1 - overlap)), the last flush with
         the far edge, input outside the volume = hu_lo; logits and features
         summed in fp32 where windows overlap and divided by the window count,
         argmax (ties to the lower class), masked average pooling, MLP, L2
         norm.  The volume is a CPU tensor (host memory like cu_infer's) on
         the grid that resampling the --src CT to the spacing gives; its copy
         to the GPU and the label map's way back (v2 ids, uint8) are timed.
         samples_per_s = windows per second.  Median of --runs after --warmup,
         torch.cuda.synchronize() around every run.
  train  steps of --batch patches: CE (ignore 255) + soft Dice over the
         organs present, pooling in the labels, MLP, organ-text contrastive
         loss (symmetric InfoNCE, tau 0.07, same-class texts of other rows
         masked: glip.h's OT loss) against a fixed text per class through the
         text projection, backward, grad-norm clip 1, AdamW (lr 1e-4, wd
         1e-2; fused where available).  samples_per_s = patches per second.
  plan   grids, window counts and GFLOP (no torch), to compare with
         `build/bench/gpu --mode plan`.
  check  fp32 forward of the batch in a `build/bench/gpu --mode dump` file,
         compared with model.c's (CPU) logits, features and embeddings.

FLOPs (bench/gpu.c uses op_conv_flops for the same sum): 2 x multiply-adds
of every convolution (3x3x3, 1x1x1, the k2s2 transposed ones, the head)
and of the MLP's linear layers on K+1 rows per sample.  Inference: windows
x one patch forward + one MLP.  Training: 3 x (forward, backward-data,
backward-weights) less the backward-data of the two convolutions reading
the image.  tflops = flops / median_s / 1e12.

Precision: bf16 = torch.autocast(bfloat16) around the convolutional part
(what autocast does to each op is PyTorch's choice), fp32 = no autocast and
TF32 off for convolutions and matmuls (cunet's fp32 path uses FMA math).
channels_last_3d by default (--no-channels-last for NCDHW).
"""

import argparse
import hashlib
import json
import math
import statistics
import struct
import sys
import time

MDL_MAGIC = b"CTGLIPMD"
IGNORE = 255
DICE_SMOOTH = 1e-5
TAU = 0.07


# ---- config and model file -------------------------------------------------------------

def config_default(k):
    """mdl_config_default (model.c)."""
    return dict(in_ch=1, n_classes=k, width=16, depth=4, mult=2, max_width=320, embed_dim=256,
                mlp_hidden=768, text_dim=0, patch=[64, 64, 64], hu_lo=-1000.0, hu_hi=1000.0,
                slope=0.01, pool=0)


def level_width(c, l):
    """mdl_level_width."""
    w = c["width"]
    for _ in range(l):
        w *= c["mult"]
        if w > 1 << 20:
            break
    if c["max_width"] > 0 and w > c["max_width"]:
        w = c["max_width"]
    return w


def tensor_table(c):
    """The parameter tensors model.c's build_net lays out, in its order:
    [(name, count)]."""
    t = []

    def block(pfx, cin, cout):
        t.extend([(pfx + ".conv1.w", cout * cin * 27), (pfx + ".norm1.g", cout),
                  (pfx + ".norm1.b", cout), (pfx + ".conv2.w", cout * cout * 27),
                  (pfx + ".norm2.g", cout), (pfx + ".norm2.b", cout),
                  (pfx + ".convs.w", cout * cin), (pfx + ".norms.g", cout),
                  (pfx + ".norms.b", cout)])

    D = c["depth"]
    ch = [level_width(c, l) for l in range(D + 1)]
    for l in range(D + 1):
        block("enc%d" % l, ch[l - 1] if l else c["in_ch"], ch[l])
    for l in range(D - 1, -1, -1):
        t.append(("up%d.w" % l, ch[l] * ch[l + 1] * 8))
        t.append(("up%d.b" % l, ch[l]))
        block("dec%d" % l, 2 * ch[l], ch[l])
    k1, c0, E, H = c["n_classes"] + 1, ch[0], c["embed_dim"], c["mlp_hidden"]
    pd = 2 * c0 if c.get("pool", 0) == 1 else c0
    t.extend([("head.w", k1 * c0), ("head.b", k1), ("mlp.fc1.w", H * pd), ("mlp.fc1.b", H),
              ("mlp.fc2.w", E * H), ("mlp.fc2.b", E)])
    if c["text_dim"] > 0:
        t.extend([("text.proj.w", E * c["text_dim"]), ("text.proj.b", E)])
    return t


class ModelFile:
    """A parsed model file: cfg, class_ids, spacing, tensors [(name, count)],
    params (bytes of n_params float32) or None."""

    def __init__(self, path, weights=True):
        b = open(path, "rb").read()
        self.path = path
        o = [0]

        def take(fmt):
            v = struct.unpack_from("<" + fmt, b, o[0])
            o[0] += struct.calcsize("<" + fmt)
            return v

        def string():
            (n,) = take("I")
            s = b[o[0]:o[0] + n]
            o[0] += n
            return s.decode("utf-8", "replace")

        if b[:8] != MDL_MAGIC:
            raise ValueError("%s: not a ctglip model file" % path)
        o[0] = 8
        (version,) = take("I")
        if version not in (1, 2, 3):
            raise ValueError("%s: model format version %d" % (path, version))
        (ncfg,) = take("I")
        if ncfg != (16 if version >= 3 else 15):
            raise ValueError("%s: %d config fields" % (path, ncfg))
        ints = take("12i")
        lo, hi, slope = take("3f")
        pool = take("I")[0] if version >= 3 else 0
        self.cfg = dict(in_ch=ints[0], n_classes=ints[1], width=ints[2], depth=ints[3],
                        mult=ints[4], max_width=ints[5], embed_dim=ints[6], mlp_hidden=ints[7],
                        text_dim=ints[8], patch=list(ints[9:12]), hu_lo=lo, hu_hi=hi,
                        slope=slope, pool=pool)
        (k,) = take("I")
        self.class_ids = []
        for _ in range(k):
            (cid,) = take("I")
            string()
            self.class_ids.append(cid)
        self.text_id = string()
        self.spacing = [0.0, 0.0, 0.0]
        if version >= 2:
            self.spacing = list(take("3f"))
            (nm,) = take("I")
            for _ in range(nm):
                string()
                string()
        (nt,) = take("I")
        self.tensors = []
        for _ in range(nt):
            name = string()
            (cnt,) = take("Q")
            self.tensors.append((name, cnt))
        (np_,) = take("Q")
        self.n_params = np_
        start = o[0]
        end = start + 4 * np_
        if end + 32 != len(b):
            raise ValueError("%s: size %d, header says %d" % (path, len(b), end + 32))
        if hashlib.sha256(b[:end]).digest() != b[end:]:
            raise ValueError("%s: checksum mismatch" % path)
        self.params = b[start:end] if weights else None
        want = tensor_table(self.cfg)
        if want != self.tensors:
            raise ValueError("%s: tensor table differs from the architecture of the config "
                             "(first difference: %s)" % (path, next(
                                 (w, f) for w, f in zip(want + [None] * len(self.tensors),
                                                        self.tensors + [None] * len(want))
                                 if w != f)))


# ---- FLOPs, grids, windows (bench/gpu.c: the same rules) ------------------------------------

def conv_flops(n, cin, cout, d, h, w, k, stride, transposed=False):
    """op_conv_flops: 2*cin*cout*k^3 per output voxel (per input voxel of a
    transposed conv)."""
    k3 = k * k * k
    if transposed:
        return 2.0 * n * cin * cout * k3 * d * h * w
    pad = k // 2
    od, oh, ow = [(i + 2 * pad - k) // stride + 1 for i in (d, h, w)]
    return 2.0 * n * cin * cout * k3 * od * oh * ow


def net_conv_flops(c, n, d, h, w):
    """(flops of every convolution of one forward, the part of the two that read
    the image)."""
    D = c["depth"]
    f = 0.0
    first = 0.0
    for l in range(D + 1):
        cin = level_width(c, l - 1) if l else c["in_ch"]
        co = level_width(c, l)
        li, st = (l - 1, 2) if l else (0, 1)
        a = conv_flops(n, cin, co, d >> li, h >> li, w >> li, 3, st)
        b = conv_flops(n, co, co, d >> l, h >> l, w >> l, 3, 1)
        s = conv_flops(n, cin, co, d >> li, h >> li, w >> li, 1, st)
        f += a + b + s
        if l == 0:
            first = a + s
    for l in range(D - 1, -1, -1):
        ci, co = level_width(c, l + 1), level_width(c, l)
        f += conv_flops(n, ci, co, d >> (l + 1), h >> (l + 1), w >> (l + 1), 2, 2, True)
        f += conv_flops(n, 2 * co, co, d >> l, h >> l, w >> l, 3, 1)
        f += conv_flops(n, co, co, d >> l, h >> l, w >> l, 3, 1)
        f += conv_flops(n, 2 * co, co, d >> l, h >> l, w >> l, 1, 1)
    f += conv_flops(n, level_width(c, 0), c["n_classes"] + 1, d, h, w, 1, 1)
    return f, first


def mlp_flops(c, rows):
    return 2.0 * rows * (level_width(c, 0) * c["mlp_hidden"] + c["mlp_hidden"] * c["embed_dim"])


def infer_flops(c, windows):
    f, _ = net_conv_flops(c, 1, *c["patch"])
    return windows * f + mlp_flops(c, c["n_classes"] + 1)


def train_flops(c, n):
    f, first = net_conv_flops(c, n, *c["patch"])
    return 3.0 * f - first + 3.0 * mlp_flops(c, n * (c["n_classes"] + 1))


def cround(x):
    """C's round()/lroundf for x >= 0 (half away from zero)."""
    return int(math.floor(x + 0.5))


def starts(length, win, step):
    """mdl_infer's window starts along one axis."""
    st = []
    s = 0
    while True:
        if s + win >= length:
            st.append(max(length - win, 0))
            return st
        st.append(s)
        s += step


def window_starts(c, grid, overlap):
    """[(z0, y0, x0)] for grid (nx, ny, nz); patch is (z, y, x)."""
    pd, ph, pw = c["patch"]
    step = [max(cround(p * (1.0 - overlap)), 1) for p in (pd, ph, pw)]
    sz = starts(grid[2], pd, step[0])
    sy = starts(grid[1], ph, step[1])
    sx = starts(grid[0], pw, step[2])
    return [(z, y, x) for z in sz for y in sy for x in sx]


def target_grid(src, src_sp, sp):
    """ctg_vol_resample's grid: n' = round(n * sp / sp')."""
    return [max(cround(src[a] * src_sp[a] / sp), 1) for a in range(3)]


# ---- everything below needs torch ---------------------------------------------------------

def _torch():
    import torch  # noqa: WPS433 (imported here so that `plan` and py_compile need no torch)
    return torch


def build_net(c, norm="instance"):
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional
    slope = c["slope"]

    def Norm(ch):
        if norm == "group":  # the same function: one group per channel
            return nn.GroupNorm(ch, ch, eps=1e-5, affine=True)
        return nn.InstanceNorm3d(ch, eps=1e-5, affine=True, track_running_stats=False)

    class ResBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
            self.norm1 = Norm(cout)
            self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
            self.norm2 = Norm(cout)
            self.convs = nn.Conv3d(cin, cout, 1, stride, 0, bias=False)
            self.norms = Norm(cout)

        def forward(self, x):
            h = F.leaky_relu(self.norm1(self.conv1(x)), slope)
            h = self.norm2(self.conv2(h))
            return F.leaky_relu(h + self.norms(self.convs(x)), slope)

    class CTGLIPNet(nn.Module):
        def __init__(self):
            super().__init__()
            D = c["depth"]
            ch = [level_width(c, l) for l in range(D + 1)]
            self.cfg = c
            self.ch = ch
            self.enc = nn.ModuleList(
                [ResBlock(ch[l - 1] if l else c["in_ch"], ch[l], 2 if l else 1)
                 for l in range(D + 1)])
            self.up = nn.ModuleList(
                [nn.ConvTranspose3d(ch[l + 1], ch[l], 2, 2, bias=True) for l in range(D)])
            self.dec = nn.ModuleList([ResBlock(2 * ch[l], ch[l], 1) for l in range(D)])
            k1 = c["n_classes"] + 1
            self.head = nn.Conv3d(ch[0], k1, 1, bias=True)
            self.meanmax = c.get("pool", 0) == 1
            self.fc1 = nn.Linear(2 * ch[0] if self.meanmax else ch[0], c["mlp_hidden"])
            self.fc2 = nn.Linear(c["mlp_hidden"], c["embed_dim"])
            self.proj = nn.Linear(c["text_dim"], c["embed_dim"]) if c["text_dim"] > 0 else None
            lo, hi = c["hu_lo"], c["hu_hi"]
            self.mid = 0.5 * (lo + hi)
            self.rs = 2.0 / (hi - lo)

        def features(self, hu):
            """hu [n, 1, d, h, w] HU -> (logits [n, K+1, ...], level-0 features)."""
            x = (hu.clamp(c["hu_lo"], c["hu_hi"]) - self.mid) * self.rs
            skips = []
            for blk in self.enc:
                x = blk(x)
                skips.append(x)
            for l in range(len(self.dec) - 1, -1, -1):
                x = self.dec[l](torch.cat([self.up[l](x), skips[l]], 1))
            return self.head(x), x

        def embed(self, pooled):
            return F.normalize(self.fc2(F.relu(self.fc1(pooled))), dim=-1, eps=1e-12)

        def describe(self, mean, fv, lab, k1):
            """The organ descriptors: mean [k1, C0], plus (mean+max models)
            the per-class maximum of fv [s, C0] over lab [s] (labels >= k1
            skipped; absent classes 0), as model.c's pool_forward."""
            if not self.meanmax:
                return mean
            idx = torch.where(lab < k1, lab, torch.full_like(lab, k1)).long()
            mx = torch.zeros((k1 + 1, fv.shape[1]), device=fv.device, dtype=fv.dtype)
            mx = mx.scatter_reduce(0, idx.unsqueeze(1).expand(-1, fv.shape[1]), fv,
                                   reduce="amax", include_self=False)
            return torch.cat([mean, mx[:k1].to(mean.dtype)], 1)

        def text(self, t):
            return F.normalize(self.proj(t) if self.proj is not None else t, dim=-1, eps=1e-12)

    return CTGLIPNet()


def load_weights(net, mf):
    """Copies the model file's parameters into net (names as model.c's)."""
    torch = _torch()
    flat = torch.frombuffer(bytearray(mf.params), dtype=torch.float32)
    off = 0
    D = net.cfg["depth"]
    ch = net.ch
    targets = {}

    def block(pfx, mod, cin, cout):
        targets[pfx + ".conv1.w"] = (mod.conv1.weight, (cout, cin, 3, 3, 3), False)
        targets[pfx + ".norm1.g"] = (mod.norm1.weight, (cout,), False)
        targets[pfx + ".norm1.b"] = (mod.norm1.bias, (cout,), False)
        targets[pfx + ".conv2.w"] = (mod.conv2.weight, (cout, cout, 3, 3, 3), False)
        targets[pfx + ".norm2.g"] = (mod.norm2.weight, (cout,), False)
        targets[pfx + ".norm2.b"] = (mod.norm2.bias, (cout,), False)
        targets[pfx + ".convs.w"] = (mod.convs.weight, (cout, cin, 1, 1, 1), False)
        targets[pfx + ".norms.g"] = (mod.norms.weight, (cout,), False)
        targets[pfx + ".norms.b"] = (mod.norms.bias, (cout,), False)

    for l in range(D + 1):
        block("enc%d" % l, net.enc[l], ch[l - 1] if l else net.cfg["in_ch"], ch[l])
    for l in range(D):
        targets["up%d.w" % l] = (net.up[l].weight, (ch[l], ch[l + 1], 2, 2, 2), True)
        targets["up%d.b" % l] = (net.up[l].bias, (ch[l],), False)
        block("dec%d" % l, net.dec[l], 2 * ch[l], ch[l])
    k1 = net.cfg["n_classes"] + 1
    targets["head.w"] = (net.head.weight, (k1, ch[0], 1, 1, 1), False)
    targets["head.b"] = (net.head.bias, (k1,), False)
    targets["mlp.fc1.w"] = (net.fc1.weight, tuple(net.fc1.weight.shape), False)
    targets["mlp.fc1.b"] = (net.fc1.bias, tuple(net.fc1.bias.shape), False)
    targets["mlp.fc2.w"] = (net.fc2.weight, tuple(net.fc2.weight.shape), False)
    targets["mlp.fc2.b"] = (net.fc2.bias, tuple(net.fc2.bias.shape), False)
    if net.proj is not None:
        targets["text.proj.w"] = (net.proj.weight, tuple(net.proj.weight.shape), False)
        targets["text.proj.b"] = (net.proj.bias, tuple(net.proj.bias.shape), False)
    with torch.no_grad():
        for name, cnt in mf.tensors:
            p, shape, transposed = targets.pop(name)
            v = flat[off:off + cnt].view(shape)
            if transposed:  # [cout][cin][2][2][2] -> ConvTranspose3d's [cin][cout][2][2][2]
                v = v.permute(1, 0, 2, 3, 4)
            p.copy_(v.reshape(p.shape))
            off += cnt
    if targets or off != mf.n_params:
        raise ValueError("parameters left unassigned: %s" % sorted(targets))


# ---- synthetic data (bench/gpu.c: phantom_hu, train_batch, class_text) ------------------------

M32 = 0xFFFFFFFF


def _mul32(h, k):
    """(h * k) mod 2^32 for int64 tensors h in [0, 2^32), without int64 overflow."""
    lo = h & 0xFFFF
    hi = h >> 16
    return (lo * k + (((hi * k) & 0xFFFF) << 16)) & M32


def noise(idx):
    h = _mul32(idx & M32, 2654435761)
    h = h ^ (h >> 15)
    h = _mul32(h, 2246822519)
    h = h ^ (h >> 13)
    return (h % 41).to(_torch().float64) - 20.0


def phantom_hu(i, j, k, n, sp):
    """HU of voxels (i, j, k) (broadcastable int64 tensors) of a grid n (x y z)
    with spacing sp, mm."""
    torch = _torch()
    x = (i.double() + 0.5) * sp[0] - 0.5 * n[0] * sp[0]
    y = (j.double() + 0.5) * sp[1] - 0.5 * n[1] * sp[1]
    z = (k.double() + 0.5) * sp[2] - 0.5 * n[2] * sp[2]

    def ell(cx, cy, cz, rx, ry, rz):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0

    body = (x / 170.0) ** 2 + (y / 120.0) ** 2 <= 1.0
    lung = ell(80, -10, 80, 60, 70, 90) | ell(-80, -10, 80, 60, 70, 90)
    liver = ell(-60, 10, -40, 80, 60, 70)
    spine = (x / 20.0) ** 2 + ((y - 80.0) / 20.0) ** 2 <= 1.0
    v = torch.where(lung, -850.0, torch.where(liver, 60.0, torch.where(spine, 700.0, 40.0)))
    v = v + noise(i + n[0] * (j + n[1] * k))
    return torch.where(body, v, torch.full_like(v, -1000.0)).float()


def phantom(n, sp, device):
    """The volume [nz, ny, nx] float32 on device."""
    torch = _torch()
    k = torch.arange(n[2], device=device, dtype=torch.int64).view(-1, 1, 1)
    out = torch.empty((n[2], n[1], n[0]), dtype=torch.float32, device=device)
    j = torch.arange(n[1], device=device, dtype=torch.int64).view(1, -1, 1)
    i = torch.arange(n[0], device=device, dtype=torch.int64).view(1, 1, -1)
    step = max(1, (1 << 24) // max(1, n[0] * n[1]))
    for z0 in range(0, n[2], step):  # in slabs: float64 temporaries stay small
        out[z0:z0 + step] = phantom_hu(i, j, k[z0:z0 + step], n, sp)
    return out


def train_batch(c, nb, device):
    """hu [nb, 1, d, h, w] float32, labels [nb, d, h, w] int64."""
    torch = _torch()
    d, h, w = c["patch"]
    k1 = c["n_classes"] + 1
    z = torch.arange(d, device=device).view(-1, 1, 1)
    y = torch.arange(h, device=device).view(1, -1, 1)
    x = torch.arange(w, device=device).view(1, 1, -1)
    hu = torch.stack([phantom_hu(x + (b * w) // 4, y, z, (w, h, d), (3.0, 3.0, 3.0))
                      for b in range(nb)]).unsqueeze(1)
    q = (z * 4 // d) * 16 + (y * 4 // h) * 4 + x * 4 // w
    lab = (q % k1).expand(d, h, w).unsqueeze(0).expand(nb, d, h, w).contiguous()
    return hu, lab


def class_text(k1, dim, device):
    torch = _torch()
    cls = torch.arange(k1, device=device, dtype=torch.float32).view(-1, 1)
    j = torch.arange(dim, device=device, dtype=torch.float32).view(1, -1)
    return torch.sin(cls * 1.3 + j * 0.7)


# ---- the measurements -----------------------------------------------------------------------

class Bench:
    def __init__(self, args, cfg, class_ids, mf):
        torch = _torch()
        self.torch = torch
        self.args = args
        self.cfg = cfg
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        torch.backends.cudnn.benchmark = True
        self.net = build_net(cfg, args.norm).to(self.dev)
        if mf is not None and mf.params is not None:
            load_weights(self.net, mf)
        self.net.eval()
        self.memfmt = torch.channels_last_3d if args.channels_last else torch.contiguous_format
        self.net = self.net.to(memory_format=self.memfmt)
        self.features = self.net.features
        if args.compile:
            self.features = torch.compile(self.net.features)
        k1 = cfg["n_classes"] + 1
        lut = torch.zeros(256, dtype=torch.uint8)
        for j, cid in enumerate(class_ids[:k1 - 1]):
            lut[j + 1] = cid
        self.lut = lut.to(self.dev)
        self.impl = "pytorch-compile" if args.compile else "pytorch-eager"
        self.device_name = (torch.cuda.get_device_name(self.dev) if self.cuda else "cpu")

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.dev)

    def set_precision(self, prec):
        torch = self.torch
        tf32 = False  # fp32 means fp32 (cunet's fp32 convolutions use FMA math, no TF32)
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        if prec == "bf16":
            return torch.autocast(device_type=self.dev.type, dtype=torch.bfloat16)
        import contextlib
        return contextlib.nullcontext()

    def emit(self, mode, spacing, prec, med, sps, flops, **extra):
        line = dict(impl=self.impl, mode=mode, config=self.args.tag, spacing=spacing,
                    precision=prec, median_s=med, samples_per_s=sps,
                    tflops=flops / med / 1e12 if med > 0 else 0.0, gflop=flops / 1e9,
                    device=self.device_name)
        line.update(extra)
        line["torch"] = self.torch.__version__
        line["channels_last"] = bool(self.args.channels_last)
        line["norm"] = self.args.norm
        print(json.dumps(line), flush=True)

    # -- inference ---------------------------------------------------------------------------

    def infer(self, vol_cpu, prec):
        """One study: vol_cpu [nz, ny, nx] float32 (host).  Returns labels
        (uint8 v2 ids, host), embed [K+1, E] and count [K+1] (host)."""
        torch = self.torch
        c = self.cfg
        net = self.net
        pd, ph, pw = c["patch"]
        k1, c0 = c["n_classes"] + 1, net.ch[0]
        vol = vol_cpu.to(self.dev)
        nz, ny, nx = vol.shape
        grid = (nx, ny, nz)
        lsum = torch.zeros((1, k1, nz, ny, nx), device=self.dev).to(memory_format=self.memfmt)
        fsum = torch.zeros((1, c0, nz, ny, nx), device=self.dev).to(memory_format=self.memfmt)
        wsum = torch.zeros((nz, ny, nx), device=self.dev)
        wins = window_starts(c, grid, self.args.overlap)
        bs = max(1, self.args.sw_batch)
        buf = torch.empty((bs, 1, pd, ph, pw), device=self.dev)
        with torch.no_grad():
            for b0 in range(0, len(wins), bs):
                part = wins[b0:b0 + bs]
                ext = []
                for i, (z0, y0, x0) in enumerate(part):
                    ez, ey, ex = min(nz - z0, pd), min(ny - y0, ph), min(nx - x0, pw)
                    ext.append((ez, ey, ex))
                    if (ez, ey, ex) != (pd, ph, pw):
                        buf[i].fill_(c["hu_lo"])
                    buf[i, 0, :ez, :ey, :ex] = vol[z0:z0 + ez, y0:y0 + ey, x0:x0 + ex]
                x = buf[:len(part)].contiguous(memory_format=self.memfmt)
                with self.set_precision(prec):
                    logits, feat = self.features(x)
                for i, (z0, y0, x0) in enumerate(part):
                    ez, ey, ex = ext[i]
                    lsum[0, :, z0:z0 + ez, y0:y0 + ey, x0:x0 + ex] += \
                        logits[i, :, :ez, :ey, :ex].float()
                    fsum[0, :, z0:z0 + ez, y0:y0 + ey, x0:x0 + ex] += \
                        feat[i, :, :ez, :ey, :ex].float()
                    wsum[z0:z0 + ez, y0:y0 + ey, x0:x0 + ex] += 1.0
            lsum /= wsum
            fsum /= wsum
            lab = lsum[0].argmax(0).flatten()  # ties: the first maximum, the lower class
            count = torch.bincount(lab, minlength=k1)[:k1]
            # [V, C0] view of the averaged features (free when channels-last).
            fv = fsum[0].permute(1, 2, 3, 0).reshape(-1, c0)
            sums = torch.zeros((k1, c0), device=self.dev).index_add_(0, lab, fv)
            pooled = net.describe(sums / count.clamp(min=1).unsqueeze(1).float(), fv, lab, k1)
            embed = net.embed(pooled)  # fp32, outside autocast, as cunet's MLP
            labels = self.lut[lab].view(nz, ny, nx).cpu()
            return labels, embed.cpu(), count.cpu()

    def run_infer(self):
        torch = self.torch
        a = self.args
        c = self.cfg
        for prec in a.precision:
            for sp in a.spacing:
                grid = target_grid(a.src, a.src_spacing, sp)
                vol = phantom(grid, (sp, sp, sp), self.dev).cpu()
                nw = len(window_starts(c, grid, a.overlap))
                print("torch: infer %s %s %g mm: grid %dx%dx%d, %d windows" %
                      (a.tag, prec, sp, grid[0], grid[1], grid[2], nw), file=sys.stderr)
                times = []
                found = 0
                for r in range(-a.warmup, a.runs):
                    self.sync()
                    t0 = time.perf_counter()
                    _, _, count = self.infer(vol, prec)
                    self.sync()
                    t1 = time.perf_counter()
                    if r >= 0:
                        times.append(t1 - t0)
                    found = int((count[1:] > 0).sum())
                    counts = [int(v) for v in count]
                med = statistics.median(times)
                self.emit("infer", sp, prec, med, nw / med, infer_flops(c, nw), grid=grid,
                          windows=nw, runs=a.runs, organs_found=found, counts=counts,
                          sw_batch=a.sw_batch)
                del vol
                if self.cuda:
                    torch.cuda.empty_cache()

    # -- training -----------------------------------------------------------------------------

    def seg_losses(self, logits, lab):
        """CE (mean over counted voxels) + soft Dice over organs present
        (ops.h's definitions), fp32."""
        torch = self.torch
        F = torch.nn.functional
        k1 = logits.shape[1]
        ce = F.cross_entropy(logits, lab, ignore_index=IGNORE)
        prob = torch.softmax(logits, 1).flatten(2)  # [n, k1, s]
        lf = lab.flatten(1)
        valid = (lf < k1).unsqueeze(1).float()
        onehot = torch.zeros_like(prob).scatter_(1, lf.clamp(max=k1 - 1).unsqueeze(1), 1.0) * valid
        inter = (prob * onehot).sum(2)
        psum = (prob * valid).sum(2)
        gsum = onehot.sum(2)
        dice = (2 * inter + DICE_SMOOTH) / (psum + gsum + DICE_SMOOTH)
        present = gsum[:, 1:] > 0
        d = dice[:, 1:][present]
        ldice = 1.0 - d.mean() if d.numel() else dice.sum() * 0
        return ce, ldice, onehot, gsum

    def run_train(self):
        torch = self.torch
        F = torch.nn.functional
        a = self.args
        c = self.cfg
        net = self.net
        k1, c0, E = c["n_classes"] + 1, net.ch[0], c["embed_dim"]
        T = c["text_dim"] if c["text_dim"] > 0 else E
        B = a.batch
        hu, lab = train_batch(c, B, self.dev)
        hu = hu.contiguous(memory_format=self.memfmt)
        texts = class_text(k1, T, self.dev)
        cls_of_row = torch.arange(B * k1, device=self.dev) % k1
        # Fresh weights for each precision: training changes them.
        state = {k: v.clone() for k, v in net.state_dict().items()}
        for prec in a.precision:
            net.load_state_dict(state)
            net.train()
            try:
                opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                                        weight_decay=1e-2, fused=self.cuda)
            except (TypeError, RuntimeError):
                opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-2)
            params = [p for p in net.parameters()]
            times = []
            print("torch: train %s %s: batch %d of %s, %d+%d steps" %
                  (a.tag, prec, B, "x".join(map(str, c["patch"])), a.train_warmup, a.steps),
                  file=sys.stderr)
            vals = (0.0, 0.0, 0.0)
            for step in range(a.train_warmup + a.steps):
                self.sync()
                t0 = time.perf_counter()
                with self.set_precision(prec):
                    logits, feat = self.features(hu)
                ce, ldice, onehot, count = self.seg_losses(logits.float(), lab)
                # Pooling in the labels (label values >= K+1 skipped, as 255):
                # [B, k1, s] x [B, s, C0].
                fv = feat.float().flatten(2).transpose(1, 2)
                pooled = torch.bmm(onehot, fv) / count.clamp(min=1).unsqueeze(2)
                pooled = torch.stack([net.describe(pooled[b], fv[b], lab[b].flatten().to(self.dev), k1)
                                      for b in range(B)])
                emb = net.embed(pooled.reshape(B * k1, -1))
                present = (count.reshape(-1) > 0) & (cls_of_row > 0)
                img = emb[present]
                cls = cls_of_row[present]
                txt = net.text(texts[cls])
                n = img.shape[0]
                if n > 0:
                    sim = img @ txt.t() / TAU
                    same = (cls.unsqueeze(0) == cls.unsqueeze(1)) & \
                        ~torch.eye(n, dtype=torch.bool, device=self.dev)
                    tgt = torch.arange(n, device=self.dev)
                    li = F.cross_entropy(sim.masked_fill(same, float("-inf")), tgt)
                    lt = F.cross_entropy(sim.t().masked_fill(same.t(), float("-inf")), tgt)
                    lctr = 0.5 * (li + lt)
                else:
                    lctr = emb.sum() * 0
                loss = ce + ldice + lctr
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                self.sync()
                t1 = time.perf_counter()
                if step >= a.train_warmup:
                    times.append(t1 - t0)
                if step == a.train_warmup + a.steps - 1:
                    vals = (float(ce), float(ldice), float(lctr))
            med = statistics.median(times)
            print("torch:   last step: ce %.4f dice %.4f contrast %.4f" % vals, file=sys.stderr)
            self.emit("train", None, prec, med, B / med, train_flops(c, B), batch=B,
                      steps=a.steps, patch=c["patch"], loss_ce=vals[0], loss_dice=vals[1],
                      loss_contrast=vals[2])
        net.load_state_dict(state)
        net.eval()

    # -- parity with model.c ----------------------------------------------------------------------

    def check(self, path):
        torch = self.torch
        raw = open(path, "rb").read()
        if raw[:8] != b"CTGBDUMP":
            raise ValueError("%s: not a dump of build/bench/gpu --mode dump" % path)
        n, d, h, w, k1, c0, E = struct.unpack_from("<7i", raw, 8)
        s = d * h * w
        o = 8 + 28

        def take(dtype, cnt, size):
            nonlocal o
            t = torch.frombuffer(bytearray(raw[o:o + cnt * size]), dtype=dtype)
            o += cnt * size
            return t

        hu = take(torch.float32, n * s, 4).view(n, 1, d, h, w)
        lab = take(torch.uint8, n * s, 1).view(n, d, h, w).long()
        ref_logits = take(torch.float32, n * k1 * s, 4).view(n, k1, d, h, w)
        ref_feat = take(torch.float32, n * c0 * s, 4).view(n, c0, d, h, w)
        ref_embed = take(torch.float32, n * k1 * E, 4).view(n, k1, E)
        ref_count = take(torch.int64, n * k1, 8).view(n, k1)
        self.set_precision("fp32")
        with torch.no_grad():
            logits, feat = self.net.features(hu.to(self.dev).contiguous(memory_format=self.memfmt))
            onehot = torch.zeros((n, k1, s), device=self.dev).scatter_(
                1, lab.to(self.dev).flatten(1).unsqueeze(1), 1.0)
            count = onehot.sum(2)
            fvs = feat.float().flatten(2).transpose(1, 2)
            pooled = torch.bmm(onehot, fvs) / count.clamp(min=1).unsqueeze(2)
            pooled = torch.stack([self.net.describe(pooled[b], fvs[b],
                                                    lab[b].flatten().to(self.dev), k1)
                                  for b in range(n)])
            emb = self.net.embed(pooled.view(n * k1, -1)).view(n, k1, E)

        def rel(a, b):
            a = a.float().cpu()
            b = b.float().cpu()
            return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))

        present = ref_count > 0
        r_logits = rel(logits, ref_logits)
        r_feat = rel(feat, ref_feat)
        r_embed = rel(emb.cpu()[present], ref_embed[present]) if present.any() else 0.0
        counts_ok = bool(torch.equal(count.cpu().long(), ref_count))
        tol = self.args.check_tol
        ok = counts_ok and max(r_logits, r_feat, r_embed) <= tol
        print(json.dumps(dict(impl=self.impl, mode="check", config=self.args.tag, ok=ok,
                              rel_logits=r_logits, rel_feat=r_feat, rel_embed=r_embed,
                              counts_equal=counts_ok, tol=tol, device=self.device_name)),
              flush=True)
        return ok


def model_from_args(a):
    """(cfg, class_ids, ModelFile or None) as bench/gpu.c's make_model
    (without the file's weights for a new architecture: those are PyTorch's
    own random ones; gpu.sh passes the file bench/gpu saved instead)."""
    mf = ModelFile(a.model, weights=a.mode != ["plan"]) if a.model else None
    overrides = any(v for v in (a.width, a.depth, a.patch, a.classes, a.embed, a.hidden,
                                a.text_dim))
    arch = a.arch or ("file" if mf else "default")
    if mf and arch == "file" and not overrides:
        return mf.cfg, mf.class_ids, mf
    k = mf.cfg["n_classes"] if mf else 24
    c = config_default(k)
    c["text_dim"] = mf.cfg["text_dim"] if mf else 100
    if arch == "file" and mf:
        c = dict(mf.cfg)
    elif arch == "tiny":
        c.update(width=4, depth=2, max_width=64, embed_dim=16, mlp_hidden=32,
                 patch=[16, 16, 16])
        if not mf:
            c["text_dim"] = 8
        if not a.classes:
            c["n_classes"] = min(k, 4)
    elif arch != "default":
        raise SystemExit("--arch %s: file, default or tiny" % arch)
    for key, v in (("width", a.width), ("depth", a.depth), ("n_classes", a.classes),
                   ("embed_dim", a.embed), ("mlp_hidden", a.hidden)):
        if v:
            c[key] = v
    if a.patch:
        c["patch"] = [a.patch] * 3
    if a.text_dim:
        c["text_dim"] = max(a.text_dim, 0)
    ids = list(mf.class_ids) if mf else []
    nxt = 1
    while len(ids) < c["n_classes"]:
        while nxt in ids:
            nxt += 1
        ids.append(nxt)
    return c, ids[:c["n_classes"]], None


def parse_args(argv):
    def floats(s):
        return [float(x) for x in s.split(",")]

    def ints(s):
        return [int(x) for x in s.split(",")]

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model file (config, classes, weights)")
    p.add_argument("--arch", choices=["file", "default", "tiny"])
    for k in ("width", "depth", "patch", "classes", "embed", "hidden", "text-dim"):
        p.add_argument("--" + k, type=int, default=0)
    p.add_argument("--tag", default=None, help="config label in the JSON")
    p.add_argument("--mode", type=lambda s: s.split(","), default=["infer", "train"],
                   help="infer,train,plan,check")
    p.add_argument("--spacing", type=floats, default=[3.0, 1.5])
    p.add_argument("--precision", type=lambda s: s.split(","), default=["bf16", "fp32"])
    p.add_argument("--src", type=ints, default=[512, 512, 300])
    p.add_argument("--src-spacing", type=floats, default=[0.78125, 0.78125, 1.25])
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--train-warmup", type=int, default=3)
    p.add_argument("--sw-batch", type=int, default=1,
                   help="windows per forward (1: one at a time, as mdl_infer and cu_infer)")
    p.add_argument("--norm", choices=["instance", "group"], default="instance",
                   help="InstanceNorm3d, or GroupNorm with a group per channel (the same "
                        "function, another kernel)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=True)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dump", help="the file of build/bench/gpu --mode dump (for check)")
    p.add_argument("--check-tol", type=float, default=2e-3)
    a = p.parse_args(argv)
    for m in a.mode:
        if m not in ("infer", "train", "plan", "check"):
            p.error("mode %s: infer, train, plan or check" % m)
    for q in a.precision:
        if q not in ("bf16", "fp32"):
            p.error("precision %s: bf16 or fp32" % q)
    if len(a.src) != 3 or len(a.src_spacing) != 3:
        p.error("--src and --src-spacing take three values")
    if not 0 <= a.overlap < 1:
        p.error("overlap in [0, 1)")
    return a


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    cfg, ids, mf = model_from_args(a)
    if a.tag is None:
        a.tag = "file" if mf else "%s-w%dd%dp%dk%d" % (a.arch or "default", cfg["width"],
                                                         cfg["depth"], cfg["patch"][0],
                                                         cfg["n_classes"])
    print("torch: network %s: width %d depth %d mult %d max_width %d classes %d embed %d "
          "hidden %d text %d patch %s" % (a.tag, cfg["width"], cfg["depth"], cfg["mult"],
                                          cfg["max_width"], cfg["n_classes"], cfg["embed_dim"],
                                          cfg["mlp_hidden"], cfg["text_dim"],
                                          "x".join(map(str, cfg["patch"]))), file=sys.stderr)
    if "plan" in a.mode:
        for sp in a.spacing:
            grid = target_grid(a.src, a.src_spacing, sp)
            nw = len(window_starts(cfg, grid, a.overlap))
            print(json.dumps(dict(impl="pytorch", mode="plan-infer", config=a.tag, spacing=sp,
                                  grid=grid, windows=nw, gflop=round(infer_flops(cfg, nw) / 1e9,
                                                                     6))))
        n_params = sum(cnt for _, cnt in tensor_table(cfg))
        print(json.dumps(dict(impl="pytorch", mode="plan-train", config=a.tag, batch=a.batch,
                              patch=cfg["patch"],
                              gflop=round(train_flops(cfg, a.batch) / 1e9, 6),
                              n_params=n_params)))
    rest = [m for m in a.mode if m != "plan"]
    if not rest:
        return 0
    b = Bench(a, cfg, ids, mf)
    ok = True
    if "check" in rest:
        if not a.dump:
            raise SystemExit("--mode check needs --dump FILE")
        ok = b.check(a.dump) and ok
    if "infer" in rest:
        b.run_infer()
    if "train" in rest:
        b.run_train()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
