// cepd_top.h: the engine's top function (defined in the generated cepd_top.cpp).
#ifndef CEPD_TOP_H
#define CEPD_TOP_H
#include <stdint.h>

void cepd_engine(const int16_t* wmem0, const int16_t* wmem1, int16_t* amem0, int16_t* amem1, int max_records);

#endif
