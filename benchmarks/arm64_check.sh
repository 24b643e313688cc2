#!/usr/bin/env bash
# Runs charnn's quick tests and a tiny train/sample/eval on arm64 Linux, emulated by qemu-user on an x86_64 Debian host.
# Not part of CI: emulation is slow (on 2 cores, about 15 minutes to build the arm64 root the first time, then
# about 7 minutes for the tests and the CLI run). Needs root, apt-get and the Python package index. Idempotent: it
# reuses the arm64 root and its virtual environment when present. The torch used is the newest aarch64 CPU wheel
# that meets pyproject's floor (2.10.0; later aarch64 wheels on the index are CUDA builds).
# Usage: sudo benchmarks/arm64_check.sh [more test files...]   (ARM64_ROOT=dir picks where the root lives)
# Prints one line at the end: "arm64: N passed, N failed" over the steps it ran (each pytest file set and CLI command).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${ARM64_ROOT:-/var/tmp/charnn-arm64-root}
TORCH=${ARM64_TORCH:-2.10.0}
# the Debian mirror this host's apt already uses (ARM64_MIRROR=URL to choose another)
MIRROR=${ARM64_MIRROR:-$(grep -rhE '^(deb|URIs:)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2> /dev/null |
  grep -oE 'https?://[^ ]+/debian/?' | head -n 1)}
[ -n "$MIRROR" ] || { echo "no Debian mirror in /etc/apt: set ARM64_MIRROR"; exit 1; }
# Neoverse N1 (Graviton2, Ampere Altra): armv8.2 without bf16 instructions. qemu's default "max" CPU adds SVE and
# bf16, where torch 2.10's oneDNN bf16 LSTM dies of an illegal instruction under qemu 7.2 (torch alone, no charnn),
# and the aarch64 torch wheel needs armv8.2, so cortex-a72 dies at the first LSTM.
CPU=${ARM64_CPU:-neoverse-n1}
QUICK=(tests/test_model.py tests/test_sample.py tests/test_data.py tests/test_planning.py tests/test_checkpoint.py
  tests/test_layout.py)
MORE=("$@")
[ ${#MORE[@]} -eq 0 ] && MORE=(tests/test_beam.py tests/test_evaluate.py tests/test_threads.py tests/test_train.py
  tests/test_resume.py tests/test_cli.py)
passed=0 failed=0 failures=()
step() { # step NAME CMD...: runs CMD inside the arm64 root, counts it
  local name=$1; shift
  echo "== $name"
  if chroot "$ROOT" /usr/bin/env -i QEMU_CPU="$CPU" HOME=/root PATH=/venv/bin:/usr/bin:/bin PYTHONPATH=/charnn LANG=C.UTF-8 \
    bash -c "cd /charnn && $*"; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$name"); fi
}

# 1. qemu-user with binfmt_misc, so the host runs aarch64 binaries directly
command -v debootstrap > /dev/null && [ -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] ||
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static binfmt-support debootstrap; } ||
  exit 1
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || exit 1
update-binfmts --enable qemu-aarch64 2> /dev/null
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "qemu-aarch64 is not registered with binfmt_misc"; exit 1; }

# 2. a Debian bookworm arm64 root with Python 3.11
if [ ! -x "$ROOT/usr/bin/python3" ]; then
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip bookworm "$ROOT" "$MIRROR" ||
    exit 1
fi
for d in proc sys dev dev/pts; do mountpoint -q "$ROOT/$d" || mount --bind "/$d" "$ROOT/$d"; done # pts: the terminal tests
# qemu-user shows the host's /proc/cpuinfo (x86 "flags"); an arm64 machine shows "Features"
printf 'processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n\n' > "$ROOT/tmp/cpuinfo"
mount --make-rprivate "$ROOT/proc" # so the file below never shows through to the host's /proc
mountpoint -q "$ROOT/proc/cpuinfo" || mount --bind "$ROOT/tmp/cpuinfo" "$ROOT/proc/cpuinfo"
trap 'umount "$ROOT/proc/cpuinfo" 2> /dev/null; for d in dev/pts dev sys proc; do umount "$ROOT/$d" 2> /dev/null; done' EXIT
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
chroot "$ROOT" /usr/bin/python3 -c "import platform; assert platform.machine() == 'aarch64', platform.machine()" || exit 1

# 3. the project (tracked and untracked files, as in the working tree) and a virtual environment
rm -rf "$ROOT/charnn" && mkdir -p "$ROOT/charnn"
(cd "$REPO" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$ROOT/charnn" || exit 1
if ! chroot "$ROOT" /venv/bin/python -c "import torch, numpy, safetensors, typer, rich, tqdm, pytest, hypothesis" \
  2> /dev/null; then
  # the host's certificate bundle, so pip trusts whatever the host trusts
  mkdir -p "$ROOT/etc/ssl" && cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/host-ca.crt"
  chroot "$ROOT" /usr/bin/python3 -m venv /venv &&
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin PIP_CERT=/etc/ssl/host-ca.crt PIP_DEFAULT_TIMEOUT=180 \
      /venv/bin/pip install -q "torch==$TORCH" numpy safetensors typer rich tqdm pytest hypothesis || exit 1
fi
chroot "$ROOT" /venv/bin/python -c "import torch, platform; print('arm64 root:', platform.machine(), 'torch', \
torch.__version__, 'mkldnn', torch.backends.mkldnn.is_available())"

# 4. the tests (the slow and GPU ones deselected), quick files first
step "pytest quick" nice -n 10 python -m pytest -q -p no:cacheprovider -m "'not slow and not gpu'" "${QUICK[*]}"
step "pytest more" nice -n 10 python -m pytest -q -p no:cacheprovider -m "'not slow and not gpu'" "${MORE[*]}"

# 5. the command line: a tiny run, sampling (fp32, beam, bf16), evaluation
W=/tmp/arm64-run
step "train" "rm -rf $W && mkdir -p $W && head -c 20000 data/tinyshakespeare.txt > $W/corpus.txt &&
  nice -n 10 python -m charnn train $W/corpus.txt --preset tiny --max-iters 10 --threads 1 --seed 3 --out $W/run"
step "sample" "python -m charnn sample $W/run --prime ROMEO: --length 120 --seed 1"
step "sample beam" "python -m charnn sample $W/run --length 60 --beam 4 --prime First"
# bf16 runs where the CPU has it natively; elsewhere (a Neoverse N1) the pass is the documented refusal: exit 6, one line
BF16="rc=\$?; cat $W/bf16.err >&2; [ \$rc -eq 0 ] || { [ \$rc -eq 6 ] && grep -q 'no native bf16' $W/bf16.err; }"
step "sample bf16" "python -m charnn sample $W/run --length 120 --seed 2 --precision bf16 2> $W/bf16.err; $BF16"
step "eval" "python -m charnn eval $W/run"
step "train bf16" "nice -n 10 python -m charnn train $W/corpus.txt --preset tiny --max-iters 5 --threads 1 --seed 3 \
  --precision bf16 --out $W/run16 2> $W/bf16.err; $BF16"

[ ${#failures[@]} -gt 0 ] && echo "failed steps: ${failures[*]}"
echo "arm64: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
