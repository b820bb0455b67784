/*
 * sr.cc - TID 1500 Measurement Report SR (dcm_write_sr, dicom.h).
 */
#include "dicom/dicom.h"
