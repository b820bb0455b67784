#!/usr/bin/env bash
# gpu.sh - the CT-GLIP network on the GPU through cuda/cunet.h (build/bench/gpu,
# bench/gpu.c) against PyTorch eager on the same network (bench/torch_ctglip.py):
# same configs, same weights (one model file both load), same synthetic data, the
# same FLOP formula; prints a side-by-side table with ratios and the goals.
# First it runs the GPU tests (`runner _gpu`, below), so one call checks both
# correctness and speed.
#
#   bash bench/gpu.sh             on a machine with an NVIDIA GPU and PyTorch
#   bash bench/gpu.sh --tests-only  only the GPU tests (anywhere: without a GPU
#                                 they skip, and it says nothing was verified)
#   bash bench/gpu.sh --pack      anywhere with nvcc (no GPU needed): builds the
#                                 binary and the test runner into build-gpu/ and
#                                 packs them with the shared libraries a bare CUDA
#                                 image lacks (oneDNN, niftiio, DCMTK, ...) into
#                                 build-gpu-pack/, to be carried to a GPU machine
#                                 that cannot build the project
#   bash bench/gpu.sh --emulate   the whole harness on the host emulation
#                                 (CU_EMULATE, tiny sizes; PyTorch rows only where
#                                 torch imports): a test of the script, not numbers
#
# One command on the device machine, after `bash bench/gpu.sh --pack` here:
#   run(command="bash bench/gpu.sh", carry=["build-gpu-pack"], timeout_s=600)
#
# Which binary: $GPU_BIN if set (make bench-gpu sets it), else
# build-gpu-pack/gpu when present (its libraries unpacked to a scratch
# folder), else `make -j16 BUILD=$CTG_BUILD $CTG_BUILD/bench/gpu`.  The test
# runner likewise: $GPU_RUNNER, build-gpu-pack/runner, $CTG_BUILD/tests/runner.
#
# GPU tests: the unit tests whose names contain GPU_TESTS (default _gpu; empty:
# none), under TESTS_TIMEOUT seconds (240; in the full run also at most the
# budget less 120 s), with the same LD_LIBRARY_PATH as the binary (the pack's
# libraries, cuDNN and cuBLAS), CTG_BUILD a scratch folder.  Failures do not
# stop the benchmark; a summary ends the table, the output is in
# $OUT/gpu-tests.log.
#
# Configs (CONFIGS, default "file default"):
#   file     models/default.ctglip as shipped (its config and trained weights)
#   default  mdl_config_default's architecture (width 16, depth 4, patch 64, E 256)
#            with the shipped model's classes and text size, weights from seed 1
#   tiny     width 4, depth 2, patch 16 (the emulation's)
# For default and tiny, build/bench/gpu writes the model file and both sides
# load it, so both run identical weights.
#
# Per config: (1) the FLOP plan of both sides must agree (grids, windows,
# GFLOP); (2) parity: model.c's CPU forward of one batch (gpu --mode dump)
# against PyTorch's fp32 forward (torch_ctglip.py --mode check); (3) PyTorch
# infer + train; (4) ours infer + train + e2e (an_run on a GPU an_ctx).  Last, for `file`, an_run on the
# CPU (the daemon's path) on the same study as a reference (E2E_CPU=0: not).
#
# Environment: CONFIGS, PREC (bf16,fp32), SPACING (3,1.5), RUNS (5), WARMUP (1),
# STEPS (20), TRAIN_WARMUP (3), BATCH (2), OVERLAP (0.25), E2E_CPU (1),
# STEP_TIMEOUT (seconds per command, 240), BUDGET (seconds for the tests and all
# steps, 540; later steps are skipped), TORCH_ARGS, GPU_ARGS (extra options of
# each side),
# MODEL (models/default.ctglip), GPU_TESTS, TESTS_TIMEOUT, OUT (where the JSON
# lines, the log, the table and gpu-tests.log go, when set).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=device
case "${1:-}" in
--pack) MODE=pack ;;
--emulate) MODE=emulate ;;
--tests-only) MODE=tests ;;
"") ;;
-h | --help)
    sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "gpu.sh: unknown argument $1 (--pack, --tests-only, --emulate or none)" >&2
    exit 2
    ;;
esac

CTG_BUILD=${CTG_BUILD:-build}
MODEL=${MODEL:-models/default.ctglip}

