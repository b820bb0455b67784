/*
 * test_outbox.c - export outbox (store/).
 */
#include "tests.h"

const test_case outbox_tests[] = {
    {NULL, NULL},
};
