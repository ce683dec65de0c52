// cepd_top.h: the engine's top function (defined in the generated cepd_top.cpp).
#ifndef CEPD_TOP_H
#define CEPD_TOP_H
#include <stdint.h>

#include "cepd_config.h"

// the blob (16-bit words) and the activation arena (amem_t: 8-bit words in the 8-bit engine)
void cepd_engine(const int16_t* wmem0, const int16_t* wmem1, amem_t* amem0, amem_t* amem1, int max_records);

#endif