# ---- --pack: binaries + libraries for a machine that cannot build -----------------------------
# Copies a built binary into the pack under a name, without its debug
# information, and every library it loads into build-gpu-pack/lib, except
# glibc's and the C++ runtime, which any CUDA image has (and newer; glibc's
# own libraries must match its version).
pack_bin() {
    local built=$1 name=$2
    cp "$built" "build-gpu-pack/$name"
    strip --strip-debug "build-gpu-pack/$name"
    if ldd "$built" | grep -q 'not found'; then
        ldd "$built" | grep 'not found' >&2
        echo "gpu.sh: $built lacks libraries here" >&2
        return 1
    fi
    ldd "$built" | awk '$3 ~ /^\// {print $1, $3}' | while read -r lib path; do
        case "$lib" in
        libc.so.* | libm.so.* | libmvec.so.* | libpthread.so.* | libdl.so.* | librt.so.* | \
            libresolv.so.* | libutil.so.* | libanl.so.* | ld-linux* | \
            libstdc++.so.* | libgcc_s.so.*) ;;
        *) [ -e "build-gpu-pack/lib/$lib" ] || cp -L "$path" "build-gpu-pack/lib/$lib" ;;
        esac
    done
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

if [ "$MODE" = pack ]; then
    set -e
    make -j"$(nproc)" BUILD=build-gpu build-gpu/bench/gpu build-gpu/tests/runner
    rm -rf build-gpu-pack
    mkdir -p build-gpu-pack/lib
    pack_bin build-gpu/bench/gpu gpu
    pack_bin build-gpu/tests/runner runner
    lib_bytes=$(du -cb build-gpu-pack/lib/* | tail -1 | cut -f1)
    (cd build-gpu-pack && tar -cJf libs.tar.xz lib && rm -rf lib)
    nvcc_v=$("${NVCC:-nvcc}" --version 2>/dev/null | tail -1 || true)
    {
        echo "built $(date -u +%FT%TZ) on $(uname -m) by $(${CC:-cc} --version | head -1)"
        echo "nvcc: $nvcc_v"
        echo "git: $(git rev-parse --short HEAD 2>/dev/null) (+ working tree)"
        for b in bench/gpu tests/runner; do
            echo "build-gpu/$b:"
            ldd "build-gpu/$b" | awk '{print "  " $1}'
        done
    } >build-gpu-pack/BUILD-INFO
    # The device tool carries at most 64 MiB: this pack and the working tree
    # (tracked files and untracked ones git does not ignore) together.
    for f in build-gpu-pack/*; do
        printf '  %-28s %s\n' "$f" "$(mib "$(stat -c %s "$f")")"
    done
    pack_bytes=$(du -cb build-gpu-pack/* | tail -1 | cut -f1)
    tree_bytes=$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
        awk '{ s += $1 } END { print s + 0 }')
    echo "pack: $(mib "$pack_bytes") (libraries $(mib "$lib_bytes") unpacked); working tree:" \
        "$(mib "$tree_bytes"); together $(mib $((pack_bytes + tree_bytes))) of the 64 MiB carried"
    if [ "$pack_bytes" -gt $((60 * 1048576)) ] || [ $((pack_bytes + tree_bytes)) -gt $((64 * 1048576)) ]; then
        echo "gpu.sh: too large to carry to the device machine" >&2
        exit 1
    fi
    echo "carry build-gpu-pack to the GPU machine and run: bash bench/gpu.sh (or --tests-only)"
    exit 0
fi

# ---- settings ---------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/ctglip-gpubench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
RES=$WORK/results.jsonl
LOG=$WORK/log.txt
: >"$RES"
: >"$LOG"
if [ "$MODE" = emulate ]; then
    DEV=emulate
    CONFIGS=${CONFIGS:-"tiny file"}
    SRC_ARGS="--src 48,48,32 --src-spacing 1.5,1.5,1.5"
    RUNS=${RUNS:-1} WARMUP=${WARMUP:-0} STEPS=${STEPS:-2} TRAIN_WARMUP=${TRAIN_WARMUP:-1}
else
    DEV=0
    CONFIGS=${CONFIGS:-"file default"}
    SRC_ARGS=""
    RUNS=${RUNS:-5} WARMUP=${WARMUP:-1} STEPS=${STEPS:-20} TRAIN_WARMUP=${TRAIN_WARMUP:-3}
fi
PREC=${PREC:-bf16,fp32}
SPACING=${SPACING:-3,1.5}
BATCH=${BATCH:-2}
OVERLAP=${OVERLAP:-0.25}
E2E_CPU=${E2E_CPU:-1}
STEP_TIMEOUT=${STEP_TIMEOUT:-240}
BUDGET=${BUDGET:-540}
TORCH_ARGS=${TORCH_ARGS:-}
GPU_ARGS=${GPU_ARGS:-}
GPU_TESTS=${GPU_TESTS-_gpu}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-240}
COMMON="--precision $PREC --spacing $SPACING --runs $RUNS --warmup $WARMUP --steps $STEPS \
--train-warmup $TRAIN_WARMUP --batch $BATCH --overlap $OVERLAP $SRC_ARGS"

say() { echo "$*" | tee -a "$LOG" >&2; }

# Runs a step under the time limit: JSON lines to $RES, everything to the log.
# Past BUDGET seconds in all, later steps are skipped (the device machine's
# command limit is 600 s); the table is made of what ran.  With OUT set, the
# JSON lines and the log are copied there after every step, so that a run cut
# short still leaves them.
step() {
    local what=$1
    shift
    local left=$((BUDGET - SECONDS)) lim=$STEP_TIMEOUT t0=$SECONDS rc
    if [ $left -lt 15 ]; then
        say "== $what: SKIPPED (the ${BUDGET}s budget is spent)"
        return 1
    fi
    [ $lim -gt $left ] && lim=$left
    say "== $what"
    timeout --kill-after=10 "$lim" "$@" >"$WORK/step.out" 2>"$WORK/step.err"
    rc=$?
    grep '^{' "$WORK/step.out" >>"$RES"
    cat "$WORK/step.out" "$WORK/step.err" >>"$LOG"
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT" && cp "$RES" "$OUT/gpu-bench.jsonl" && cp "$LOG" "$OUT/gpu-bench.log"
    fi
    grep -v '^{' "$WORK/step.out" | sed 's/^/   /' >&2
    sed 's/^/   /' "$WORK/step.err" | tail -n 40 >&2
    if [ $rc -ne 0 ]; then
        [ $rc -eq 124 ] && say "   TIMED OUT after ${lim}s"
        say "   FAILED (exit $rc): $*"
    fi
    say "   ($((SECONDS - t0)) s)"
    return $rc
}

# ---- the pack, the binary, the test runner and their libraries -------------------------------
LIBPATH=""
PACKED=0
if [ "$MODE" != emulate ] && [ -z "${GPU_BIN:-}" ] && [ -f build-gpu-pack/libs.tar.xz ]; then
    PACKED=1
    mkdir -p "$WORK/pack"
    tar -xJf build-gpu-pack/libs.tar.xz -C "$WORK/pack"
    LIBPATH=$WORK/pack/lib
    say "using the pack: $(head -2 build-gpu-pack/BUILD-INFO | tr '\n' ' ')"
fi
if [ "$MODE" != tests ]; then
    if [ -n "${GPU_BIN:-}" ]; then
        BIN=$GPU_BIN
    elif [ "$PACKED" = 1 ] && [ -x build-gpu-pack/gpu ]; then
        BIN=$ROOT/build-gpu-pack/gpu
    else
        BIN=$CTG_BUILD/bench/gpu
        say "== make -j16 BUILD=$CTG_BUILD $BIN"
        if ! make -j16 BUILD="$CTG_BUILD" "$BIN" >>"$LOG" 2>&1; then
            tail -n 30 "$LOG" >&2
            say "gpu.sh: cannot build $BIN here (missing development packages?); build it where"
            say "        the project builds with 'bash bench/gpu.sh --pack' and carry build-gpu-pack"
            exit 1
        fi
    fi
    [ -x "$BIN" ] || {
        say "gpu.sh: no binary $BIN"
        exit 1
    }
fi
# The test runner for the GPU tests (not in the emulation: there they skip).
RUNNER="" RUNNER_WHY=""
if [ "$MODE" = emulate ]; then
    RUNNER_WHY="not in the emulation"
elif [ -z "$GPU_TESTS" ]; then
    RUNNER_WHY="GPU_TESTS is empty"
elif [ -n "${GPU_RUNNER:-}" ]; then
    RUNNER=$GPU_RUNNER
elif [ "$PACKED" = 1 ]; then
    if [ -x build-gpu-pack/runner ]; then
        RUNNER=$ROOT/build-gpu-pack/runner
    else
        RUNNER_WHY="the pack has no runner (packed by an older gpu.sh: pack again)"
    fi
else
    RUNNER=$CTG_BUILD/tests/runner
    say "== make -j16 BUILD=$CTG_BUILD $RUNNER"
    if ! make -j16 BUILD="$CTG_BUILD" "$RUNNER" >>"$LOG" 2>&1; then
        RUNNER=""
        RUNNER_WHY="cannot build $CTG_BUILD/tests/runner here (see the log)"
    fi
fi

# cuDNN 9 and cuBLAS are dlopen'ed by name (cuda/culib.cu): add the folders
# where this machine has them (PyTorch's pip packages, the CUDA toolkit).
# dlopen searches the LD_LIBRARY_PATH a process started with first.
if [ "$MODE" = device ] || [ "$MODE" = tests ]; then
    dirs=$(python3 - <<'EOF' 2>/dev/null
import glob, os, sys
seen = []
for base in sys.path + ["/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu"]:
    if not base or not os.path.isdir(base):
        continue
    for pat in ("nvidia/**/libcudnn.so.9*", "nvidia/**/libcublas.so.1*", "torch/lib/libcudnn.so.9*",
                "libcudnn.so.9*", "libcublas.so.13*"):
        for f in glob.glob(os.path.join(base, pat), recursive=True):
            d = os.path.dirname(os.path.realpath(f))
            if d not in seen:
                seen.append(d)
