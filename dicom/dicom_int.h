/*
 * dicom_int.h - internals shared by the dicom layer's C++ files.
 */
#ifndef CTGLIP_DICOM_INT_H
#define CTGLIP_DICOM_INT_H

#include "dicom.h"

/* Our implementation class UID (a 2.25 UUID-derived root) and version name
 * (at most 16 characters), written into every file meta header we create. */
#define CTG_IMPLEMENTATION_UID "2.25.231932228033936708469927392542703984207"
#define CTG_IMPLEMENTATION_NAME "CTGLIP_010"

class DcmTLSTransportLayer;

/* Process-wide DCMTK set-up, run once through dcm_global_init(). */
void dcm__init_once(void);
/* Builds a TLS transport layer from the config; logs and returns
 * CTG_ECONFIG on bad files.  The caller owns *out. */
int dcm__tls_layer(const dcm_tls_config *t, int acceptor, DcmTLSTransportLayer **out);

#endif
