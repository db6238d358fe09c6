# SPDX-License-Identifier: GPL-2.0-or-later
#
# Build driver for the VM templating series over pinned QEMU 10.0.13.
#
#   make deps        install Debian packages (apt-get; root or sudo)
#   make fetch       pinned upstream tarball, SHA-256 verified
#   make tree        assemble build/src: upstream + new files + patches/series
#   make build       our QEMU in build/qemu (and the qtests)
#   make upstream    pristine upstream QEMU in build/qemu-upstream
#   make guest       the bundled test guest in build/guest
#   make check       everything above, then qtests and the end-to-end suite
#   make demo        everything above, then a template and clones, with timings
#   make bench       this series against upstream: latency, density, restore
#   make asan        ASan + UBSan + libFuzzer build (clang) in build/qemu-asan
#   make asan-check  this series' qtests under ASan + UBSan, fuzz regression
#   make fuzz        libFuzzer on the incoming stream, FUZZ_TIME s per target
#   make fuzz-regress  the fuzz seeds and stored crashers, once each
#   make mutate      corrupted streams and mapped-ram files loaded by clones
#   make series      the series as git format-patch files in build/series
#   make series-check  build and test every patch of the series in turn
#   make patches-git / patches-export   edit the series in a git tree
#
# Each step is cheap to re-run when its inputs did not change.

SHARED ?= ../shared
B      := build
DL     := $(B)/dl
SRC    := $(B)/src
OBJ    := $(B)/qemu
UPSRC  := $(B)/upstream-src
UPOBJ  := $(B)/qemu-upstream
ASAN   := $(B)/qemu-asan
GUEST  := $(B)/guest
PY     := /usr/bin/python3
FUZZ_TIME ?= 60
FUZZ_JOBS ?= 1

export SHARED DL

.PHONY: all deps fetch tree build upstream guest check demo bench bench-quick \
        series series-verify series-check \
        asan asan-check fuzz fuzz-regress patches-git patches-export clean \
        distclean

all: build

deps:
	@sh build-aux/deps.sh

fetch: deps
	@sh build-aux/fetch.sh

tree: fetch
	@sh build-aux/tree.sh ours $(SRC)

build: tree
	@EXTRA_TARGETS="tests/qtest/vmt-bypass-shared-test tests/qtest/vmt-mapped-ram-test tests/qtest/vmt-lazy-test tests/unit/test-userfaultfd tests/qtest/ide-test tests/qtest/hpet-test tests/qtest/x86-kernel-image-test tests/unit/check-qom-interface tests/qtest/qom-test tests/qtest/device-introspect-test contrib/qemu-template/qemu-template tests/unit/test-qemu-template" \
	    sh build-aux/build.sh $(SRC) $(OBJ)

upstream: fetch
	@sh build-aux/tree.sh upstream $(UPSRC)
	@BUILD_TARGETS=qemu-system-x86_64 sh build-aux/build.sh $(UPSRC) $(UPOBJ)

# The sanitizer flavour: clang with ASan, UBSan and libFuzzer, its own
# build folder and ccache.
asan: tree
	@FLAVOUR=asan EXTRA_TARGETS="tests/qtest/vmt-bypass-shared-test tests/qtest/vmt-mapped-ram-test tests/qtest/vmt-lazy-test" \
	    sh build-aux/build.sh $(SRC) $(ASAN)

asan-check: build asan
	@sh build-aux/asan-check.sh

# Seeds are saved by build/qemu; crashers are kept in
# tests/qtest/fuzz/vmt-crashers/.
fuzz: build asan
	@FUZZ_TIME=$(FUZZ_TIME) FUZZ_JOBS=$(FUZZ_JOBS) sh build-aux/fuzz.sh run

fuzz-regress: build asan
	@sh build-aux/fuzz.sh regress

# build/guest: Debian's cloud kernel (fast boot); build/guest-vmgenid:
# the generic kernel, which has CONFIG_VMGENID, and virtio-net
# (qemu-template's identity tests and demo)
guest: deps
	@sh tests/guest/build-guest.sh $(GUEST)
	@VMT_GUEST_FLAVOUR=vmgenid sh tests/guest/build-guest.sh $(GUEST)-vmgenid

check: build upstream guest asan series
	@sh build-aux/check.sh

demo: build guest
	@$(PY) tests/vmt/demo.py $(DEMO_ARGS)

# Benchmarks: this series against pristine upstream, in one run; report in
# build/bench/.  Measures, never asserts timings.
bench: build upstream guest
	@$(PY) tests/vmt/bench.py $(BENCH_ARGS)

bench-quick: build upstream guest
	@$(PY) tests/vmt/bench.py --quick $(BENCH_ARGS)

# Mutation test: thousands of corrupted template streams and mapped-ram
# files, each loaded by a clone; failures kept in build/mutate/.
.PHONY: mutate
mutate: build
	@$(PY) tests/vmt/mutate.py --count 2500 $(MUTATE_ARGS)

# The series as qemu-devel gets it: git format-patch files, each new file
# in the patch that first needs it (patches/new-files), cover letter from
# patches/cover-letter.  series-verify: git am of it on the pinned tarball
# reproduces the assembled tree, and checkpatch is clean on every patch
# (in make check); series-check: every patch builds and passes the
# qtests that exist at that point (long).
series: fetch
	@sh build-aux/series.sh make

series-verify: series
	@sh build-aux/series.sh verify

series-check: series
	@sh build-aux/series.sh check

# A git tree for editing the series: upstream is one commit, the new files
# another, each patch one commit on top.  Edit, commit (or rebase), then
# 'make patches-export' writes patches/ and patches/series back.
patches-git: fetch
	@sh build-aux/patches-git.sh init $(B)/patches-git

patches-export:
	@sh build-aux/patches-git.sh export $(B)/patches-git

clean:
	rm -rf $(OBJ) $(UPOBJ) $(ASAN) $(B)/fuzz $(SRC) $(UPSRC) $(GUEST)

distclean:
	rm -rf $(B)
