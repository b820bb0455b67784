# GPU workers of the daemon, on the host emulation of the GPU code path
# (CTGLIP_CUDA_EMULATE=1, a test hook: CI has no GPU) with a tiny model:
# - [model] device = cuda, gpus = 0,1: two GPU workers, each naming its
#   device in the log, and a study's job ends done with its SR;
# - an injected device failure (CTGLIP_CUDA_FAIL_AFTER=2, the second GPU
#   job) fails that job with the reason, the worker resets its device and
#   uploads the model again, the job's retry and the next study succeed;
# - a new model file is uploaded to the GPU before the next job;
# - device = cuda where no GPU is usable (no emulation) stops the start
#   with the reason;
# - device = auto with a device copy that computes wrong results
#   (CTGLIP_CUDA_BREAK_COPY=1, a test hook): the start-up self-test
#   catches it, the worker says why and runs on the CPU, the job is done.
source "$CTG_ROOT/tests/lib.sh"

for s in 61 62 63 64 65; do
    "$B/ctglip" phantom --quiet --seed $s --count 1 --matrix 64 --thickness 6 --fov abdomen \
        --out "$T/ph$s" || fail "phantom $s"
done
# Two tiny models (two seeds: two identities), trained for a step on the
# phantoms' NIfTI copies.
"$B/ctglip" phantom --quiet --seed 60 --count 1 --matrix 48 --thickness 8 --fov abdomen \
    --no-dicom --out "$T/tr" || fail "phantom for training"
for seed in 1 2; do
    "$B/ctglip-train" pretrain --data "$T/tr/manifest.jsonl" --out "$T/m$seed" --steps 1 \
        --stage1-steps 1 --batch 1 --patch 16 --width 4 --depth 2 --embed 32 --spacing 6 \
        --seed $seed --threads 2 --vocab "$ROOT/models/glove100.vocab" --quiet \
        > "$T/train$seed.log" 2>&1 || { cat "$T/train$seed.log"; fail "tiny model $seed"; }
done
cp "$T/m1/model.ctglip" "$T/model.ctglip"

note "device = cuda without a GPU stops the start"
MODEL=$T/model.ctglip write_conf "$(printf '[model]\ndevice = cuda\n')"
if nvidia-smi -L >/dev/null 2>&1; then
    note "a GPU is here: the no-GPU refusal is not checked"
else
    rc=0
    env -u CTGLIP_CUDA_EMULATE timeout 20 "$B/ctglipd" -c "$T/ctglipd.conf" > "$T/nogpu.log" 2>&1 || rc=$?
    [ "$rc" != 0 ] && [ "$rc" != 124 ] || fail "ctglipd started with device = cuda and no GPU ($rc)"
    grep -q "device = cuda, but no usable CUDA device" "$T/nogpu.log" || { cat "$T/nogpu.log"; fail "no reason logged"; }
fi
rm -rf "$T/spool" "$T/index.db"*

note "two emulated GPU workers, a device fault on the second GPU job"
MODEL=$T/model.ctglip STABLE=2 write_conf "$(printf '[model]\ndevice = cuda\ngpus = 0,1\nprecision = fp32\nthreads = 1\n')"
export CTGLIP_CUDA_EMULATE=1 CTGLIP_CUDA_FAIL_AFTER=2
start_daemon
unset CTGLIP_CUDA_EMULATE CTGLIP_CUDA_FAIL_AFTER
wait_for 20 'grep -q "worker 1: cuda emulated" "$T/daemon.log"' || fail "no device line for worker 1"
grep -q "worker 0: cuda emulated on the host .*fp32" "$T/daemon.log" || fail "no device line for worker 0"
grep -q "workers: 2 GPU worker(s), fp32" "$T/daemon.log" || fail "no worker plan line"

