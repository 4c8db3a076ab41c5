#ifndef UNIBUS_CSODIUM_SHIM_H
#define UNIBUS_CSODIUM_SHIM_H
#include <sodium.h>
#endif
