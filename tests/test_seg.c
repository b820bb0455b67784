/*
 * test_seg.c - DICOM SEG writer (dicom/seg.cc).
 */
#include "tests.h"

const test_case seg_tests[] = {
    {NULL, NULL},
};
