/*
 * seg.cc - DICOM SEG of organ label maps (dcm_write_seg, dicom.h).
 */
#include "dicom/dicom.h"
