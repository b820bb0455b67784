/*
 * organs.c - lookups over the TotalSegmentator class tables in totalseg.c.
 * Read-only data; thread-safe.
 */
#include <string.h>

#include "organs.h"

int ctg_organ_id(const char *name)
{
    if (!name) return -1;
    for (int i = 1; i <= CTG_NUM_ORGANS; i++)
        if (strcmp(ctg_organs_v2[i].name, name) == 0) return i;
    return -1;
}

const ctg_organ *ctg_organ_get(int id)
{
    if (id < 0 || id > CTG_NUM_ORGANS) return NULL;
    return &ctg_organs_v2[id];
}

void ctg_organs_v1_to_v2(uint8_t map[CTG_NUM_ORGANS_V1 + 1])
{
    map[0] = 0;
    for (int i = 1; i <= CTG_NUM_ORGANS_V1; i++) {
        int id = ctg_organ_id(ctg_organs_v1_names[i]);
        map[i] = (uint8_t)(id > 0 ? id : 0);
    }
}