print(":".join(seen))
EOF
)
    LIBPATH=${LIBPATH:+$LIBPATH:}$dirs
fi
# An env prefix rather than a function, so that timeout can run it.
GPU_ENV="LD_LIBRARY_PATH=${LIBPATH}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# ---- the GPU tests, before the benchmark ----------------------------------------------------------
# `runner _gpu`: the unit tests whose names contain _gpu, the GPU twins of
# the CPU and emulation parity tests; run from the repository root (the
# runner makes it CTG_ROOT: models/, etc/), CTG_BUILD a scratch folder (its
# test-out/ gets a folder per test).  Without a GPU they skip, and the
# summary says that nothing was verified on a GPU.  The runner's output goes
# to the log and $OUT/gpu-tests.log, the summary to the end of the table.
TESTS_SUMMARY=$WORK/tests-summary.txt
: >"$TESTS_SUMMARY"
TESTS_RC=0
gpu_tests() {
    local lim=$TESTS_TIMEOUT left=$((BUDGET - SECONDS)) t0=$SECONDS out=$WORK/tests.log
    local np nf ns verdict
    if [ -z "$RUNNER" ]; then
        say "== GPU tests: not run ($RUNNER_WHY)"
        echo "GPU tests: not run ($RUNNER_WHY)" >"$TESTS_SUMMARY"
        return 0
    fi
    # Before the benchmark, leave it at least 120 s of the budget.
    [ "$MODE" = device ] && [ $lim -gt $((left - 120)) ] && lim=$((left - 120))
    [ $lim -lt 30 ] && lim=30
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >"$WORK/smi.txt" 2>&1; then
        say "GPU here: $(head -1 "$WORK/smi.txt")"
    else
        say "GPU here: none that nvidia-smi sees (the GPU tests should all skip)"
    fi
    say "== GPU tests: $RUNNER $GPU_TESTS (timeout ${lim}s)"
    mkdir -p "$WORK/tests"
    timeout --kill-after=10 "$lim" env "$GPU_ENV" CTG_BUILD="$WORK/tests" "$RUNNER" $GPU_TESTS \
        >"$out" 2>&1
    TESTS_RC=$?
    case $TESTS_RC in
    0 | 1) ;;
    124 | 137) echo "gpu.sh: the runner TIMED OUT after ${lim}s (exit $TESTS_RC)" >>"$out" ;;
    *)
        echo "gpu.sh: the runner exited with $TESTS_RC" >>"$out"
        LD_LIBRARY_PATH="$LIBPATH" ldd "$RUNNER" 2>&1 | grep -i "not found" >>"$out"
        ;;
    esac
    cat "$out" >>"$LOG"
    np=$(grep -c '^ok ' "$out")
    nf=$(grep -c '^FAIL ' "$out")
    ns=$(grep -c '^skip ' "$out")
    if [ "$TESTS_RC" -gt 1 ] || ! grep -qE '^[0-9]+ passed, [0-9]+ failed$' "$out"; then
        verdict="DID NOT COMPLETE (exit $TESTS_RC): $np passed, $nf failed, $ns skipped before it stopped"
    elif [ "$nf" -gt 0 ]; then
        verdict="FAILED: $nf failed, $np passed, $ns skipped"
    elif [ "$np" -gt 0 ]; then
        verdict="$np passed on the GPU, $ns skipped"
    else
        verdict="NOT verified on a GPU: none ran, $ns skipped"
    fi
    {
        echo "GPU tests (runner $GPU_TESTS): $verdict"
        grep -E '^FAIL ' "$out" | head -n 30 | sed 's/^/  /'
        # Skips by reason (the names are in the log).
        grep '^skip ' "$out" | awk '{ $1 = ""; $2 = ""; sub(/^ +/, ""); print }' | sort | uniq -c |
            awk '{ n = $1; $1 = ""; print "  skipped, " n " of them:" $0 }'
        tail -n 2 "$out" | sed 's/^/  /'
    } >"$TESTS_SUMMARY"
    grep -E '^(ok|FAIL|skip) |passed, .* failed|TIMED OUT|exited with|not found' "$out" |
        sed 's/^/   /' >&2
    say "$(head -1 "$TESTS_SUMMARY")"
    say "   ($((SECONDS - t0)) s)"
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT" && cp "$out" "$OUT/gpu-tests.log" && cp "$LOG" "$OUT/gpu-bench.log"
    fi
}
if [ "$MODE" = device ] || [ "$MODE" = tests ]; then
    gpu_tests
