// cepd_engine.h: the CEPD overlay engine (Vitis HLS C++; C-simulated with g++ and ap_int.h).
//
// One engine runs any supported model: the program (records) and weights come from the blob in
// DDR. Units:
//   load_tile  - DDR -> an input buffer half (one tile of a group's input), HP0/HP1 striped
//   run_steps  - the PE array: CEPD_PE_OUT output channels x CEPD_LANES output pixels of MACs
//                per cycle (or max/sum lanes for pools), epilogue, output to scratch or DDR;
//                at CEPD_PACK 2 (8-bit data) two output channels share each DSP48E1;
//                per output-channel chunk: prefetch(k+1) | compute(k) | store(k-1), ping-pong
//   run_vec    - DDR -> DDR ops: element-wise (add, scatter-add, multiply, copy/permute/concat,
//                activations), GAP, resampling (pad, resize) and layer norm
// A BUNDLE's loads fill one input half while its steps read the other (the compiler guarantees
// it; the engine checks it and stops with ST_HAZARD otherwise).
#ifndef CEPD_ENGINE_H
#define CEPD_ENGINE_H

#include "cepd_fixed.h"

static const int PO = CEPD_PE_OUT;
static const int LANES = CEPD_LANES;

static inline int32_t rd32(const int16_t* m, long off) {
#pragma HLS INLINE
  return (int32_t)((uint32_t)(uint16_t)m[off] | ((uint32_t)(uint16_t)m[off + 1] << 16));
}

