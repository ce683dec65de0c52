// cepd_sim.cpp: the engine as a shared library that behaves like the IP behind its AXI-Lite
// registers, so the generated driver.py can run its data path against the C-simulation (ctypes)
// instead of the FPGA. Buffers are registered with a fake physical address (like pynq.allocate).
#include <cstring>
#include <vector>

#include "cepd_config.h"
#include "cepd_top.h"

namespace {
struct Mapping {
  uint64_t phys, bytes;
  char* host;
};
std::vector<Mapping> maps;
uint32_t regs[64];
bool done = false;

void* resolve(uint64_t phys) {
  for (const Mapping& m : maps)
    if (phys >= m.phys && phys < m.phys + m.bytes) return m.host + (phys - m.phys);
  return nullptr;
}

uint64_t reg64(uint32_t off) { return (uint64_t)regs[off / 4] | ((uint64_t)regs[off / 4 + 1] << 32); }
}  // namespace

extern "C" {

// register a host buffer under a physical address; returns 0 (or -1 if it overlaps another)
int cepd_sim_map(uint64_t phys, void* host, uint64_t bytes) {
  for (const Mapping& m : maps)
    if (phys < m.phys + m.bytes && m.phys < phys + bytes) return -1;
  maps.push_back(Mapping{phys, bytes, (char*)host});
  return 0;
}

void cepd_sim_reset() {
  maps.clear();
  std::memset(regs, 0, sizeof regs);
  done = false;
}

// an AXI-Lite write; writing ap_start runs the engine to completion (synchronously)
int cepd_sim_write(uint32_t off, uint32_t value) {
  if (off % 4 || off / 4 >= 64) return -1;
  regs[off / 4] = value;
  if (off == CEPD_REG_CTRL && (value & 1)) {
    const int16_t* w0 = (const int16_t*)resolve(reg64(CEPD_REG_WMEM0));
    const int16_t* w1 = (const int16_t*)resolve(reg64(CEPD_REG_WMEM1));
    amem_t* a0 = (amem_t*)resolve(reg64(CEPD_REG_AMEM0));
    amem_t* a1 = (amem_t*)resolve(reg64(CEPD_REG_AMEM1));
    if (!w0 || !w1 || !a0 || !a1) return -2;
    cepd_engine(w0, w1, a0, a1, (int)regs[CEPD_REG_MAX_RECORDS / 4]);
    done = true;
  }
  return 0;
}

// an AXI-Lite read; CTRL reports ap_idle, and ap_done once (clear on read, like the IP)
uint32_t cepd_sim_read(uint32_t off) {
  if (off == CEPD_REG_CTRL) {
    uint32_t v = 0x4 | (done ? 0x2 : 0);
    done = false;
    return v;
  }
  return off % 4 == 0 && off / 4 < 64 ? regs[off / 4] : 0;
}
}
