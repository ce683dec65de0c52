// cepd_fixed.h: the engine's integer arithmetic (the same as cepd_deploy/targets/pynq_z1/fixed.py).
//
// Values are raw ap_int<CEPD_BITS> with a per-layer power-of-two scale that lives in the program
// (a runtime field), so requantisation is an explicit shift: round half up (ap_fixed AP_RND),
// saturate (AP_SAT). Accumulators are 48 bits (the DSP48E1 P register); epilogues run on 64 bits.
#ifndef CEPD_FIXED_H
#define CEPD_FIXED_H

#include <ap_int.h>
#include <stdint.h>

#include "cepd_config.h"

typedef ap_int<CEPD_BITS> data_t;
typedef ap_int<48> acc_t;
typedef ap_int<64> wide_t;

static const int CEPD_DATA_MAX = (1 << (CEPD_BITS - 1)) - 1;
// at 8 bits or fewer the range is symmetric (-127..127 at 8): the packed MAC needs |w| <= 127
static const int CEPD_DATA_MIN = CEPD_PACK == 2 ? -CEPD_DATA_MAX : -(1 << (CEPD_BITS - 1));

// Arithmetic stays in 64 bits: compound assignments keep the width (a plain a + b of two
// ap_int<64> would widen to 65 bits); the program's formats keep every value below 2**62.

// round half up, then arithmetic shift right by s >= 0
static inline wide_t rshift_round(wide_t v, int s) {
#pragma HLS INLINE
  if (s <= 0) return v;
  wide_t half = 1;
  half <<= (s - 1);
  v += half;
  v >>= s;
  return v;
}

// move a value s bits of frac up (s >= 0: left shift) or down (s < 0: rounding right shift)
static inline wide_t align(wide_t v, int s) {
#pragma HLS INLINE
  if (s < 0) return rshift_round(v, -s);
  v <<= s;
  return v;
}

static inline data_t saturate(wide_t v) {
#pragma HLS INLINE
  if (v > CEPD_DATA_MAX) return data_t(CEPD_DATA_MAX);
  if (v < CEPD_DATA_MIN) return data_t(CEPD_DATA_MIN);
  return data_t(v);
}

// a wide value at frac F -> CEPD_BITS at frac F - s
static inline data_t requant(wide_t v, int s) {
#pragma HLS INLINE
  if (s > 0) {
    v = rshift_round(v, s);
  } else if (s < 0) {
    const wide_t lim = wide_t(1) << CEPD_BITS;
    if (v > lim) v = lim;
    if (v < -lim) v = -lim;
    v <<= (-s);
  }
  return saturate(v);
}

// 6.0 at frac f (the relu6 bound)
static inline wide_t six_at(int f) {
#pragma HLS INLINE
  return align(wide_t(6), f);
}

// round(2**CEPD_POOL_SHIFT / count): the average pools' reciprocal (a small ROM in hardware)
static inline wide_t pool_multiplier(int count) {
#pragma HLS INLINE
  wide_t m = 1;
  m <<= CEPD_POOL_SHIFT;
  m += count / 2;
  m /= count;
  return m;
}

// The epilogue block of a STEP or VEC record, decoded once per record.
struct Epi {
  int scale, norm, bias, bias_shift, res, res_pitch, res_cstride, res_shift, act, frac, out_shift;
};

static inline Epi read_epi(const int32_t* r) {
  Epi e;
  e.scale = r[F_E_SCALE];
  e.norm = r[F_E_NORM];
  e.bias = r[F_E_BIAS];
  e.bias_shift = r[F_E_BIAS_SHIFT];
  e.res = r[F_E_RES];
  e.res_pitch = r[F_E_RES_PITCH];
  e.res_cstride = r[F_E_RES_CSTRIDE];
  e.res_shift = r[F_E_RES_SHIFT];
  e.act = r[F_E_ACT];
  e.frac = r[F_E_FRAC];
  e.out_shift = r[F_E_OUT_SHIFT];
  return e;
}

// v*scale, round-shift by norm, + bias, + residual, activation, requantise (see fixed.py)
static inline data_t epilogue(wide_t v, const Epi& e, data_t scale, int32_t bias, data_t res) {
#pragma HLS INLINE
  if (e.scale >= 0) v *= wide_t(scale);
  v = rshift_round(v, e.norm);
  if (e.bias >= 0) v += align(wide_t(bias), e.bias_shift);
  if (e.res >= 0) v += align(wide_t(res), e.res_shift);
  if (e.act == ACT_RELU) {
    if (v < 0) v = 0;
  } else if (e.act == ACT_RELU6) {
    if (v < 0) v = 0;
    const wide_t hi = six_at(e.frac);
    if (v > hi) v = hi;
  }
  return requant(v, e.out_shift);
}

#endif