// ---------------------------------------------------------------------------------------------
// LOAD: channels x rows x cols of an arena image (rows pitch src_pitch, every col_step-th
// column) into an input half at dst (row pitch dst_pitch, channel stride dst_cstride)
// (src_mem 1: from the blob instead, e.g. a transposed weight matrix)
static void load_tile(const int32_t* r, data_t ibuf[CEPD_IBUF_HALF], const int16_t* w0, const int16_t* w1,
                      const amem_t* a0, const amem_t* a1) {
  const int C = r[L_CHANNELS], rows = r[L_ROWS], cols = r[L_COLS], step = r[L_COL_STEP];
  const bool blob = r[L_SRC_MEM];
load_c:
  for (int c = 0; c < C; c++) {
    const int16_t* wsrc = (c & 1) ? w1 : w0;  // even channels on HP0, odd on HP1
    const amem_t* asrc = (c & 1) ? a1 : a0;
  load_y:
    for (int y = 0; y < rows; y++) {
      const long s = r[L_SRC] + (long)c * r[L_SRC_CSTRIDE] + (long)y * r[L_SRC_PITCH];
      const int d = r[L_DST] + c * r[L_DST_CSTRIDE] + y * r[L_DST_PITCH];
    load_x:
      for (int x = 0; x < cols; x++) {
#pragma HLS PIPELINE II = 1
        const long i = s + (long)x * step;
        ibuf[d + x] = blob ? data_t(wsrc[i]) : data_t(asrc[i]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// STEP geometry, decoded once per record
struct Geo {
  int op, flat, bh, bw, src_buf, src_half, src_split, src_base, src_pitch, src_cstride, src_y0,
      src_x0, in_h, in_w, oy0, ox0, oh, ow, dst_buf, dst_base, dst_pitch, dst_cstride, groups,
      cin_g, cout_g, kh, kw, sh, sw, ph, pw, dh, dw, w_addr, w_mem, bias_px, sc_map, sc_base, sc_pitch,
      sc_cstride, sc_a_norm, sc_a_out, sc_a_shift, sc_b_shift;
  int red, nco, chunks, nblk, nbx;
};

static inline Geo read_geo(const int32_t* r) {
  Geo g;
  g.op = r[S_OP]; g.flat = r[S_FLAT]; g.bh = r[S_BH]; g.bw = r[S_BW];
  g.src_buf = r[S_SRC_BUF]; g.src_half = r[S_SRC_HALF]; g.src_split = r[S_SRC_SPLIT];
  g.src_base = r[S_SRC_BASE]; g.src_pitch = r[S_SRC_PITCH]; g.src_cstride = r[S_SRC_CSTRIDE];
  g.src_y0 = r[S_SRC_Y0]; g.src_x0 = r[S_SRC_X0]; g.in_h = r[S_IN_H]; g.in_w = r[S_IN_W];
  g.oy0 = r[S_OY0]; g.ox0 = r[S_OX0]; g.oh = r[S_OH]; g.ow = r[S_OW];
  g.dst_buf = r[S_DST_BUF]; g.dst_base = r[S_DST_BASE]; g.dst_pitch = r[S_DST_PITCH];
  g.dst_cstride = r[S_DST_CSTRIDE]; g.groups = r[S_GROUPS]; g.cin_g = r[S_CIN_G];
  g.cout_g = r[S_COUT_G]; g.kh = r[S_KH]; g.kw = r[S_KW]; g.sh = r[S_SH]; g.sw = r[S_SW];
  g.ph = r[S_PH]; g.pw = r[S_PW]; g.dh = r[S_DH]; g.dw = r[S_DW]; g.w_addr = r[S_W_ADDR];
  g.w_mem = r[S_W_MEM]; g.bias_px = r[S_BIAS_PX];
  g.sc_map = r[S_SC_MAP]; g.sc_base = r[S_SC_BASE]; g.sc_pitch = r[S_SC_PITCH];
  g.sc_cstride = r[S_SC_CSTRIDE]; g.sc_a_norm = r[S_SC_A_NORM]; g.sc_a_out = r[S_SC_A_OUT];
  g.sc_a_shift = r[S_SC_A_SHIFT];
  g.sc_b_shift = r[S_SC_B_SHIFT];
  const bool mac = g.op == OP_MAC;
  g.red = (mac ? g.cin_g : 1) * g.kh * g.kw;
  g.nco = mac ? (g.cout_g + PO - 1) / PO : 1;
  g.chunks = g.groups * g.nco;
  if (g.flat) {
    g.nbx = 1;
    g.nblk = (g.oh * g.src_pitch + LANES - 1) / LANES;
  } else {
    g.nbx = (g.ow + g.bw - 1) / g.bw;
    g.nblk = ((g.oh + g.bh - 1) / g.bh) * g.nbx;
  }
  return g;
}

// channel (global index), image row and column of an input pixel -> its value (in bounds)
static inline data_t fetch(const Geo& g, int ch, int iy, int ix, const data_t ib0[CEPD_IBUF_HALF],
                           const data_t ib1[CEPD_IBUF_HALF], const data_t scr[CEPD_SCRATCH]) {
#pragma HLS INLINE
  const int off = (iy - g.src_y0) * g.src_pitch + (ix - g.src_x0);
  if (g.src_buf == BUF_SCRATCH) return scr[g.src_base + ch * g.src_cstride + off];
  int half = g.src_half, c = ch;
  if (g.src_split >= 0) {
    half = ch < g.src_split ? 0 : 1;
    c = ch < g.src_split ? ch : ch - g.src_split;
  }
  const int idx = g.src_base + c * g.src_cstride + off;
  return half ? ib1[idx] : ib0[idx];
}

// per-chunk parameters: PO channels' scale, bias, scatter index (bias_px: one bias per pixel)
struct Params {
  data_t scale[PO];
  int32_t bias[PO];
  int smap[PO];
  int32_t pbias[CEPD_OUT_PX];
};

// chunk k -> first output channel (global) and number of valid channels
static inline void chunk_channels(const Geo& g, int k, int& c0, int& n) {
#pragma HLS INLINE
  if (g.op != OP_MAC) {
    c0 = k;
    n = 1;
    return;
  }
  const int grp = k / g.nco, co = (k % g.nco) * PO;
  c0 = grp * g.cout_g + co;
  n = g.cout_g - co < PO ? g.cout_g - co : PO;
}

// prefetch chunk k: its weights, epilogue parameters and residual
static void prefetch(const Geo& g, const Epi& e, int k, const int16_t* w0, const int16_t* w1,
                     const amem_t* a0, const amem_t* a1, data_t wst[PO][CEPD_RED_MAX],
                     data_t rbuf[PO][CEPD_OUT_PX], Params& p) {
  int c0, n;
  chunk_channels(g, k, c0, n);
pf_params:
  for (int po = 0; po < PO; po++) {
    const int c = c0 + po;
    const bool ok = po < n;
    p.scale[po] = ok && e.scale >= 0 ? data_t(w0[e.scale + c]) : data_t(0);
    p.bias[po] = ok && e.bias >= 0 ? rd32(w0, e.bias + 2L * c) : 0;
    p.smap[po] = ok && g.sc_map >= 0 ? int(w0[g.sc_map + c]) : -1;
    if (g.op == OP_MAC) {
      const int16_t* w = (po & 1) ? w1 : w0;  // striped over HP0/HP1
      const amem_t* wa = (po & 1) ? a1 : a0;  // weights that are a value in the arena (w_mem)
    pf_w:
      for (int r = 0; r < g.red; r++) {
#pragma HLS PIPELINE II = 1
        const long i = g.w_addr + (long)(c0 + po) * g.red + r;
        wst[po][r] = !ok ? data_t(0) : g.w_mem ? data_t(wa[i]) : data_t(w[i]);
      }
    }
    if (po == 0 && g.bias_px && e.bias >= 0) {
    pf_bias_y:
      for (int y = 0; y < g.oh; y++) {
      pf_bias_x:
        for (int x = 0; x < g.ow; x++) {
#pragma HLS PIPELINE II = 1
          p.pbias[y * g.ow + x] = rd32(w0, e.bias + 2L * ((g.oy0 + y) * g.dst_pitch + g.ox0 + x));
        }
      }
    }
    if (ok && e.res >= 0) {
      const amem_t* a = (po & 1) ? a1 : a0;
    pf_res_y:
      for (int y = 0; y < g.oh; y++) {
      pf_res_x:
        for (int x = 0; x < g.ow; x++) {
#pragma HLS PIPELINE II = 1
          rbuf[po][y * g.ow + x] = data_t(a[e.res + (long)c * e.res_cstride + (long)y * e.res_pitch + x]);
        }
      }
    }
  }
}

// compute chunk k: every lane block, then the epilogue into obuf (DDR) or the scratch
static void compute(const Geo& g, const Epi& e, int k, const data_t ib0[CEPD_IBUF_HALF],
                    const data_t ib1[CEPD_IBUF_HALF], data_t scr[CEPD_SCRATCH],
                    const data_t wst[PO][CEPD_RED_MAX], const data_t rbuf[PO][CEPD_OUT_PX],
                    const Params& p, data_t obuf[PO][CEPD_OUT_PX]) {
  int c0, n;
  chunk_channels(g, k, c0, n);
  const int grp = g.op == OP_MAC ? k / g.nco : 0;
  const int cin0 = g.op == OP_MAC ? grp * g.cin_g : c0;  // first input channel read
  const wide_t lowest = -(wide_t(1) << 62);
blocks:
  for (int b = 0; b < g.nblk; b++) {
    int orow[LANES], ocol[LANES];
    bool valid[LANES];
#pragma HLS ARRAY_PARTITION variable = orow complete
#pragma HLS ARRAY_PARTITION variable = ocol complete
#pragma HLS ARRAY_PARTITION variable = valid complete
  lanes:
    for (int l = 0; l < LANES; l++) {
#pragma HLS UNROLL
      if (g.flat) {
        const int q = b * LANES + l;
        orow[l] = q / g.src_pitch;
        ocol[l] = q % g.src_pitch;
        valid[l] = orow[l] < g.oh && ocol[l] < g.ow;
      } else {
        orow[l] = (b / g.nbx) * g.bh + l / g.bw;
        ocol[l] = (b % g.nbx) * g.bw + l % g.bw;
        valid[l] = l < g.bh * g.bw && orow[l] < g.oh && ocol[l] < g.ow;
      }
    }
    acc_t acc[PO][LANES];
#pragma HLS ARRAY_PARTITION variable = acc complete dim = 0
  init:
    for (int po = 0; po < PO; po++)
      for (int l = 0; l < LANES; l++) {
#pragma HLS UNROLL
        acc[po][l] = g.op == OP_MAXP ? acc_t(lowest >> 16) : acc_t(0);
      }
#if CEPD_PACK == 2
    acc_t pk[PO / 2][LANES];  // the DSPs' P registers (one per channel pair and lane)
#pragma HLS ARRAY_PARTITION variable = pk complete dim = 0
  init_pk:
    for (int d = 0; d < PO / 2; d++)
      for (int l = 0; l < LANES; l++) {
#pragma HLS UNROLL
        pk[d][l] = 0;
      }
#endif
    // the reduction: one (channel, ky, kx) per cycle
    int ci = 0, ky = 0, kx = 0;
  reduce:
    for (int r = 0; r < g.red; r++) {
#pragma HLS PIPELINE II = 1
      data_t x[LANES];
      bool in[LANES];
#pragma HLS ARRAY_PARTITION variable = x complete
#pragma HLS ARRAY_PARTITION variable = in complete
    gather:
      for (int l = 0; l < LANES; l++) {
#pragma HLS UNROLL
        const int iy = (g.oy0 + orow[l]) * g.sh - g.ph + ky * g.dh;
        const int ix = (g.ox0 + ocol[l]) * g.sw - g.pw + kx * g.dw;
        in[l] = valid[l] && iy >= 0 && iy < g.in_h && ix >= 0 && ix < g.in_w;
        x[l] = in[l] ? fetch(g, cin0 + ci, iy, ix, ib0, ib1, scr) : data_t(0);
      }
      if (g.op == OP_MAC) {
#if CEPD_PACK == 2
        // the packed MAC: DSP d multiplies A = w[2d+1] * 2^CEPD_PACK_SHIFT + w[2d] (its 25-bit
        // pre-adder) by B = x (18 bits); its P register accumulates both channels' products in two
        // fields, split every CEPD_PACK_SPAN products into their accumulators: low = P[16:0]
        // sign-extended, high = (P - low) >> 17. Exact while |w| <= 127 and |x| <= 128 (the formats
        // saturate symmetrically at 8 bits): 4 x 127 x 128 < 2^16.
        const bool split = r % CEPD_PACK_SPAN == CEPD_PACK_SPAN - 1 || r == g.red - 1;
      mac_d:
        for (int d = 0; d < PO / 2; d++) {
#pragma HLS UNROLL
          ap_int<25> a = wst[2 * d + 1][r];
          a <<= CEPD_PACK_SHIFT;
          a += wst[2 * d][r];
        mac_dl:
          for (int l = 0; l < LANES; l++) {
#pragma HLS UNROLL
            const ap_int<18> b = x[l];
            pk[d][l] += a * b;
            if (split) {
              const ap_int<CEPD_PACK_SHIFT> lo = pk[d][l];  // P[16:0] (truncation wraps: signed)
              acc_t hi = pk[d][l];
              hi -= lo;
              hi >>= CEPD_PACK_SHIFT;
              acc[2 * d][l] += lo;
              acc[2 * d + 1][l] += hi;
              pk[d][l] = 0;
            }
          }
        }
#else
      mac_po:
        for (int po = 0; po < PO; po++) {
#pragma HLS UNROLL
          const data_t w = wst[po][r];
        mac_l:
          for (int l = 0; l < LANES; l++) {
#pragma HLS UNROLL
            acc[po][l] += w * x[l];
          }
        }
#endif
      } else {
      pool_l:
        for (int l = 0; l < LANES; l++) {
#pragma HLS UNROLL
          if (g.op == OP_AVGP) acc[0][l] += x[l];
          else if (in[l] && acc_t(x[l]) > acc[0][l]) acc[0][l] = x[l];
        }
      }
      if (++kx == g.kw) {
        kx = 0;
        if (++ky == g.kh) {
          ky = 0;
          ci++;
        }
      }
    }
    // epilogue (CEPD_EPI lanes wide in hardware; overlaps the next block's reduction)
  epi_po:
    for (int po = 0; po < PO; po++) {
    epi_l:
      for (int l = 0; l < LANES; l++) {
#pragma HLS PIPELINE II = 1
        if (po >= n || !valid[l]) continue;
        const int c = c0 + po;
        wide_t v = acc[po][l];
        if (g.op == OP_AVGP) {
          const int y0 = (g.oy0 + orow[l]) * g.sh - g.ph, x0 = (g.ox0 + ocol[l]) * g.sw - g.pw;
          const int y1 = y0 + g.kh < g.in_h + g.ph ? y0 + g.kh : g.in_h + g.ph;
          const int x1 = x0 + g.kw < g.in_w + g.pw ? x0 + g.kw : g.in_w + g.pw;
          v *= pool_multiplier((y1 - y0) * (x1 - x0));
          v = rshift_round(v, CEPD_POOL_SHIFT);
        }
        if (g.sc_map >= 0) {  // the CEPD sparse branch, scatter-added in the epilogue
          v = align(wide_t(requant(rshift_round(v, g.sc_a_norm), g.sc_a_out)), g.sc_a_shift);
          const int j = p.smap[po];
          if (j >= 0)
            v += align(wide_t(scr[g.sc_base + j * g.sc_cstride + orow[l] * g.sc_pitch + ocol[l]]), g.sc_b_shift);
        }
        const int px = orow[l] * g.ow + ocol[l];
        const data_t res = e.res >= 0 ? rbuf[po][px] : data_t(0);
        const data_t y = epilogue(v, e, p.scale[po], g.bias_px ? p.pbias[px] : p.bias[po], res);
        if (g.dst_buf == BUF_DDR) obuf[po][px] = y;
        else scr[g.dst_base + c * g.dst_cstride + orow[l] * g.dst_pitch + ocol[l]] = y;
      }
    }
  }
}

// store chunk k: its obuf rows to the arena (channels striped over HP0/HP1)
static void store(const Geo& g, int k, const data_t obuf[PO][CEPD_OUT_PX], amem_t* a0, amem_t* a1) {
  int c0, n;
  chunk_channels(g, k, c0, n);
st_po:
  for (int po = 0; po < n; po++) {
    amem_t* a = (po & 1) ? a1 : a0;
  st_y:
    for (int y = 0; y < g.oh; y++) {
    st_x:
      for (int x = 0; x < g.ow; x++) {
#pragma HLS PIPELINE II = 1
        a[g.dst_base + (long)(c0 + po) * g.dst_cstride + (long)y * g.dst_pitch + x] =
            (amem_t)obuf[po][y * g.ow + x].to_int();
      }
    }
  }
}

struct StepBufs {
  data_t wst0[PO][CEPD_RED_MAX], wst1[PO][CEPD_RED_MAX];
  data_t rb0[PO][CEPD_OUT_PX], rb1[PO][CEPD_OUT_PX];
  data_t ob0[PO][CEPD_OUT_PX], ob1[PO][CEPD_OUT_PX];
  Params p0, p1;
};

// The steps of a bundle: all their output-channel chunks form one pipeline,
// prefetch(i) | compute(i-1) | store(i-2), on ping-pong buffers (a step's scratch output is
// complete before the next step computes: compute is in order).
struct ChunkRef {
  int step, chunk;
};

static inline void chunk_at(const Geo geos[CEPD_MAX_COMPS], int nc, int i, ChunkRef& c) {
  int s = 0;
  while (s < nc - 1 && i >= geos[s].chunks) i -= geos[s++].chunks;
  c.step = s;
  c.chunk = i;
}

static void run_steps(int32_t comps[CEPD_MAX_COMPS][CEPD_REC_WORDS], int nc, const data_t ib0[CEPD_IBUF_HALF],
                      const data_t ib1[CEPD_IBUF_HALF], data_t scr[CEPD_SCRATCH], const int16_t* w0,
                      const int16_t* w1, amem_t* a0, amem_t* a1, StepBufs& sb) {
  Geo geos[CEPD_MAX_COMPS];
  Epi epis[CEPD_MAX_COMPS];
  int total = 0;
  for (int s = 0; s < nc; s++) {
    geos[s] = read_geo(comps[s]);
    epis[s] = read_epi(comps[s]);
    total += geos[s].chunks;
  }
chunk:
  for (int i = 0; i < total + 2; i++) {
    ChunkRef p, c, s;  // the chunk prefetched, computed, stored in this iteration
    chunk_at(geos, nc, i, p);
    chunk_at(geos, nc, i - 1, c);
    chunk_at(geos, nc, i - 2, s);
    const bool do_p = i < total, do_c = i >= 1 && i <= total;
    const bool do_s = i >= 2 && geos[s.step].dst_buf == BUF_DDR;
    if (i & 1) {
      if (do_p) prefetch(geos[p.step], epis[p.step], p.chunk, w0, w1, a0, a1, sb.wst1, sb.rb1, sb.p1);
      if (do_c) compute(geos[c.step], epis[c.step], c.chunk, ib0, ib1, scr, sb.wst0, sb.rb0, sb.p0, sb.ob0);
      if (do_s) store(geos[s.step], s.chunk, sb.ob1, a0, a1);
    } else {
      if (do_p) prefetch(geos[p.step], epis[p.step], p.chunk, w0, w1, a0, a1, sb.wst0, sb.rb0, sb.p0);
      if (do_c) compute(geos[c.step], epis[c.step], c.chunk, ib0, ib1, scr, sb.wst1, sb.rb1, sb.p1, sb.ob1);
      if (do_s) store(geos[s.step], s.chunk, sb.ob0, a0, a1);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// VEC: DDR -> DDR ops of the vector unit (CEPD_VEC_LANES elements per cycle in hardware, one
// multiplier per lane). Its memories: the activation table (value and step of each segment) and the
// vector buffer (a resample's column table and interpolated row; a layer-norm tile's statistics).
// The arithmetic is cepd_deploy/targets/pynq_z1/vector.py's, bit for bit.

// one activation (ACT): the wide value at the record's frac, before the epilogue
static inline wide_t act_value(const int32_t* r, wide_t x, wide_t slope, const int16_t act[2 * CEPD_ACT_SEGS]) {
#pragma HLS INLINE
  const int fn = r[V_FN];
  if (fn == FN_LEAKY) {
    if (x >= 0) return align(x, r[V_SL_FRAC]);
    x *= slope;
    return x;
  }
  if (fn == FN_HSIG || fn == FN_HSWISH) {  // clamp(x + 3, 0, 6) / 6 at frac CEPD_HS_FRAC, exactly
    const int f = r[V_HS_F];
    wide_t three = 3, six = 6, t = x;
    three <<= f;
    six <<= f;
    t <<= r[V_HS_USH];
    t += three;
    if (t < 0) t = 0;
    if (t > six) t = six;
    t <<= CEPD_HS_FRAC;
    t += three;
    t >>= f;
    t /= 6;  // a constant divider (multiply-high and shift in hardware)
    if (fn == FN_HSWISH) t *= x;
    return t;
  }
  // FN_TABLE: segment i of the input's raw range, interpolated with the low bits
  wide_t d = x;
  d -= r[V_T_LO];
  const int s = r[V_T_SHIFT];
  wide_t i = d;
  i >>= s;
  if (d < 0 || i >= CEPD_ACT_SEGS) {  // beyond the table: the asymptote, or the input requantised
    const bool left = d < 0;
    if (left ? r[V_T_LEFT] : r[V_T_RIGHT]) return wide_t(requant(x, r[V_ID_SHIFT]));
    return wide_t(left ? r[V_T_LVAL] : r[V_T_RVAL]);
  }
  const int k = i.to_int();
  wide_t low = i, v = act[2 * k], step = act[2 * k + 1];
  low <<= s;
  low = d - low;
  v <<= s;
  step *= low;
  v += step;
  return rshift_round(v, s);
}

// RESAMPLE: zero padding, nearest and bilinear resize. Tables of (i0, i1, w) per output row (read
// as it goes) and per output column (first copied into the vector buffer); index -1 reads zero.
// Per channel: a vertical pass a + w (b - a) over the source row(s) into the line buffer whenever
// the row's entry changes, then a horizontal pass per output row; or (rs_direct: every weight 0)
// one pass that streams the source pixels to the output.
static void vec_resample(const int32_t* r, const int16_t* w0, const amem_t* a0, amem_t* a1,
                         wide_t vbuf[CEPD_VBUF]) {
  const Epi e = read_epi(r);
  const int C = r[V_CHANNELS], in_w = r[V_IN_W], oh = r[V_OUT_H], ow = r[V_OUT_W];
  const int line = 3 * ow;  // the interpolated row follows the column table
rs_cols:
  for (int i = 0; i < 3 * ow; i++) {
#pragma HLS PIPELINE II = 1
    vbuf[i] = w0[r[V_X_ADDR] + i];
  }
  if (r[V_RS_DIRECT]) {  // every weight 0 (padding, nearest): source pixels stream to the output
  rs_dc:
    for (int c = 0; c < C; c++) {
      const long src = r[V_A_ADDR] + (long)c * r[V_A_CSTRIDE];
      const long dst = r[V_OUT_ADDR] + (long)c * r[V_OUT_CSTRIDE];
    rs_dy:
      for (int y = 0; y < oh; y++) {
        const int y0 = w0[r[V_P_ADDR] + 3 * y];
      rs_dx:
        for (int x = 0; x < ow; x++) {
#pragma HLS PIPELINE II = 1
          const int x0 = vbuf[3 * x].to_int();
          wide_t v = y0 >= 0 && x0 >= 0 ? wide_t(a0[src + (long)y0 * in_w + x0]) : wide_t(0);
          v <<= CEPD_RS_WB + CEPD_RS_GUARD;  // the value the interpolating path makes of it, exactly
          a1[dst + (long)y * ow + x] = (amem_t)epilogue(v, e, data_t(0), 0, data_t(0)).to_int();
        }
      }
    }
    return;
  }
rs_c:
  for (int c = 0; c < C; c++) {
    const long src = r[V_A_ADDR] + (long)c * r[V_A_CSTRIDE];
    const long dst = r[V_OUT_ADDR] + (long)c * r[V_OUT_CSTRIDE];
    int p0 = -2, p1 = -2, pw = -1;
  rs_y:
    for (int y = 0; y < oh; y++) {
      const int y0 = w0[r[V_P_ADDR] + 3 * y], y1 = w0[r[V_P_ADDR] + 3 * y + 1], wy = w0[r[V_P_ADDR] + 3 * y + 2];
      if (y0 != p0 || y1 != p1 || wy != pw) {
      rs_v:
        for (int x = 0; x < in_w; x++) {
#pragma HLS PIPELINE II = 1
          const wide_t a = y0 >= 0 ? wide_t(a0[src + (long)y0 * in_w + x]) : wide_t(0);
          wide_t v = a, d = y1 >= 0 ? wide_t(a0[src + (long)y1 * in_w + x]) : wide_t(0);
          v <<= CEPD_RS_WB;
          d -= a;
          d *= wy;
          v += d;
          vbuf[line + x] = rshift_round(v, CEPD_RS_WB - CEPD_RS_GUARD);
        }
        p0 = y0;
        p1 = y1;
        pw = wy;
      }
    rs_x:
      for (int x = 0; x < ow; x++) {
#pragma HLS PIPELINE II = 1
        const int x0 = vbuf[3 * x].to_int(), x1 = vbuf[3 * x + 1].to_int(), wx = vbuf[3 * x + 2].to_int();
        const wide_t p = x0 >= 0 ? vbuf[line + x0] : wide_t(0);
        wide_t v = p, d = x1 >= 0 ? vbuf[line + x1] : wide_t(0);
        v <<= CEPD_RS_WB;
        d -= p;
        d *= wx;
        v += d;
        a1[dst + (long)y * ow + x] = (amem_t)epilogue(v, e, data_t(0), 0, data_t(0)).to_int();
      }
    }
  }
}

static const int32_t rsqrt_seed[48] = {CEPD_RSQRT_SEEDS};

// 1/sqrt(w) for 1 <= w < 2**62: r (frac 16) and e with r 2**-16 2**-e ~ w**-1/2. w = m 4**e with m
// in [1, 4) at frac 30, a seed from the top bits of m, two Newton steps r (3 - m r**2) / 2.
static inline void rsqrt_q(wide_t w, wide_t& r16, int& e) {
  int n = 0;
rsqrt_bits:
  for (int b = 0; b < 63; b++)  // the bit length (a leading-zero count in hardware)
    if (w[b]) n = b + 1;
  e = (n - 1) >> 1;
  const int sh = CEPD_RSQRT_BITS - 2 * e;
  wide_t m = w, top;
  if (sh >= 0) m <<= sh;
  else m >>= -sh;
  top = m;
  top >>= 26;
  wide_t rr = rsqrt_seed[top.to_int() - 16];
rsqrt_newton:
  for (int k = 0; k < 2; k++) {
    wide_t r2 = rr, t = m, f = 3;
    r2 *= rr;
    r2 >>= CEPD_RSQRT_BITS;
    t *= r2;
    t >>= CEPD_RSQRT_BITS;
    f <<= CEPD_RSQRT_BITS;
    f -= t;
    rr *= f;
    rr >>= CEPD_RSQRT_BITS + 1;
  }
  r16 = rshift_round(rr, CEPD_RSQRT_BITS - 16);
}

// LNORM: layer norm over the channels, per tile of ln_tile positions: sums S1, S2 (pass 1), then
// W = (C S2 - S1^2) 4^g + eps, its reciprocal square root r, z = (C x - S1) 2^g r (frac
// CEPD_LN_ZFRAC) and the epilogue (z * scale + shift) (pass 2).
static void vec_lnorm(const int32_t* r, const int16_t* w0, const amem_t* a0, amem_t* a1,
                      wide_t vbuf[CEPD_VBUF]) {
  const Epi e = read_epi(r);
  const int C = r[V_CHANNELS], hw = r[V_HW], P = r[V_LN_TILE], g = r[V_LN_G];
  wide_t eps = r[V_LN_EPS_HI];
  eps <<= 31;
  eps += r[V_LN_EPS_LO];
ln_tile:
  for (int p0 = 0; p0 < hw; p0 += P) {
    const int np = hw - p0 < P ? hw - p0 : P;
  ln_zero:
    for (int p = 0; p < 2 * np; p++) {
#pragma HLS PIPELINE II = 1
      vbuf[p] = 0;
    }
  ln_sum_c:
    for (int c = 0; c < C; c++) {
      const long a = r[V_A_ADDR] + (long)c * r[V_A_CSTRIDE] + p0;
    ln_sum_p:
      for (int p = 0; p < np; p++) {
#pragma HLS PIPELINE II = 1
        const wide_t x = a0[a + p];
        wide_t sq = x;
        sq *= x;
        vbuf[2 * p] += x;
        vbuf[2 * p + 1] += sq;
      }
    }
  ln_stat:
    for (int p = 0; p < np; p++) {
      wide_t w = vbuf[2 * p + 1], s1sq = vbuf[2 * p], r16;
      int ex;
      w *= C;
      s1sq *= vbuf[2 * p];
      w -= s1sq;
      w <<= 2 * g;
      w += eps;
      if (w < 1) w = 1;
      rsqrt_q(w, r16, ex);
      r16 <<= 8;
      r16 += ex;  // packed: the mantissa, and the exponent (< 32) in the low byte
      vbuf[2 * p + 1] = r16;
    }
  ln_norm_c:
    for (int c = 0; c < C; c++) {
      const data_t scale = e.scale >= 0 ? data_t(w0[e.scale + c]) : data_t(0);
      const int32_t bias = e.bias >= 0 ? rd32(w0, e.bias + 2L * c) : 0;
      const long a = r[V_A_ADDR] + (long)c * r[V_A_CSTRIDE] + p0;
      const long o = r[V_OUT_ADDR] + (long)c * r[V_OUT_CSTRIDE] + p0;
    ln_norm_p:
      for (int p = 0; p < np; p++) {
#pragma HLS PIPELINE II = 1
        const wide_t packed = vbuf[2 * p + 1];
        wide_t z = a0[a + p], rr = packed;
        rr >>= 8;
        z *= C;
        z -= vbuf[2 * p];
        z *= rr;
        z = align(z, g - (packed & 255).to_int());
        a1[o + p] = (amem_t)epilogue(z, e, scale, bias, data_t(0)).to_int();
      }
    }
  }
}

// element-wise records: copy/permute/concat, add, scatter-add, multiply, activations; GAP
static void run_vec(const int32_t* r, const int16_t* w0, const amem_t* a0, amem_t* a1,
                    int16_t act[2 * CEPD_ACT_SEGS], wide_t vbuf[CEPD_VBUF]) {
  const int vop = r[V_VOP];
  if (vop == VOP_RESAMPLE) return vec_resample(r, w0, a0, a1, vbuf);
  if (vop == VOP_LNORM) return vec_lnorm(r, w0, a0, a1, vbuf);
  const Epi e = read_epi(r);
  const int C = r[V_CHANNELS], hw = r[V_HW];
  const bool act_op = vop == VOP_ACT, two = vop == VOP_ADD2 || vop == VOP_MUL;
  if (act_op && r[V_FN] == FN_TABLE) {
  act_load:
    for (int i = 0; i < 2 * CEPD_ACT_SEGS; i++) {
#pragma HLS PIPELINE II = 1
      act[i] = w0[r[V_P_ADDR] + i];
    }
  }
vec_c:
  for (int c = 0; c < C; c++) {
    const int ca = r[V_A_MAP] >= 0 ? int(w0[r[V_A_MAP] + c]) : c;
    const int cb = two ? (r[V_B_MAP] >= 0 ? int(w0[r[V_B_MAP] + c]) : c) : -1;
    const data_t scale = e.scale >= 0 ? data_t(w0[e.scale + c]) : data_t(0);
    const int32_t bias = e.bias >= 0 ? rd32(w0, e.bias + 2L * c) : 0;
    const wide_t slope = act_op && r[V_FN] == FN_LEAKY ? wide_t(w0[r[V_P_ADDR] + c * r[V_P_STEP]]) : wide_t(0);
    const long abase = r[V_A_ADDR] + (long)ca * r[V_A_CSTRIDE];
    const long bbase = r[V_B_ADDR] + (long)cb * r[V_B_CSTRIDE];
    const long obase = r[V_OUT_ADDR] + (long)c * r[V_OUT_CSTRIDE];
    if (vop == VOP_GAP) {
      wide_t sum = 0;
    gap_p:
      for (int p = 0; p < hw; p++) {
#pragma HLS PIPELINE II = 1
        sum += a0[abase + p];
      }
      sum *= wide_t(r[V_GAP_MUL]);
      const wide_t v = rshift_round(sum, r[V_GAP_SHIFT]);
      const data_t res = e.res >= 0 ? data_t(a1[e.res + (long)c * e.res_cstride]) : data_t(0);
      a1[obase] = (amem_t)epilogue(v, e, scale, bias, res).to_int();
      continue;
    }
  vec_p:
    for (int p = 0; p < hw; p++) {
#pragma HLS PIPELINE II = 1
      wide_t v;
      if (vop == VOP_MUL) {  // b: one value per channel (broadcast) or one per element
        v = a0[abase + p];
        v *= wide_t(a1[bbase + (r[V_B_BCAST] ? 0 : p)]);
      } else if (act_op) {
        v = act_value(r, wide_t(a0[abase + p]), slope, act);
      } else {
        v = align(wide_t(a0[abase + p]), r[V_A_SHIFT]);
        if (cb >= 0) v += align(wide_t(a1[bbase + p]), r[V_B_SHIFT]);
      }
      const data_t res = e.res >= 0 ? data_t(a1[e.res + (long)c * e.res_cstride + p]) : data_t(0);
      a1[obase + p] = (amem_t)epilogue(v, e, scale, bias, res).to_int();
    }
  }
}

// ---------------------------------------------------------------------------------------------
static void read_record(const int16_t* w, long at, int32_t rec[CEPD_REC_WORDS]) {
rec_words:
  for (int i = 0; i < CEPD_REC_WORDS; i++) {
#pragma HLS PIPELINE II = 1
    rec[i] = rd32(w, at + 2L * i);
  }
}

// the status (arena word 0) and the records run (32 bits in the next words, least significant first)
static void set_status(amem_t* a, int status, long count) {
  const int wb = 8 * (int)sizeof(amem_t);
  a[0] = (amem_t)status;
status_count:
  for (int i = 0; i < 32 / wb; i++) a[1 + i] = (amem_t)((count >> (wb * i)) & ((1L << wb) - 1));
}

// The whole engine: check the blob header, then run records until END (or max_records).
static void cepd_run(const int16_t* w0, const int16_t* w1, amem_t* a0, amem_t* a1, int max_records) {
  static data_t ibuf0[CEPD_IBUF_HALF], ibuf1[CEPD_IBUF_HALF], scratch[CEPD_SCRATCH];
  static StepBufs sb;
  static int16_t act[2 * CEPD_ACT_SEGS];
  static wide_t vbuf[CEPD_VBUF];
#pragma HLS ARRAY_PARTITION variable = act cyclic factor = 2
#pragma HLS ARRAY_PARTITION variable = vbuf cyclic factor = CEPD_VEC_LANES
#pragma HLS ARRAY_PARTITION variable = ibuf0 cyclic factor = CEPD_LANES
#pragma HLS ARRAY_PARTITION variable = ibuf1 cyclic factor = CEPD_LANES
#pragma HLS ARRAY_PARTITION variable = scratch cyclic factor = CEPD_LANES
  if (rd32(w0, 2 * H_MAGIC) != CEPD_MAGIC) return set_status(a0, ST_BAD_MAGIC, 0);
  if (rd32(w0, 2 * H_VERSION) != CEPD_VERSION) return set_status(a0, ST_BAD_VERSION, 0);
  if (rd32(w0, 2 * H_BITS) != CEPD_BITS) return set_status(a0, ST_BAD_BITS, 0);
  if (rd32(w0, 2 * H_HW_HASH) != CEPD_HW_HASH) return set_status(a0, ST_BAD_HASH, 0);
  const long prog = rd32(w0, 2 * H_PROG_OFF);
  const long n_records = rd32(w0, 2 * H_N_RECORDS);
  int32_t rec[CEPD_REC_WORDS];
  int32_t loads[CEPD_MAX_LOADS][CEPD_REC_WORDS], comps[CEPD_MAX_COMPS][CEPD_REC_WORDS];
  long pc = 0;
records:
  while (pc < n_records) {
    if (max_records > 0 && pc >= max_records) return set_status(a0, ST_OK, pc);
    read_record(w0, prog + 2L * CEPD_REC_WORDS * pc, rec);
    pc++;
    const int kind = rec[0];
    if (kind == K_END) break;
    if (kind == K_VEC) {
      run_vec(rec, w0, a0, a1, act, vbuf);
      continue;
    }
    if (kind != K_BUNDLE) return set_status(a0, ST_BAD_RECORD, pc);
    const int nl = rec[B_N_LOAD], nc = rec[B_N_COMP], parity = rec[B_PARITY];
    if (nl > CEPD_MAX_LOADS || nc > CEPD_MAX_COMPS) return set_status(a0, ST_TOO_BIG, pc);
    for (int i = 0; i < nl; i++) read_record(w0, prog + 2L * CEPD_REC_WORDS * (pc + i), loads[i]);
    for (int i = 0; i < nc; i++) read_record(w0, prog + 2L * CEPD_REC_WORDS * (pc + nl + i), comps[i]);
    for (int i = 0; i < nl; i++)
      if (loads[i][0] != K_LOAD || loads[i][L_HALF] != parity) return set_status(a0, ST_HAZARD, pc);
    for (int i = 0; i < nc; i++) {
      if (comps[i][0] != K_STEP) return set_status(a0, ST_BAD_RECORD, pc);
      const bool reads_ibuf = comps[i][S_SRC_BUF] == BUF_IBUF;
      if (nl > 0 && reads_ibuf && (comps[i][S_SRC_SPLIT] >= 0 || comps[i][S_SRC_HALF] == parity))
        return set_status(a0, ST_HAZARD, pc);
    }
    pc += nl + nc;
    // the loads fill half `parity` while the steps read the other half and the scratch
    // (concurrent in hardware: different memories; checked above)
    if (parity) {
      for (int i = 0; i < nl; i++) load_tile(loads[i], ibuf1, w0, w1, a0, a1);
      run_steps(comps, nc, ibuf0, ibuf1, scratch, w0, w1, a0, a1, sb);
    } else {
      for (int i = 0; i < nl; i++) load_tile(loads[i], ibuf0, w0, w1, a0, a1);
      run_steps(comps, nc, ibuf0, ibuf1, scratch, w0, w1, a0, a1, sb);
    }
  }
  set_status(a0, ST_OK, pc);
}

#endif
