// The GEMM tile for AArch64 NEON (Advanced SIMD, part of every AArch64 CPU: no target pragma and no
// runtime check needed). Built on aarch64 only (setup.py picks the tile sources per machine; the
// AVX-512 / AVX2 sources are x86-only), next to the generic build; ttsparse.cpp dispatches to it.
#if !defined(__aarch64__)
#error "tile_neon.cpp is the AArch64 tile build; setup.py compiles it on aarch64 only"
#endif
#define CEPD_TILE_NEON 1      // stride-2 splits as vld2q (de-interleaving loads), lane shifts as vext
#define CEPD_TILE_NS cepd_tile_neon
#define CEPD_TILE_VBYTES 16   // the native vector (4 floats)
#define CEPD_TILE_PASS_VECS 4  // 32 vector registers: 6 x 4 accumulators, 4 B vectors (16 columns a pass)
#include "tile.inc"
