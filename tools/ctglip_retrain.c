/*
 * ctglip_retrain.c - main() of `ctglip-retrain` (tools/retrain.c).
 */
#include "tools/retrain.h"

int main(int argc, char **argv) { return ctg_retrain_main(argc, argv); }