fi
if [ "$MODE" = tests ]; then
    cat "$TESTS_SUMMARY"
    [ -n "${OUT:-}" ] && echo "written: $OUT/gpu-tests.log, gpu-bench.log" >&2
    exit $TESTS_RC
fi

run_gpu() { env "$GPU_ENV" "$BIN" "$@"; }
if ! run_gpu --help >/dev/null 2>"$WORK/ldd.err"; then
    cat "$WORK/ldd.err" >&2
    say "gpu.sh: $BIN does not start here (libraries: ldd below)"
    LD_LIBRARY_PATH="$LIBPATH" ldd "$BIN" | grep -i "not found" >&2
    exit 1
fi

HAVE_TORCH=0
if python3 -c 'import torch' 2>/dev/null; then
    HAVE_TORCH=1
    TORCH_DEV=cuda
    [ "$MODE" = emulate ] && TORCH_DEV=cpu
else
    say "PyTorch is not importable here: the PyTorch side is skipped"
fi

# ---- the machine and its peak -----------------------------------------------------------------
GPU_NAME=""
if command -v nvidia-smi >/dev/null 2>&1; then
    GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
    say "$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
        --format=csv 2>/dev/null)"
fi
# Dense (no sparsity) tensor-core bf16 and plain fp32 FMA peaks of the data sheets.
case "$GPU_NAME" in
*H100*PCIe*) PEAK_BF16=756 PEAK_FP32=51 PEAK_WHAT="H100 PCIe" ;;
*H100*NVL*) PEAK_BF16=835 PEAK_FP32=60 PEAK_WHAT="H100 NVL" ;;
*H100* | *H200* | *GH200*) PEAK_BF16=989 PEAK_FP32=67 PEAK_WHAT="H100/H200 SXM" ;;
*A100*) PEAK_BF16=312 PEAK_FP32=19.5 PEAK_WHAT="A100" ;;
*) PEAK_BF16=0 PEAK_FP32=0 PEAK_WHAT="unknown GPU '${GPU_NAME}'" ;;
esac
export PEAK_BF16 PEAK_FP32 PEAK_WHAT GPU_NAME
say "peak assumed: $PEAK_WHAT, bf16 dense $PEAK_BF16 TFLOP/s, fp32 (FMA, no TF32) $PEAK_FP32 TFLOP/s"
if [ "$HAVE_TORCH" = 1 ]; then
    say "$(python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' 2>&1)"
