"""The native kernel's register tile alone: GMAC/s of one core against its FMA peak.

    python benchmarks/bench_tile.py [--isa avx2|avx512|generic]

Compiles a small driver with ``kernels/tile_<isa>.cpp`` (g++ -O3, as setup.py builds it) and
times 6-row (and 5-row) tiles of 32 columns over the K of CEPD ResNet-50's steps, B in L1 (rows
a panel apart), read in place (rows a 56x56 plane apart), or read in place panel after panel
across a whole 56x56 map (as a layer reads its input: from L3, not L1), best of 40 passes. The
peak is an FMA loop with 12 independent accumulators on the same vectors. Default ISA: the
build the library picks on this CPU.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
NS = {"avx512": "cepd_tile_avx512", "avx2": "cepd_tile_avx2", "generic": "cepd_tile_generic"}
CASES = [(26, 5, 32, 6, 0), (41, 7, 32, 6, 0), (41, 7, 32, 5, 0), (128, 7, 32, 6, 0), (369, 7, 32, 6, 0),
         (369, 7, 3248, 6, 0), (576, 1, 3248, 6, 0), (64, 5, 3136, 6, 1), (256, 5, 3136, 6, 1)]  # fmt: skip
# (K, row blocks, B row pitch, rows, walk: 1 = every 32-column panel of the pitch in turn)

DRIVER = r"""
#include "tile.h"
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#if defined(PEAK_AVX512) || defined(PEAK_AVX2)
#include <immintrin.h>
#endif
namespace NS { void tile(const float*, const float*, const int64_t*, int, int, float*, int, int); }

static double peak() {  // GMAC/s of 12 independent FMA chains
#if defined(PEAK_AVX512)
  typedef __m512 V; const int L = 16;
#define SET(x) _mm512_set1_ps(x)
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#elif defined(PEAK_AVX2)
  typedef __m256 V; const int L = 8;
#define SET(x) _mm256_set1_ps(x)
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#else
  return 0;
#endif
#if defined(PEAK_AVX512) || defined(PEAK_AVX2)
  V a[12], b = SET(0.9999f), c = SET(0.0001f);
  for (int i = 0; i < 12; ++i) a[i] = SET(i * 0.001f);
  const long n = 100000000;
  auto t0 = std::chrono::steady_clock::now();
  for (long k = 0; k < n; ++k)
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = FMA(a[i], b, c);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  volatile float sink = 0;
  for (int i = 0; i < 12; ++i) sink = sink + ((float*)&a[i])[0];
  return double(n) * 12 * L / s / 1e9;
#endif
}

int main(int argc, char** argv) {
  std::printf("peak %.1f\n", peak());
  for (int c = 1; c + 4 < argc; c += 5) {
    const int K = atoi(argv[c]), blocks = atoi(argv[c + 1]);
    const int pitch = atoi(argv[c + 2]), rows = atoi(argv[c + 3]), np = atoi(argv[c + 4]) ? pitch / 32 : 1;
    std::vector<float> A(size_t(blocks) * K * 6 + 64, 0.5f), B(size_t(K) * pitch + 64, 1.0f);
    std::vector<float> C(6 * 32 * blocks);
    std::vector<int64_t> roff(K);
    for (int k = 0; k < K; ++k) roff[k] = int64_t(k) * pitch;
    const int reps = 2000000 / (K * blocks * np) + 1;
    double best = 1e9;
    for (int t = 0; t < 40; ++t) {
      auto t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; ++r)
        for (int p = 0; p < np; ++p)
          for (int b = 0; b < blocks; ++b)
            NS::tile(A.data() + size_t(b) * K * 6, B.data() + 32 * p, roff.data(), K, rows,
                     C.data() + b * 192, 0, 32);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    const double macs = double(reps) * np * blocks * K * rows * 32;
    std::printf("%d %d %d %d %d %.1f\n", K, blocks, pitch, rows, np > 1, macs / best / 1e9);
  }
}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", choices=sorted(NS), help="tile build (default: the one the library picks here)")
    args = ap.parse_args(argv)
    isa = args.isa
    if isa is None:
        from cepd_deploy import native

        isa = {"avx512f": "avx512", "avx2": "avx2"}.get(native.isa(), "generic")
    if shutil.which("g++") is None:
        sys.exit("bench_tile: needs g++")
    from cepd_deploy.bench.machine import describe, machine_info

    with tempfile.TemporaryDirectory(prefix="cepd-tile-") as tmp:
        src, exe = Path(tmp) / "driver.cpp", Path(tmp) / "driver"
        src.write_text(DRIVER)
        flags = {"avx512": ["-mavx512f", "-DPEAK_AVX512"], "avx2": ["-mavx2", "-mfma", "-DPEAK_AVX2"]}
        flags = flags.get(isa, [])
        subprocess.run(["g++", "-O3", "-std=c++17", "-Wno-psabi", f"-DNS={NS[isa]}", f"-I{KERNELS}", *flags,
                        str(src), str(KERNELS / f"tile_{isa}.cpp"), "-o", str(exe)], check=True)  # fmt: skip
        out = subprocess.run([str(exe), *(str(v) for case in CASES for v in case)], check=True,
                             capture_output=True, text=True).stdout.split("\n")  # fmt: skip
    print(f"measured on: {describe(machine_info(1))}, tile build {isa}, one core")
    peak = float(out[0].split()[1])
    if peak:
        print(f"FMA peak: {peak:.1f} GMAC/s")
    head = f"{'K':>5} {'blocks':>6} {'B pitch':>7} {'rows':>4} {'B':>5} {'GMAC/s':>7}"
    print(head + (" of peak" if peak else ""))
    for line in filter(None, out[1:]):
        k, blocks, pitch, rows, walk, rate = line.split()
        frac = f" {float(rate) / peak:8.0%}" if peak else ""
        where = "map" if walk == "1" else "panel"
        print(f"{k:>5} {blocks:>6} {pitch:>7} {rows:>4} {where:>5} {rate:>7}{frac}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
