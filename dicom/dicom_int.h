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
class DcmFileFormat;

/* Process-wide DCMTK set-up, run once through dcm_global_init(). */
void dcm__init_once(void);
/* Builds a TLS transport layer from the config; logs and returns
 * CTG_ECONFIG on bad files.  The caller owns *out. */
int dcm__tls_layer(const dcm_tls_config *t, int acceptor, DcmTLSTransportLayer **out);

/* Helpers of the derived-object writers (defined in seg.cc, used by sr.cc too). */
/* A new UID: "2.25." and a random 128-bit number (version-4 UUID form),
 * at most 44 characters. */
void dcm__uid_random(char out[65]);
/* Durable write of ff in explicit VR little endian with our implementation
 * UID in the meta header: a temp file beside path, fsync, rename, fsync of
 * the folder.  Returns 0 or CTG_E* with the reason in why. */
int dcm__save_file(DcmFileFormat &ff, const char *path, char *why, size_t n);

/* One write call's error state: the first error wins, later ones would
 * only repeat it.  dcm__fail_why records err and the formatted reason (in
 * why, n bytes, when set) unless an error is already there, and returns the
 * recorded error. */
struct DcmWhy {
    int err = 0;
    char *why = nullptr;
    size_t n = 0;
};
int dcm__fail_why(DcmWhy &c, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* PS3.5 9.1: digits and dots, no empty component, no leading zero in a
 * component of more than one digit, at most 64 characters (NULL: false). */
bool dcm__uid_ok(const char *u);
/* Writes ff (meta header and data set in transfer syntax xfer, an
 * E_TransferSyntax) to tmp through a descriptor of our own, fsyncs and
 * closes it and renames it to path; on failure tmp is removed.  The caller
 * fsyncs the directory.  0 or a CTG_E* code with the reason in why (n
 * bytes). */
int dcm__write_durable(DcmFileFormat &ff, const char *tmp, const char *path, int xfer, char *why,
                       size_t n);

#endif
