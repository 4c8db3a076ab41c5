#ifndef UNIBUS_CZSTD_SHIM_H
#define UNIBUS_CZSTD_SHIM_H
#include <zstd.h>
#endif