fi

# ---- per config ----------------------------------------------------------------------------------
for cfg in $CONFIGS; do
    case "$cfg" in
    file) M=$MODEL ;;
    default | tiny)
        M=$WORK/$cfg.ctglip
        step "$cfg: the model file both sides load" \
            env "$GPU_ENV" "$BIN" --model "$MODEL" --arch "$cfg" --save-model "$M" --mode none || continue
        ;;
    *)
        say "gpu.sh: config $cfg: file, default or tiny"
        continue
        ;;
    esac
    step "$cfg: FLOP plan (ours)" env "$GPU_ENV" "$BIN" --model "$M" --tag "$cfg" --mode plan $COMMON
    step "$cfg: FLOP plan (PyTorch side)" \
        python3 bench/torch_ctglip.py --model "$M" --tag "$cfg" --mode plan $COMMON
    step "$cfg: reference forward on the CPU (model.c)" \
        env "$GPU_ENV" "$BIN" --model "$M" --tag "$cfg" --mode dump --dump "$WORK/$cfg.dump" --batch 1
    if [ "$HAVE_TORCH" = 1 ]; then
        step "$cfg: PyTorch eager: parity (fp32 forward against model.c's), infer, train" \
            env PYTHONUNBUFFERED=1 python3 bench/torch_ctglip.py --model "$M" --tag "$cfg" \
            --mode check,infer,train --dump "$WORK/$cfg.dump" --device "$TORCH_DEV" \
            $COMMON $TORCH_ARGS
    fi
    step "$cfg: ctglip (cunet): infer, train, e2e" \
        env "$GPU_ENV" "$BIN" --device "$DEV" --model "$M" --tag "$cfg" --mode infer,train,e2e $COMMON $GPU_ARGS
