/*
 * test_analysis.c - study analysis (core/analysis.h).
 */
#include "tests.h"

const test_case analysis_tests[] = {
    {NULL, NULL},
};
