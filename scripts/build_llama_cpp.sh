#!/usr/bin/env bash
# Build llama.cpp's llama-server and llama-quantize, plus its HF->GGUF converter, into DEST.
#
#     scripts/build_llama_cpp.sh .venv/llama.cpp
#
# The source is the llama.cpp tree vendored in the pinned llama-cpp-python sdist from PyPI
# (the only registry this project may reach), so the engine, the converter and the gguf-py it
# imports are one llama.cpp commit. Idempotent: a finished build leaves DEST/.built with the
# version and this CPU's flags (the build is -march=native); a rerun with both equal does nothing.
set -euo pipefail
DEST=${1:?usage: build_llama_cpp.sh DEST}
VERSION=0.3.36
PY=${PY:-python3}
want="llama-cpp-python==$VERSION $(grep -m1 '^flags' /proc/cpuinfo | md5sum | cut -c1-12)"
if [ -f "$DEST/.built" ] && [ "$(cat "$DEST/.built")" = "$want" ]; then exit 0; fi
command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake >/dev/null; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building llama.cpp (llama-server, llama-quantize) from llama-cpp-python $VERSION: ~5 min on 2 cores"
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
  -d "$work" "llama-cpp-python==$VERSION"
tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"
# no network at build time: no prebuilt web UI download, no HTTPS client
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF >"$work/cmake.log" 2>&1 \
  || { tail -30 "$work/cmake.log"; exit 1; }
cmake --build "$work/build" --target llama-server llama-quantize -j "$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log"; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST/bin"
cp "$work/build/bin/llama-server" "$work/build/bin/llama-quantize" "$DEST/bin/"
cp -r "$src/convert_hf_to_gguf.py" "$src/gguf-py" "$DEST/"
[ -d "$src/conversion" ] && cp -r "$src/conversion" "$DEST/"
cp "$src/LICENSE" "$DEST/LICENSE"
echo "$want" >"$DEST/.built"
echo "llama.cpp built in $DEST"
