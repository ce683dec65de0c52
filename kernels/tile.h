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
  int act = 0;                      // 0 none, 1 relu, 2 relu6
};

// acc[rows x NR] (+)= A block (K x MR, packed; its first ``rows`` rows) * B, where B row k is the
// NR floats at base + roff[k] (a panel, or the rows of an activation read in place); add != 0:
// accumulate onto acc; cols < NR (a panel's tail): only the columns it needs are computed.
using TileFn = void (*)(const float* ap, const float* base, const int64_t* roff, int k, int rows, float* acc,
                        int add, int cols);
// The epilogue for rows [row0, row0 + rows) of a finished tile ``acc`` (rows x NR), columns
// [j0, j0 + len): y[row][dst + j] = act(acc * scale + bias (+ S row srow[row] of ``spanel``,
// kappa x NR) (+ res[row][dst + j])), rows of y and res out_hw apart.
using FinishFn = void (*)(const float* acc, int rows, int row0, int j0, int len, const cepd::Epilogue* e,
                          const float* spanel, const float* res, float* y, size_t out_hw, size_t dst);

// tile() then finish() of the whole tile (columns [0, NR), one contiguous run at ``dst``), with
// the epilogue applied to the accumulators in registers: no round trip through memory.
using TileFinishFn = void (*)(const float* ap, const float* base, const int64_t* roff, int k, int rows, int row0,
                              const cepd::Epilogue* e, const float* spanel, const float* res, float* y,
                              size_t out_hw, size_t dst);

// d row y (dpitch apart) = s row y (spitch apart), len floats each, y < rows.
using CopyRowsFn = void (*)(float* d, size_t dpitch, const float* s, size_t spitch, int rows, int len);

// even[m] = v[2 m] for 2 m < n; odd[m] = v[2 m + 1] for 2 m + 1 < n (odd may be null): a row's
// two stride-2 phases.
using Split2Fn = void (*)(float* even, float* odd, const float* v, int n);

// Winograd F(2x2, 3x3) input transform of nc channels (x, cs floats apart; each h x w, zero
// outside), row g of B^T: for tiles t in [t_lo, t_lo + nt) (tile (ty, tx) = t / tw, t % tw: the
// 4x4 patch d at rows 2 ty - ph .., columns 2 tx - pw ..), v[q * vs + c * vc + t - t_lo] =
// (B^T d B)[4 g + q], q < 4. 16 lanes are stored at a time: each row of v needs 15 floats of
// slack before it and 16 after.
using WinoInFn = void (*)(const float* x, int nc, size_t cs, int h, int w, int ph, int pw, int tw, int t_lo, int nt,
                          int g, float* v, size_t vs, size_t vc);
// Output transform of NR tiles (lanes; the first ``cols`` used): m + xi * ms holds M[xi] of
// each; y4 + (2 a + b) * NR gets (A^T M A)[a][b].
using WinoOutFn = void (*)(const float* m, size_t ms, int cols, float* y4);

}  // namespace cepd
