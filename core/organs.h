/*
 * organs.h - TotalSegmentator's anatomical classes as ctglip uses them: label
 * ids of the v2 "total" task (1..117), names, SNOMED CT codes for DICOM SEG
 * and SR, and display colours.  Part of core/'s public interface; the table
 * is generated (core/totalseg.c, scripts/gen_totalseg.py).  v1 label maps
 * (104 classes) are mapped to v2 ids by name.
 *
 * Threading: read-only tables, safe everywhere.
 */
#ifndef CTGLIP_ORGANS_H
#define CTGLIP_ORGANS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CTG_NUM_ORGANS 117    /* v2 classes, ids 1..117 */
#define CTG_NUM_ORGANS_V1 104 /* v1 classes, ids 1..104 */

typedef struct ctg_organ {
    int id;                    /* v2 label id; 0 = background */
    const char *name;          /* TotalSegmentator name, e.g. "kidney_left" */
    const char *category_code; /* SNOMED CT, SegmentedPropertyCategory */
    const char *category_meaning;
    const char *type_code;     /* SNOMED CT, SegmentedPropertyType */
    const char *type_meaning;
    const char *modifier_code; /* laterality; "" when none */
    const char *modifier_meaning;
    uint8_t rgb[3];            /* display colour */
} ctg_organ;

/* Indexed by v2 label id (0..CTG_NUM_ORGANS). */
extern const ctg_organ ctg_organs_v2[CTG_NUM_ORGANS + 1];
/* Indexed by v1 label id (0..CTG_NUM_ORGANS_V1). */
extern const char *const ctg_organs_v1_names[CTG_NUM_ORGANS_V1 + 1];

/* The v2 id of a structure name, or -1. */
int ctg_organ_id(const char *name);
/* The organ of a v2 id, or NULL when out of range. */
const ctg_organ *ctg_organ_get(int id);
/* Fills map[0..CTG_NUM_ORGANS_V1] with the v2 id of each v1 id (0 where v2
 * has no such structure), for reading v1 label maps. */
void ctg_organs_v1_to_v2(uint8_t map[CTG_NUM_ORGANS_V1 + 1]);

#ifdef __cplusplus
}
#endif
#endif
