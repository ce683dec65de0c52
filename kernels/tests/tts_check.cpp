// The kernel's numerics check without Python: runs the layers of a case file (written by
// tests/test_kernel_aarch64.py from the Plan's reference interpreter) on every tile build this
// CPU runs, at 1 and 2 threads, and prints each run's error against the reference output. Built
// and run by that test for AArch64 under qemu-aarch64 (user-mode emulation) and for the host.
//
//   tts_check CASES    (prints "isa <names>", then one "case ..." line per run, then "done <runs>")
//
// Case file (little-endian): "CEPDTTS1", int64 cases; per case, int64 fields: Winograd mode
// (cepd_tts_use_winograd), batch, then arrays as (int64 count, values): desc (int64), the
// weights (int64 count of arrays, then each as float32), index (int64), x, residual (count 0:
// none) and the reference y (float32).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

extern "C" {
void* cepd_tts_create(const int64_t* desc, const float* const* weights, const int64_t* index);
void cepd_tts_destroy(void* handle);
int cepd_tts_run(void* handle, const float* x, const float* residual, float* y, int n);
void cepd_tts_set_threads(int n);
int cepd_tts_isa_builds();
int cepd_tts_cpu_isa();
int cepd_tts_use_isa(int level);
const char* cepd_tts_isa_names();
void cepd_tts_use_winograd(int mode);
int cepd_tts_winograd(void* handle);
}

namespace {

struct Reader {
  FILE* f;
  bool ok = true;
  int64_t i64() {
    int64_t v = 0;
    ok = ok && std::fread(&v, sizeof v, 1, f) == 1;
    return v;
  }
  template <class T>
  std::vector<T> array() {
    const int64_t n = i64();
    if (!ok || n < 0 || n > (int64_t(1) << 28)) return ok = false, std::vector<T>();
    std::vector<T> v(static_cast<size_t>(n));
    ok = ok && std::fread(v.data(), sizeof(T), v.size(), f) == v.size();
    return v;
  }
};

struct Case {
  int64_t winograd = 1, batch = 1;
  std::vector<int64_t> desc, index;
  std::vector<std::vector<float>> weights;
  std::vector<float> x, residual, ref;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t a = 0;
  while (a < s.size()) {
    size_t b = s.find(' ', a);
    if (b == std::string::npos) b = s.size();
    if (b > a) out.push_back(s.substr(a, b - a));
    a = b + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CASES\n", argv[0]);
    return 2;
  }
  FILE* f = std::fopen(argv[1], "rb");
  if (!f) {
    std::fprintf(stderr, "cannot open %s\n", argv[1]);
    return 2;
  }
  Reader r{f};
  char magic[8];
  if (std::fread(magic, 1, 8, f) != 8 || std::memcmp(magic, "CEPDTTS1", 8) != 0) {
    std::fprintf(stderr, "%s: not a case file\n", argv[1]);
    return 2;
  }
  std::vector<Case> cases(size_t(r.i64()));
  for (Case& c : cases) {
    c.winograd = r.i64();
    c.batch = r.i64();
    c.desc = r.array<int64_t>();
    c.weights.resize(size_t(r.i64()));
    for (auto& w : c.weights) w = r.array<float>();
    c.index = r.array<int64_t>();
    c.x = r.array<float>();
    c.residual = r.array<float>();
    c.ref = r.array<float>();
  }
  std::fclose(f);
  if (!r.ok) {
    std::fprintf(stderr, "%s: truncated or malformed\n", argv[1]);
    return 2;
  }
  const std::vector<std::string> names = split(cepd_tts_isa_names());
  std::printf("isa %s\n", cepd_tts_isa_names());
  int runs = 0;
  for (int level = 0; level <= cepd_tts_cpu_isa(); ++level) {
    if (!((cepd_tts_isa_builds() >> level) & 1) || cepd_tts_use_isa(level) != 0) continue;
    for (int threads = 1; threads <= 2; ++threads) {
      cepd_tts_set_threads(threads);
      for (size_t i = 0; i < cases.size(); ++i) {
        const Case& c = cases[i];
        cepd_tts_use_winograd(int(c.winograd));
        std::vector<const float*> w;
        for (const auto& v : c.weights) w.push_back(v.data());
        void* layer = cepd_tts_create(c.desc.data(), w.data(), c.index.data());
        std::vector<float> y(c.ref.size(), NAN);
        double err = 0, ref = 0;
        int rc = 0;
        for (int rep = 0; rep < 2; ++rep) {  // the layer's workspace is reused
          std::fill(y.begin(), y.end(), NAN);
          rc |= cepd_tts_run(layer, c.x.data(), c.residual.empty() ? nullptr : c.residual.data(), y.data(),
                             int(c.batch));
          for (size_t j = 0; j < y.size(); ++j) {
            const double d = std::fabs(double(y[j]) - c.ref[j]);
            if (!(d <= err)) err = std::isnan(d) ? INFINITY : d;  // a NaN counts as infinite
            ref = std::max(ref, std::fabs(double(c.ref[j])));
          }
        }
        std::printf("case %zu isa %s threads %d winograd %d rc %d max_abs_err %.9g max_abs_ref %.9g\n", i,
                    names[size_t(level)].c_str(), threads, cepd_tts_winograd(layer), rc, err, ref);
        cepd_tts_destroy(layer);
        ++runs;
      }
    }
  }
  std::printf("done %d\n", runs);
  return 0;
}
