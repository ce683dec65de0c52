// The GEMM tile for avx2: the target is set for this file only, so the build needs no -march
// flag and the library loads on any x86-64 (ttsparse.cpp picks a tile by cpuid at load time).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#pragma GCC target("avx2,fma")
#define CEPD_TILE_AVX2 1  // partial vectors as AVX2 masked loads and stores, AVX2 permutes
#endif  // other machines build it as generic code; the cpuid check never picks it there
#define CEPD_TILE_NS cepd_tile_avx2
#define CEPD_TILE_VBYTES 32  // the native vector
#include "tile.inc"
