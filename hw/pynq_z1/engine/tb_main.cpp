// tb_main.cpp: C-simulation testbench. Runs the engine on the golden input images and writes
// its outputs; the Python side (or `make csim`) compares them with the golden outputs.
//
//   tb BLOB INPUT OUTPUT N_IMAGES [ARENA_DUMP]
//
// BLOB: the weight blob; INPUT: N_IMAGES x in_words int16 (quantised images); OUTPUT: written,
// N_IMAGES x out_words int16; ARENA_DUMP: the arena after the last image (debugging).
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cepd_config.h"
#include "cepd_top.h"
#include "model_info.h"

static std::vector<int16_t> read_words(const char* path) {
  std::vector<int16_t> v;
  FILE* f = std::fopen(path, "rb");
  if (!f) return v;
  std::fseek(f, 0, SEEK_END);
  const long n = std::ftell(f) / 2;
  std::fseek(f, 0, SEEK_SET);
  v.resize(n);
  if (std::fread(v.data(), 2, n, f) != (size_t)n) v.clear();
  std::fclose(f);
  return v;
}

static int32_t hdr(const std::vector<int16_t>& b, int field) {
  return (int32_t)((uint32_t)(uint16_t)b[2 * field] | ((uint32_t)(uint16_t)b[2 * field + 1] << 16));
}

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s BLOB INPUT OUTPUT N_IMAGES [ARENA_DUMP]\n", argv[0]);
    return 2;
  }
  std::printf("cepd csim: model %s, %d ops (%s ... %s)\n", CEPD_MODEL_LABEL, CEPD_N_OPS,
              CEPD_N_OPS ? CEPD_OP_NAMES[0] : "", CEPD_N_OPS ? CEPD_OP_NAMES[CEPD_N_OPS - 1] : "");
  std::vector<int16_t> blob = read_words(argv[1]);
  std::vector<int16_t> input = read_words(argv[2]);
  const int n = std::atoi(argv[4]);
  if (blob.size() < CEPD_HEADER_WORDS) {
    std::fprintf(stderr, "cannot read the blob %s\n", argv[1]);
    return 1;
  }
  const long arena_words = hdr(blob, H_ARENA_WORDS), in_off = hdr(blob, H_IN_OFF);
  const long in_words = hdr(blob, H_IN_WORDS), out_off = hdr(blob, H_OUT_OFF);
  const long out_words = hdr(blob, H_OUT_WORDS);
  if ((long)input.size() < n * in_words) {
    std::fprintf(stderr, "input holds %zu words, %d images need %ld\n", input.size(), n, n * in_words);
    return 1;
  }
  // the arena holds amem_t words (bytes in the 8-bit engine); the files hold int16 words
  std::vector<amem_t> arena(arena_words, 0);
  std::vector<int16_t> output(n * out_words, 0);
  const int wb = 8 * (int)sizeof(amem_t);
  for (int i = 0; i < n; i++) {
    for (long k = 0; k < in_words; k++) arena[in_off + k] = (amem_t)input[i * in_words + k];
    cepd_engine(blob.data(), blob.data(), arena.data(), arena.data(), 0);
    if (arena[0] != ST_OK) {
      long rec = 0;
      for (int k = 0; k < 32 / wb; k++) rec |= (long)(arena[1 + k] & ((1L << wb) - 1)) << (wb * k);
      std::fprintf(stderr, "image %d: engine status %d after %ld records\n", i, (int)arena[0], rec);
      return 1;
    }
    for (long k = 0; k < out_words; k++) output[i * out_words + k] = arena[out_off + k];
  }
  FILE* f = std::fopen(argv[3], "wb");
  if (!f || std::fwrite(output.data(), 2, output.size(), f) != output.size()) {
    std::fprintf(stderr, "cannot write %s\n", argv[3]);
    return 1;
  }
  std::fclose(f);
  if (argc > 5) {
    FILE* d = std::fopen(argv[5], "wb");
    if (d) {
      std::fwrite(arena.data(), sizeof(amem_t), arena.size(), d);
      std::fclose(d);
    }
  }
  std::printf("cepd csim: %d images done\n", n);
  return 0;
}