done
# Last, as the step the budget can most easily spare.
if [ "$E2E_CPU" = 1 ] && [[ " $CONFIGS " == *" file "* ]]; then
    step "file: an_run on the CPU (the daemon's path), the same study, one run" \
        env "$GPU_ENV" "$BIN" --model "$MODEL" --tag file --mode e2e-cpu $SRC_ARGS \
        --overlap "$OVERLAP"
fi

# ---- the table ------------------------------------------------------------------------------------
python3 - "$RES" >"$WORK/table.txt" <<'EOF'
import json, os, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peak = {"bf16": float(os.environ.get("PEAK_BF16") or 0), "fp32": float(os.environ.get("PEAK_FP32") or 0)}
emu = any(r.get("device", "").startswith("emulation") for r in rows)
h100 = "H100" in os.environ.get("GPU_NAME", "")

def key(r):
    return (r.get("config"), r.get("mode"), r.get("spacing"), r.get("precision"))

ours = {key(r): r for r in rows if r.get("impl") == "ctglip"}
torch = {key(r): r for r in rows if str(r.get("impl", "")).startswith("pytorch")
         and r.get("mode") in ("infer", "train")}
out = []
p = out.append

p("FLOP plans (grids, windows, GFLOP) of both sides:")
plans = {}
for r in rows:
    if str(r.get("mode", "")).startswith("plan-"):
        k = (r["config"], r["mode"], r.get("spacing"))
        v = (tuple(r.get("grid", [])), r.get("windows"), round(r["gflop"], 3))
        plans.setdefault(k, {})[r["impl"]] = v
for k, v in sorted(plans.items(), key=str):
    same = len(set(v.values())) == 1 and len(v) == 2
    p("  %-8s %-10s %-5s %s  %s" % (k[0], k[1], k[2] if k[2] is not None else "",
                                   v.get("ctglip"), "agree" if same else "DIFFER: %s" % v))
for r in rows:
    if r.get("mode") == "check":
        p("parity %s: PyTorch fp32 vs model.c CPU: max rel diff logits %.2e feat %.2e embed %.2e, "
          "counts %s -> %s" % (r["config"], r["rel_logits"], r["rel_feat"], r["rel_embed"],
                               "equal" if r["counts_equal"] else "DIFFER",
                               "OK" if r["ok"] else "FAIL (tol %g)" % r["tol"]))
p("")
hdr = "%-8s %-6s %-7s %-5s | %12s %12s | %12s %12s | %8s | %7s %7s | %-6s %s" % (
    "config", "mode", "spacing", "prec", "torch s", "ours s", "torch /s", "ours /s", "ours/pt",
    "pt TF/s", "our TF/s", "%peak", "goal")
