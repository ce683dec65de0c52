// The GEMM tile for generic: the target is set for this file only, so the build needs no -march
// flag and the library loads on any x86-64 (ttsparse.cpp picks a tile by cpuid at load time).

#define CEPD_TILE_NS cepd_tile_generic
#define CEPD_TILE_VBYTES 16  // the native vector
#include "tile.inc"
