// Shared between ttsparse.cpp and the per-instruction-set tile builds (tile_*.cpp).
#pragma once
#include <cstddef>
#include <cstdint>

namespace cepd {

constexpr int MR = 6;   // rows per register tile
constexpr int NR = 32;  // columns per register tile (2 x 16 floats)

// What the last step of a layer does to each finished output value (all optional).
struct Epilogue {
  const float* scale = nullptr;
  const float* bias = nullptr;
  const int32_t* srow = nullptr;    // output channel -> row of the sparse branch, or -1
  const float* s = nullptr;         // sparse branch (kappa x out_n)
  const float* residual = nullptr;  // (M x out_n)
  int act = 0;                      // 0 none, 1 relu, 2 relu6
};

// acc[MR x NR] = A block (K x MR, packed) * B panel (K x NR, packed).
using TileFn = void (*)(const float* ap, const float* bp, int k, float* acc);
// dst[0..len) = epilogue(v[0..len)) for output row ``row`` at output columns [col, col+len).
using FinishFn = void (*)(const float* v, int len, int row, size_t col, size_t out_n, const Epilogue* e,
                          float* dst);

}  // namespace cepd
