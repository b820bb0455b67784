/*
 * test_sr.c - TID 1500 SR writer (dicom/sr.cc).
 */
#include "tests.h"

const test_case sr_tests[] = {
    {NULL, NULL},
};