p(hdr)
p("-" * len(hdr))
fails = 0
for k in sorted(set(ours) | set(torch), key=lambda k: (str(k[0]), str(k[1]), -(k[2] or 0), str(k[3]))):
    cfg, mode, sp, prec = k
    if mode not in ("infer", "train"):
        continue
    o, t = ours.get(k), torch.get(k)
    ratio = None
    if o and t:
        ratio = o["samples_per_s"] / t["samples_per_s"] if t["samples_per_s"] else None
    goal = ""
    if ratio is not None:
        want = 1.5 if mode == "infer" else 1.2
        met = ratio >= want
        goal = ">=%.1fx %s" % (want, "n/a" if emu else "met" if met else "NOT met")
        if not met and not emu:
            fails += 1
    pk = peak.get(prec) or 0
    pct = "%5.1f%%" % (100 * o["tflops"] / pk) if (o and pk) else "  -"
    f = lambda r, fld, fmt: (fmt % r[fld]) if r else "-"
    p("%-8s %-6s %-7s %-5s | %12s %12s | %12s %12s | %8s | %7s %7s | %-6s %s" % (
        cfg, mode, "" if sp is None else "%g mm" % sp, prec,
        f(t, "median_s", "%.4f"), f(o, "median_s", "%.4f"),
        f(t, "samples_per_s", "%.1f"), f(o, "samples_per_s", "%.1f"),
        "%.2fx" % ratio if ratio else "-",
        f(t, "tflops", "%.2f"), f(o, "tflops", "%.2f"), pct, goal))
p("  (/s: windows per second for infer, patches per second for train; ours/pt: the speedup;")
p("   %%peak: ours against %s, bf16 dense %s / fp32 %s TFLOP/s, the data sheet's)" %
  (os.environ.get("PEAK_WHAT", "?"), peak["bf16"] or "?", peak["fp32"] or "?"))
for k, o in sorted(ours.items(), key=str):
    t = torch.get(k)
    if k[1] == "infer" and t and o.get("counts") and t.get("counts"):
        diff = sum(abs(a - b) for a, b in zip(o["counts"], t["counts"]))
        p("  label map %s %g mm %s: voxels per class, ours vs PyTorch: %s" % (
            k[0], k[2], k[3], "identical" if diff == 0 else "%d of %d voxels differ%s" % (
                diff // 2, sum(o["counts"]), "  <- fp32 should agree" if k[3] == "fp32"
                else "")))
p("")
for r in rows:
    if r.get("mode") != "e2e":
        continue
    line = ("e2e %-8s %-10s %g mm %s: %.3f s per study (resample %.3f, model %.3f, measure %.3f"
            % (r["config"], r["impl"], r["spacing"], r["precision"], r["median_s"],
               r.get("t_resample", 0), r.get("t_model", 0), r.get("t_measure", 0)))
    if "t_score" in r:
        line += ", score %.3f" % r["t_score"]
    line += "), grid %s from %s" % ("x".join(map(str, r["grid"])), "x".join(map(str, r["src"])))
    if r["impl"] == "ctglip" and r["spacing"] == 3:
        met = r["median_s"] < 2.0
        line += "  goal < 2 s%s: %s" % (" on H100" if h100 else "",
                                         "n/a" if emu else "met" if met else "NOT met")
        if not met and not emu:
            fails += 1
    p(line)
p("")
p("goals: inference >= 1.5x PyTorch eager, training >= 1.2x, < 2 s end to end per study at 3 mm "
  "on H100%s" % ("  (emulation: numbers mean nothing)" if emu else ""))
p("goal lines not met: %d" % fails)
print("\n".join(out))
EOF
if [ -s "$TESTS_SUMMARY" ]; then
    echo >>"$WORK/table.txt"
    cat "$TESTS_SUMMARY" >>"$WORK/table.txt"
fi
cat "$WORK/table.txt"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$RES" "$OUT/gpu-bench.jsonl"
    cp "$LOG" "$OUT/gpu-bench.log"
    cp "$WORK/table.txt" "$OUT/gpu-bench-table.txt"
    echo "written: $OUT/gpu-bench.jsonl, gpu-bench.log, gpu-bench-table.txt" >&2
fi
