#!/usr/bin/env bash
# Compile-checks the `cuda` feature on a machine with no GPU, no driver and no system CUDA toolkit:
# the CUDA toolkit comes from PyPI (the `cuda-toolkit` wheels) and a stand-in libcuda.so.1 (every
# entry point returns CUDA_ERROR_NO_DEVICE) satisfies the linker, because candle links cudarc with
# `dynamic-linking`. Then `clippy --features cuda -D warnings`, and a stripped, gzipped binary
# under target/gpu/ ready to carry to a GPU machine (see benches/gpu-check.sh).
#
#   bash .ci/cuda-build-check.sh                      # CUDA 13.0: what a driver 580 (CUDA 13.0) loads
#   CUDA_TOOLKIT_VERSION=13.4.3 bash .ci/cuda-build-check.sh
#
# PTX from a newer nvcc than the driver knows is refused at load time, so the carried binary must
# be built with the CUDA major.minor of the target machine's driver (13.0 for driver 580).
# Cost on 2 cores: pip ~1 min; release build ~23 min from scratch (15 of them candle-kernels under
# nvcc), ~14 min when the CPU release build's dependencies are already built (2026-12-07);
# clippy after it ~1.5 min; 1.2 GB venv and 2.3 GB of target/. It is not part of .ci/run, which
# takes ~15 min from a fresh clone: together they would come to ~40 min, near the 45-minute
# line; run it before a release and before every GPU check.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${CUDA_TOOLKIT_VERSION:-13.0.2}
VENV=${CUDA_VENV:-/tmp/cuda-venv-$VERSION}
ARCH=${CUDA_COMPUTE_CAP:-90}   # no nvidia-smi here: name the GPU arch (90: H100/H200, sm_90a)
python3 -m venv "$VENV"
# The toolkit's nvcc extra leaves nvvm (cicc) and crt unpinned: without these pins pip takes the
# newest (13.5 by 2026-12), whose PTX (ISA 9.5) the 13.0 ptxas refuses.
MAJOR_MINOR=${VERSION%.*}
"$VENV/bin/pip" install -q "cuda-toolkit[nvcc,cudart,nvrtc,cublas,curand,cccl]==$VERSION" \
  "nvidia-nvvm==$MAJOR_MINOR.*" "nvidia-cuda-crt==$MAJOR_MINOR.*"
C=$("$VENV/bin/python" -c 'import os,nvidia; print(os.path.join(nvidia.__path__[0],"cu13"))')
# Unversioned names for the linker (cudarc's dynamic-linking: -lcudart -lcublas -lcublasLt -lcurand -lnvrtc -lcuda).
(cd "$C/lib" && for l in cudart cublas cublasLt nvrtc; do ln -sf lib$l.so.13 lib$l.so; done && ln -sf libcurand.so.10 libcurand.so)
# No wheel ships libcuda (the driver): a stand-in with every cu* symbol cudarc binds, soname libcuda.so.1.
CUDARC=$(cargo metadata --format-version 1 --features cuda | "$VENV/bin/python" -c \
  'import json,sys,os; print(next(os.path.dirname(p["manifest_path"]) for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')
mkdir -p "$C/lib/stubs"
{ echo 'int cuGetErrorString(int e,const char**s){(void)e;*s="no CUDA-capable device is detected";return 0;}'
  echo 'int cuGetErrorName(int e,const char**s){(void)e;*s="CUDA_ERROR_NO_DEVICE";return 0;}'
  grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+\(' "$CUDARC/src/driver/sys/mod.rs" | sed 's/pub unsafe fn //;s/(//' | sort -u \
    | grep -vxE 'cuGetErrorString|cuGetErrorName' | sed 's/.*/int &(void){return 100;}/'
} > "$C/lib/stubs/libcuda_stub.c"
gcc -shared -fPIC -O2 -Wl,-soname,libcuda.so.1 -o "$C/lib/stubs/libcuda.so" "$C/lib/stubs/libcuda_stub.c"
ln -sf libcuda.so "$C/lib/stubs/libcuda.so.1"   # the name the binary asks the loader for
export CUDA_HOME="$C" PATH="$C/bin:$PATH" CUDA_COMPUTE_CAP="$ARCH"
cargo build --release --locked --features cuda
cargo clippy --release --locked --features cuda --all-targets -- -D warnings
# The binary starts here with the stand-in driver, and says so when asked for the GPU.
LD_LIBRARY_PATH="$C/lib:$C/lib/stubs" target/release/gemscope --version
if LD_LIBRARY_PATH="$C/lib:$C/lib/stubs" target/release/gemscope features --device cuda \
    --model tests/fixtures/tiny --sae tests/fixtures/tiny/sae_res_L1.npz --layer 1 x 2>/tmp/cuda-err; then
  echo "cuda-build-check: --device cuda succeeded without a GPU?" >&2; exit 1
fi
grep -q "gemscope: --device cuda" /tmp/cuda-err || { cat /tmp/cuda-err >&2; exit 1; }
# What benches/gpu-check.sh carries: stripped (line tables make it ~137 MB) and gzipped.
mkdir -p target/gpu
strip -o target/gpu/gemscope target/release/gemscope
gzip -9 -f target/gpu/gemscope
ls -l target/gpu/gemscope.gz
echo "cuda-build-check: 1 passed, 0 failed"
