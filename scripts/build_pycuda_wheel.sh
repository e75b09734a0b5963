#!/usr/bin/env bash
# Builds a pycuda wheel on a machine with a CUDA toolkit but no GPU driver, for a GPU machine of the same CPU
# architecture and Python that has none (a Jetson builds its own: `pip install pycuda` there, JetPack has all of it).
#
#   scripts/build_pycuda_wheel.sh [OUT_DIR]          (default: dist/)
#
# pycuda compiles against cuda.h and links against libcuda, the driver, which a machine without a GPU lacks. NVIDIA's
# toolkit ships a stub libcuda for this (lib64/stubs); where the toolkit has none (a toolkit assembled from PyPI's
# nvidia-* wheels), this script makes one from cuda.h and cudaProfiler.h, the driver headers pycuda includes: every
# driver function, each returning CUDA_ERROR_STUB_LIBRARY, under the driver's soname libcuda.so.1, so that the real
# driver is what loads on the GPU machine. curand's headers and library come from PyPI's nvidia-curand wheel unless
# the toolkit has them. Last, the wheel is loaded against the stub: every driver function it calls must exist, and
# cuInit must fail only for want of a driver.
#
# Environment: CUDA_ROOT (default /usr/local/cuda), PYCUDA_VERSION (default 2026.1), PYTHON (default python).
# The wheel needs a driver at least as new as the toolkit's CUDA version (pycuda calls the newest API cuda.h names),
# and libcurand.so.10 at run time: `pip install nvidia-curand` on the GPU machine (found through the wheel's rpath).
set -euo pipefail

CUDA_ROOT=${CUDA_ROOT:-/usr/local/cuda}
PYCUDA_VERSION=${PYCUDA_VERSION:-2026.1}
PYTHON=${PYTHON:-python}
OUT=$(realpath -m "${1:-dist}")

die() { echo "build_pycuda_wheel.sh: $*" >&2; exit 2; }
[ -f "$CUDA_ROOT/include/cuda.h" ] || die "$CUDA_ROOT/include/cuda.h not found: set CUDA_ROOT to a CUDA toolkit"
command -v gcc >/dev/null || die "gcc is needed"
command -v g++ >/dev/null || die "g++ is needed"

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/pycuda-wheel.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
LIBS="$SCRATCH/lib"
mkdir -p "$LIBS" "$OUT"

# libcuda: the toolkit's stub, or one generated from cuda.h. The names are those cuda.h maps each call to (its
# #defines turn cuMemAlloc into cuMemAlloc_v2 and so on), which is what pycuda's objects will ask the driver for.
if [ -f "$CUDA_ROOT/lib64/stubs/libcuda.so" ]; then
    cp "$CUDA_ROOT/lib64/stubs/libcuda.so" "$LIBS/libcuda.so"
    echo "libcuda: the toolkit's stub"
else
    # 34 is CUDA_ERROR_STUB_LIBRARY; the two calls that explain an error answer, so that callers can say it.
    printf '#include <cuda.h>\n#include <cudaProfiler.h>\n' | gcc -E -P -I "$CUDA_ROOT/include" - \
        | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' (' | sort -u | grep -vE '^cuGetError(Name|String)$' \
        | awk '{ print "int " $1 "(void) { return 34; }" }' > "$SCRATCH/libcuda_stub.c"
    cat >> "$SCRATCH/libcuda_stub.c" <<'EOF'
int cuGetErrorName(int error, const char** name) { *name = "CUDA_ERROR_STUB_LIBRARY"; return 0; }
int cuGetErrorString(int error, const char** text) { *text = "no CUDA driver: this libcuda is a stub"; return 0; }
EOF
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LIBS/libcuda.so" "$SCRATCH/libcuda_stub.c"
    echo "libcuda: a stub of the $(wc -l < "$SCRATCH/libcuda_stub.c") functions of cuda.h and cudaProfiler.h"
fi