# The latest job of a study (a study whose last slices came after it was
# seen complete has two).
latest() { sql "SELECT id FROM jobs WHERE study_uid='$1' ORDER BY id DESC LIMIT 1"; }
send() { # seed: sends the study, waits until its latest job is done, prints its id
    local s=$1 study
    study=$(jq -r .study_uid "$T/ph$s/case_0000/findings.json")
    storescu -aec "$AET" 127.0.0.1 "$PORT" "$T"/ph$s/case_0000/dicom/*.dcm > "$T/storescu.log" 2>&1 ||
        fail "storescu $s: $(cat "$T/storescu.log")"
    wait_for 90 '[ "$(sql "SELECT state FROM jobs WHERE id=$(latest "$study")")" = 2 ]' ||
        fail "job for $s: $(sql "SELECT id, state, attempts, reason FROM jobs")"
    local job
    job=$(latest "$study")
    [ -s "$T/reports/$study/$job/sr.dcm" ] || fail "no SR for $s"
    echo "$job"
}
j1=$(send 61)
grep -q "model [0-9a-f]* on the GPU" "$T/daemon.log" || fail "no upload logged"
j2=$(send 62)
# The second GPU job failed with the device's reason and was retried.
bad=$(grep -o "job [0-9]* failed, will retry: GPU inference: injected GPU fault" "$T/daemon.log" |
      sed -n 1p | cut -d' ' -f2)
[ -n "$bad" ] || fail "the fault's reason is not in the log"
expect_eq "$(grep -c "injected GPU fault" "$T/daemon.log")" 1 "faults injected"
wait_for 30 '[ "$(sql "SELECT state FROM jobs WHERE id=$bad")" != 0 ]' || fail "job $bad not retried"
expect_eq "$(sql "SELECT state || ' ' || attempts FROM jobs WHERE id=$bad")" "2 1" \
    "state and failed attempts of the faulted job $bad"
grep -q "emulated GPU context reset after a device error" "$T/daemon.log" || fail "no reset logged"
j3=$(send 63)
expect_eq "$(sql "SELECT attempts FROM jobs WHERE id=$j3")" 0 "failed attempts of the next job"
note "jobs $j1 $j2 $j3 done; job $bad failed once on the injected fault"

note "a new model file goes to the GPU before the next job"
ups=$(grep -c "on the GPU in" "$T/daemon.log")
cp "$T/m2/model.ctglip" "$T/new.ctglip"
mv "$T/new.ctglip" "$T/model.ctglip"
j4=$(send 64)
grep -q "switched to model" "$T/daemon.log" || fail "no switch logged"
id2=$(grep "switched to model" "$T/daemon.log" | sed -n 1p | sed 's/.*switched to model \([0-9a-f]*\).*/\1/')
grep -q "model $id2 on the GPU" "$T/daemon.log" || fail "the new model was not uploaded"
[ "$(grep -c "on the GPU in" "$T/daemon.log")" -gt "$ups" ] || fail "no upload after the switch"
alive || fail "daemon died"
stop_daemon

note "device = auto: a device that fails its self-test gives way to the CPU"
mv "$T/daemon.log" "$T/daemon1.log"
MODEL=$T/model.ctglip STABLE=2 write_conf "$(printf '[model]\ndevice = auto\nprecision = fp32\nthreads = 1\n')"
export CTGLIP_CUDA_EMULATE=1 CTGLIP_CUDA_BREAK_COPY=1
start_daemon
unset CTGLIP_CUDA_EMULATE CTGLIP_CUDA_BREAK_COPY
j5=$(send 65)
grep -q "self-test: the device disagrees with the CPU" "$T/daemon.log" ||
    fail "no self-test failure logged: $(grep worker "$T/daemon.log")"
grep -q "runs the model on the CPU from now on" "$T/daemon.log" || fail "no fall-back logged"
grep -q "worker 0: cpu, " "$T/daemon.log" || fail "the worker does not say it is on the CPU"
expect_eq "$(sql "SELECT attempts FROM jobs WHERE id=$j5")" 0 "failed attempts of the job on the CPU"
alive || fail "daemon died"
stop_daemon
echo PASS