# curand: headers and library from the toolkit, else from the nvidia-curand wheel (installed into the scratch dir).
CURAND_INC="$CUDA_ROOT/include"
CURAND_LIB="$CUDA_ROOT/lib64"
RPATH=""
if [ ! -f "$CURAND_INC/curand.h" ] || ! ls "$CURAND_LIB"/libcurand.so* >/dev/null 2>&1; then
    major=$(sed -n 's/^#define CUDA_VERSION \([0-9]*\)$/\1/p' "$CUDA_ROOT/include/cuda.h")
    major=$((major / 1000))
    if [ "$major" -ge 13 ]; then package=nvidia-curand; wheel_dir=nvidia/cu$major; else package=nvidia-curand-cu$major; wheel_dir=nvidia/curand; fi
    "$PYTHON" -m pip install --quiet --no-deps --target "$SCRATCH/curand" "$package"
    CURAND_INC="$SCRATCH/curand/$wheel_dir/include"
    CURAND_LIB="$SCRATCH/curand/$wheel_dir/lib"
    [ -f "$CURAND_INC/curand.h" ] || die "$package has no curand.h under $wheel_dir/include"
    # Where the same wheel puts libcurand on the GPU machine, seen from site-packages/pycuda/_driver*.so.
    RPATH="-Wl,-rpath,\$ORIGIN/../$wheel_dir/lib"
    echo "curand: headers and library from $package"
fi
curand_so=$(ls "$CURAND_LIB"/libcurand.so* | head -n 1)
ln -sf "$curand_so" "$LIBS/libcurand.so"

cd "$SCRATCH"
"$PYTHON" -m pip download --quiet --no-deps --no-binary pycuda "pycuda==$PYCUDA_VERSION" -d .
tar xzf "pycuda-$PYCUDA_VERSION.tar.gz"
cd "pycuda-$PYCUDA_VERSION"
# pycuda reads its build configuration from siteconf.py.
cat > siteconf.py <<EOF
CUDA_ROOT = "$CUDA_ROOT"
CUDA_INC_DIR = ["$CUDA_ROOT/include", "$CURAND_INC"]
CUDADRV_LIB_DIR = ["$LIBS"]
CUDADRV_LIBNAME = ["cuda"]
CUDART_LIB_DIR = ["$CUDA_ROOT/lib64"]
CUDART_LIBNAME = ["cudart"]
CURAND_LIB_DIR = ["$LIBS"]
CURAND_LIBNAME = ["curand"]
CUDA_ENABLE_CURAND = True
CUDA_ENABLE_GL = False
USE_SHIPPED_BOOST = True
CXXFLAGS = []
LDFLAGS = [$( [ -n "$RPATH" ] && printf '"%s"' "$RPATH" )]
EOF
MAKEFLAGS="-j$(nproc)" "$PYTHON" -m pip wheel --quiet --no-deps -w "$OUT" .
wheel=$(ls "$OUT"/pycuda-"$PYCUDA_VERSION"-*.whl)
echo "built $wheel"
# Linked by soname, not by the build machine's path to the stub.
"$PYTHON" -m zipfile -e "$wheel" "$SCRATCH/check"
if readelf -d "$SCRATCH"/check/pycuda/_driver*.so | grep -q "$SCRATCH"; then
    die "$wheel names the build machine's stub directory; it would not find the driver"
fi
readelf -d "$SCRATCH"/check/pycuda/_driver*.so | grep -E 'NEEDED.*(libcuda|libcurand)|RUNPATH' || true
# Python loads extensions with RTLD_NOW, so this import resolves every driver function pycuda calls.
ln -sf libcuda.so "$LIBS/libcuda.so.1"
cd "$SCRATCH"
PYTHONPATH="$SCRATCH/check" LD_LIBRARY_PATH="$LIBS:$CURAND_LIB" "$PYTHON" - <<'EOF'
import pycuda.driver as cuda

try:
    cuda.init()
except cuda.Error as error:
    print(f"pycuda.driver imports; with no driver, cuInit fails as it should: {error}")
else:
    raise SystemExit("cuInit succeeded against the stub libcuda: the check did not load the stub")
EOF
