/*
 * dicom.h - ctglip's DICOM layer: DCMTK behind a pure C interface.
 *
 * SCP: C-ECHO and C-STORE over plain TCP and/or TLS, one thread per
 * association.  Policy (who may connect, where files go) stays with the
 * caller through dcm_scp_hooks; this layer speaks the protocol, streams each
 * data set byte for byte into a file descriptor the caller provides, parses
 * its header and sends the status the caller decides.
 *
 * SCU: C-ECHO and sending files unchanged (the data set bytes of the file go
 * on the wire as they are, which is what a forwarder and the fault tests
 * need).
 *
 * Threading: hooks are called from association threads, concurrently.  No
 * C++ type or exception crosses this header.
 */
#ifndef CTGLIP_DICOM_H
#define CTGLIP_DICOM_H

#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"
#include "../core/vol.h"

#ifdef __cplusplus
extern "C" {
#endif

/* DIMSE status codes used by the SCP. */
enum {
    DCM_STATUS_SUCCESS = 0x0000,
    DCM_STATUS_WARN_COERCION = 0xB000,
    DCM_STATUS_OUT_OF_RESOURCES = 0xA700,
    DCM_STATUS_DATASET_MISMATCH = 0xA900,
    DCM_STATUS_CANNOT_UNDERSTAND = 0xC000,
    DCM_STATUS_PROCESSING_FAILURE = 0x0110,
    DCM_STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122,
};

typedef struct dcm_tls_config {
    const char *certificate; /* PEM */
    const char *private_key; /* PEM, unencrypted */
    const char *ca_file;     /* PEM bundle of trusted CAs; may be NULL */
    int verify_peer;         /* 1: the peer must present a trusted cert */
    const char *profile;     /* "bcp195" (default), "bcp195-nd", "bcp195-ex" */
} dcm_tls_config;

typedef struct dcm_assoc_info {
    unsigned id;          /* per-process association number, for logs */
    char calling_ae[17];
    char called_ae[17];
    char peer[64];        /* numeric peer address */
    int tls;              /* arrived on the TLS listener */
} dcm_assoc_info;

/* What admit() may answer. */
enum {
    DCM_ADMIT = 0,
    DCM_REJECT_CALLED_AE,  /* permanent, called AE title not recognised */
    DCM_REJECT_CALLING_AE, /* permanent, calling AE title not recognised */
    DCM_REJECT_NO_REASON,  /* permanent, e.g. address not allowed */
    DCM_REJECT_BUSY,       /* transient, local limit exceeded */
};

typedef struct dcm_scp_hooks {
    void *ud;
    /* Admission of a new association.  Return DCM_ADMIT or a DCM_REJECT_*
     * code; why (n bytes) receives the reason for the log. */
    int (*admit)(void *ud, const dcm_assoc_info *a, char *why, size_t n);
    /* Called once for every admitted association when it ends. */
    void (*closed)(void *ud, const dcm_assoc_info *a);
    /* A C-STORE request arrived (before its data set).  Return 0 with *fd
     * and path (PATH_MAX bytes) set to an empty file the data set should go
     * to, or a DIMSE failure status (the data set is then read and thrown
     * away).  why receives a short reason for the peer and the log. */
    unsigned (*store_begin)(void *ud, const dcm_assoc_info *a,
                            const char *sop_class, const char *sop_uid,
                            char *path, int *fd, char *why, size_t n);
    /* The data set is in the file (meta header, then the data set from
     * byte data_offset on, as received) and its header parsed.  The hook
     * owns path and fd from here on and returns the DIMSE status to send. */
    unsigned (*store_end)(void *ud, const dcm_assoc_info *a,
                          const ctg_instance *inst, const char *path, int fd,
                          uint64_t data_offset, uint64_t size, char *why,
                          size_t n);
    /* The receive failed after store_begin: the hook removes path, closes
     * fd.  The SCP answers with failure (or aborts a broken association). */
    void (*store_abort)(void *ud, const char *path, int fd);
} dcm_scp_hooks;

typedef struct dcm_scp_config {
    const char *ae_title;   /* our AE title */
    int port;               /* plain listener; 0 = none */
    int tls_port;           /* TLS listener; 0 = none */
    dcm_tls_config tls;
    int max_pdu;            /* receive PDU size */
    int acse_timeout;       /* seconds for association set-up */
    int dimse_timeout;      /* seconds between PDUs inside a message */
    int idle_timeout;       /* seconds without a command before abort */
    uint64_t max_instance_bytes; /* larger data sets are refused (0xA700) */
} dcm_scp_config;

typedef struct dcm_scp dcm_scp;

/* One-time process set-up of DCMTK (codecs, no reverse DNS, quiet
 * logging); safe to call more than once. */
void dcm_global_init(void);
/* Silences DCMTK's own logger below fatal errors (fuzzing, tests that feed
 * thousands of broken files); our own log lines carry the reasons. */
void dcm_quiet(void);

/* Opens the listeners and starts accepting.  The hooks struct is copied.
 * Returns 0 or an error (port in use, TLS files unreadable: logged). */
int dcm_scp_start(const dcm_scp_config *cfg, const dcm_scp_hooks *hooks,
                  dcm_scp **out);
/* New timeouts apply to associations that start afterwards, and to the idle
 * and DIMSE timeouts of running ones. */
void dcm_scp_set_timeouts(dcm_scp *scp, int acse, int dimse, int idle);
/* Stops accepting; running associations go on. */
void dcm_scp_stop_accepting(dcm_scp *scp);
/* Number of associations in progress. */
int dcm_scp_active(dcm_scp *scp);
/* Asks running associations to abort at their next message boundary. */
void dcm_scp_abort_all(dcm_scp *scp);
/* Waits for the listener threads, then frees.  Call after active() is 0. */
void dcm_scp_free(dcm_scp *scp);

/* Reads the header of a DICOM file (Part 10, pixel data not loaded) into
 * *out.  Returns 0, or CTG_EDICOM with a reason in why. */
int dcm_read_instance(const char *path, ctg_instance *out, char *why,
                      size_t n);

/* A file the SCP has just written, described by what it still holds in
 * memory, so that its header can be parsed without reading the file back.
 * The file is `size` bytes: the meta header, then the data set from
 * data_offset on, in transfer syntax xfer (a UID).  head holds file bytes
 * [0, head_len); tail (may be NULL) holds [tail_off, tail_off + tail_len);
 * any other byte the parse needs is read from path. */
typedef struct dcm_rx_file {
    const char *path;
    uint64_t size, data_offset;
    const unsigned char *head;
    size_t head_len;
    const unsigned char *tail;
    uint64_t tail_off;
    size_t tail_len;
    const char *xfer;
} dcm_rx_file;
/* Parses the data set of f as dcm_read_instance() parses a file: the whole
 * structure is checked, values longer than 4 KiB (pixel data) are skipped,
 * not read.  0, or CTG_EDICOM with a reason in why. */
int dcm_parse_received(const dcm_rx_file *f, ctg_instance *out, char *why, size_t n);

/* ---- SCU ------------------------------------------------------------------ */

typedef struct dcm_peer {
    const char *host;
    int port;
    const char *called_ae;
    const char *calling_ae;
    const dcm_tls_config *tls; /* NULL: plain TCP */
    int timeout;               /* seconds for connect, ACSE and DIMSE */
} dcm_peer;

/* C-ECHO.  Returns 0 on success or CTG_EDICOM with the reason in why. */
int dcm_echo(const dcm_peer *peer, char *why, size_t n);

/* Sends files over one association, each data set as stored in the file.
 * status[i] receives the DIMSE status, or -1 when the file could not be sent
 * (not readable, no accepted presentation context).  Returns 0 when the
 * association worked (individual statuses may still be failures). */
int dcm_send_files(const dcm_peer *peer, const char *const *files, int nfiles,
                   int *status, char *why, size_t n);

/* ---- series to volume ------------------------------------------------------ */

typedef struct dcm_vol_opts {
    /* Missing slices (a gap of k times the usual spacing): 0 rejects the
     * series; 1 fills gaps of up to max_fill slices by linear interpolation
     * of the neighbours (and says so in info->filled). */
    int fill_missing;
    int max_fill;            /* default 2 when 0 */
    /* Relative spacing tolerance between consecutive slices; default 0.05
     * when 0. */
    double spacing_tolerance;
    /* Use this series; NULL or "" picks the primary CT series. */
    const char *series_uid;
    /* Refuse volumes with more voxels than this (0: 1024*1024*2048). */
    uint64_t max_voxels;
} dcm_vol_opts;

typedef struct dcm_vol_info {
    char study_uid[65];
    char series_uid[65];
    char frame_of_ref_uid[65];
    char sop_class[65];
    char series_desc[65];
    char patient_position[17];
    int series_number;
    int nslices;           /* slices in the volume (filled ones included) */
    int filled;            /* slices made up by interpolation */
    int nseries;           /* series seen in the input */
    double slice_spacing;  /* mm between slice centres */
    int enhanced;          /* read from a multi-frame Enhanced CT object */
    /* Where each acquisition slice came from (0..nslices-1): the SOP
     * Instance UID and the 1-based frame number (1 for single-frame
     * images); "" and 0 for a filled slice.  Listed in increasing order
     * along the canonical axis the slice normal became: k for an axial
     * series (the usual case), i or j for the coronal or sagittal series
     * used when a study has no axial one.  Owned, freed by
     * dcm_vol_info_free; NULL after a failure, when only nseries and
     * skipped are set. */
    char (*slice_sop)[65];
    int *slice_frame;
    int slice_axis;        /* the canonical axis (0 i, 1 j, 2 k) the records run along */
    /* One line per series that was not chosen, with the reason
     * ("1.2.3: localizer (ImageType LOCALIZER)"); truncated to fit. */
    char skipped[1024];
} dcm_vol_info;

/* Builds a CT volume in Hounsfield units from the files of one study
 * (any order, any mix of series; non-image objects are skipped):
 *   - picks the primary series: CT or Enhanced CT, ORIGINAL\PRIMARY (no
 *     localizer, derived/secondary image or dose report), one orientation,
 *     axial first, then the most slices; opts->series_uid overrides;
 *   - sorts slices by position along the slice normal (never by Instance
 *     Number), checks spacing (missing slices: reject or fill per opts;
 *     gantry tilt, i.e. slice positions stepping off the normal by more
 *     than 0.5 degrees, or mixed orientation/size: reject).  A tilt that
 *     the scanner folded into ImageOrientation leaves a rectangular grid
 *     that the affine describes exactly and is accepted;
 *   - decodes uncompressed, JPEG lossless, JPEG-LS and RLE pixel data
 *     through DCMTK's codecs (JPEG 2000: rejected with a reason);
 *   - applies Rescale Slope/Intercept (per frame for Enhanced CT);
 *   - returns a CTG_F32 volume in the canonical orientation of core/vol.h.
 * *out and info's arrays are new; info may be NULL.  Returns 0, or
 * CTG_EREJECT / CTG_EFORMAT / CTG_EIO / CTG_ENOMEM with the reason in why
 * (one line a radiologist or admin can act on). */
int dcm_series_volume(const char *const *paths, size_t npaths,
                      const dcm_vol_opts *opts, ctg_vol **out,
                      dcm_vol_info *info, char *why, size_t n);
void dcm_vol_info_free(dcm_vol_info *info); /* NULL: no-op */

/* ---- writing CT series (phantoms, tests, benchmarks) ---------------------- */

enum dcm_ts {
    DCM_TS_EXPLICIT_LE = 0, /* 1.2.840.10008.1.2.1 */
    DCM_TS_IMPLICIT_LE,     /* 1.2.840.10008.1.2 */
    DCM_TS_JPEG_LOSSLESS,   /* 1.2.840.10008.1.2.4.70 (process 14, SV1) */
    DCM_TS_JPEGLS_LOSSLESS, /* 1.2.840.10008.1.2.4.80 */
    DCM_TS_RLE,             /* 1.2.840.10008.1.2.5 */
};

typedef struct dcm_ct_meta {
    const char *patient_name, *patient_id, *patient_birth_date, *patient_sex;
    const char *study_uid, *series_uid, *frame_of_ref_uid;
    const char *study_date, *study_time, *accession, *study_desc;
    /* Instance Creation Date/Time; NULL: the clock.  Given, two runs with
     * the same input write identical files. */
    const char *creation_date, *creation_time;
    const char *series_desc, *body_part;
    const char *patient_position; /* "HFS", "FFS", "HFP", "FFP" */
    const char *image_type;       /* NULL: "ORIGINAL\\PRIMARY\\AXIAL" */
    int series_number;
    double slice_thickness;       /* mm; 0: the slice spacing */
    int pixel_signed;   /* 1: signed pixels, intercept 0;
                           0: unsigned pixels, intercept -1024 */
    int transfer_syntax;          /* enum dcm_ts */
    int enhanced;       /* 1: one multi-frame Enhanced CT Image object */
    /* SOP Instance UIDs are sop_uid_prefix + "." + (k+1); NULL: the
     * series UID is used as the prefix. */
    const char *sop_uid_prefix;
} dcm_ct_meta;

/* Writes vol (CTG_F32 or CTG_I16, values in HU) as a CT series into dir
 * (created if needed): one file per slice k (dir/CT%04d.dcm, k+1) or one
 * Enhanced CT file (dir/CT0001.dcm).  The volume's grid is the acquisition
 * grid: i runs along a row (ImageOrientation's first vector = aff column
 * i), j down the columns, k is the slice index; ImagePositionPatient of
 * slice k = aff * (0,0,k).  HU values are rounded to the stored integer
 * representation (NaN becomes air).  Study, series and frame of reference
 * UIDs left NULL are generated ("2.25." + a random 128-bit number).
 * Returns 0 or CTG_E* with the reason in why. */
int dcm_write_ct_series(const char *dir, const ctg_vol *vol,
                        const dcm_ct_meta *meta, char *why, size_t n);


/* ---- derived objects: DICOM SEG and TID 1500 SR (seg.cc, sr.cc) ----------- */

/* A coded concept; value NULL or "" means none. */
typedef struct dcm_code {
    const char *value, *scheme, *meaning; /* e.g. "10200004", "SCT", "Liver" */
} dcm_code;

/* Who made a derived object: the equipment and the model. */
typedef struct dcm_equipment {
    const char *manufacturer;     /* "ctglip" */
    const char *software_version; /* ctglip's version */
    const char *model_name;       /* algorithm name, e.g. "ctglip CT-GLIP default" */
    const char *model_version;    /* the model's identity, SHA-256 hex (64 chars) */
    const char *device_uid;       /* UID derived from the model checksum (dcm_uid_from_hex) */
    const char *institution;      /* may be NULL */
    /* Content/Instance Creation Date (YYYYMMDD) and Time (HHMMSS); NULL:
     * the clock.  Given, two runs with the same input write the same
     * content (UIDs aside). */
    const char *creation_date, *creation_time;
} dcm_equipment;

/* The source series a derived object is made from. */
typedef struct dcm_source {
    const char *const *files;   /* every file of the source series (paths) */
    int nfiles;
    const dcm_vol_info *info;   /* from dcm_series_volume on those files */
} dcm_source;

/* A UID made from a hex string (e.g. a SHA-256): "2.25." followed by the
 * decimal value of its first 128 bits (big-endian), at most 44 characters
 * plus NUL.  Returns 0 or CTG_EINVAL (NULL, fewer than 32 hex digits, or
 * anything but hex digits in the string). */
int dcm_uid_from_hex(const char *hex, char out[65]);

typedef struct dcm_seg_segment {
    int label;                  /* its value in the label map, 1..255 */
    const char *label_name;     /* Segment Label, e.g. "kidney_left" */
    dcm_code category;          /* e.g. 123037004 SCT "Anatomical Structure" */
    dcm_code type;              /* e.g. 64033007 SCT "Kidney" */
    dcm_code type_modifier;     /* laterality, e.g. 7771000 SCT "Left"; or none */
    uint8_t rgb[3];             /* display colour (written as CIELab) */
    const char *tracking_id;    /* may be NULL */
    const char *tracking_uid;   /* may be NULL */
} dcm_seg_segment;

typedef struct dcm_seg_input {
    const dcm_source *src;
    /* CTG_U8 label map on the grid of the volume dcm_series_volume built
     * from src (same size and affine).  Labels that no segment names are
     * ignored. */
    const ctg_vol *labels;
    /* Segment i is Segment Number i+1.  Labels are distinct, and every
     * segment has at least one voxel (leave absent structures out: a
     * segment without frames helps no viewer). */
    int nsegments;
    const dcm_seg_segment *segments;
    const dcm_equipment *eq;
    const char *series_uid;     /* NULL: new */
    int series_number;
    const char *series_desc;    /* NULL: "ctglip organ segmentation" */
} dcm_seg_input;

/* Writes a binary Segmentation Storage object (DCMTK dcmseg) in explicit
 * VR little endian: patient, study and frame of reference from the source;
 * a new series; one frame per segment and source slice where the segment
 * has voxels (per segment, then in increasing slice order), in the plane
 * of that slice on the label map's canonical grid (orientation from the
 * affine columns of the two in-plane axes, position = affine at the
 * plane's first voxel), referencing the source instance, and frame for
 * Enhanced CT (Derivation Image; a slice dcm_series_volume filled has an
 * empty Source Image Sequence); Referenced Series with every source
 * instance; segments with SNOMED CT codes, CIELab colour, tracking ID/UID
 * and algorithm identification (AUTOMATIC, family "Artificial
 * Intelligence", name eq->model_name, version eq->model_version).  eq needs
 * manufacturer, software_version and model_name; model_version becomes the
 * Device Serial Number and device_uid the Device UID, in General and in
 * Contributing Equipment.  The file goes to a temp name in path's folder
 * (which must exist), is fsynced and renamed, and the folder fsynced.
 * sop_uid (may be NULL) gets the new SOP Instance UID.  Returns 0,
 * CTG_EINVAL / CTG_EBADUID for bad input, or CTG_EIO, CTG_ENOMEM,
 * CTG_EDICOM, a system error; the reason (one line) in why. */
int dcm_write_seg(const dcm_seg_input *in, const char *path, char sop_uid[65], char *why,
                  size_t n);

/* One configured finding evaluated on one organ. */
typedef struct dcm_sr_finding {
    /* SNOMED CT where one exists, else the finding key of
     * etc/findings.conf in the private scheme "99CTGLIP" (identified in
     * the report's Coding Scheme Identification).  Code values longer
     * than 16 characters are written as Long Code Values. */
    dcm_code finding;
    int present;                /* the qualitative evaluation: present / absent */
    /* 0..1; reported as (111012, DCM, "Certainty of Finding") in percent,
     * with the finding as its concept modifier. */
    double probability;
    double threshold;           /* 0..1, the decision threshold used (an algorithm parameter) */
} dcm_sr_finding;

/* One organ: a TID 1411 volumetric ROI group. */
typedef struct dcm_sr_organ {
    int segment_number;         /* its segment in the SEG, 1..65535, one per organ */
    const char *tracking_id;    /* e.g. "kidney_left"; printable ASCII, <= 64 characters */
    const char *tracking_uid;   /* the SEG segment's Tracking UID where it has one */
    dcm_code site;              /* finding site, e.g. 64033007 SCT "Kidney"; also the Finding */
    dcm_code laterality;        /* or none (all three parts NULL or "") */
    double volume_ml;           /* >= 0 */
    double mean_hu;             /* NaN (no voxels) is written as "Not a number" */
    /* The zero-shot organ check failed: the group gets a Comment saying
     * so and naming nearest, the organ it looked most like (may be NULL). */
    int low_confidence;
    const char *nearest;
    int nfindings;
    const dcm_sr_finding *findings;
} dcm_sr_organ;

typedef struct dcm_sr_input {
    const dcm_source *src;
    /* The SEG the organs' segment numbers refer to: a Segmentation object
     * of the source study that has every one of those segments.  Only its
     * header is read. */
    const char *seg_path;
    int norgans;                /* >= 1 */
    const dcm_sr_organ *organs;
    const dcm_equipment *eq;    /* manufacturer, model name and version, device UID required */
    const char *predecessor_path; /* an earlier SR of this study it replaces; NULL: none */
    const char *series_uid;     /* NULL: new */
    int series_number;
    const char *series_desc;    /* NULL: "ctglip findings" */
} dcm_sr_input;

/* Writes a Comprehensive 3D SR holding a TID 1500 Measurement Report
 * (DCMTK dcmsr/cmr; the tree is outlined at the top of sr.cc): patient
 * and study copied from the first source file, a new SR series, language,
 * device observer context (the model), procedure reported (LOINC 25045-6
 * "CT unspecified body region"), an image library of the source
 * instances, one TID 1411 group per organ (tracking identifier and UID,
 * finding, finding site with laterality, referenced segment, source
 * series, volume in ml and mean HU, each finding's certainty in percent,
 * TID 4019 algorithm identification on every measurement, one
 * present/absent qualitative evaluation per finding, a comment for an
 * organ that failed the zero-shot check), General and Contributing
 * Equipment naming the model (Device UID = eq->device_uid, Software
 * Versions = model version then software version), Current Requested
 * Procedure Evidence listing the source instances and the SEG, and
 * Predecessor Documents when predecessor_path is given; COMPLETE,
 * UNVERIFIED, content date and time from eq or the clock.  Durable write
 * as dcm_write_seg, explicit VR little endian.  sop_uid (may be NULL) gets
 * the new SOP Instance UID ("" after a failure).  Returns 0; CTG_EINVAL
 * for missing, malformed or inconsistent input (a SEG or predecessor of
 * another study, a segment the SEG lacks, a source file of another
 * series); CTG_ENOENT and other system errors for unreadable or unwritable
 * files; CTG_EDICOM when DCMTK refuses; always with a one-line reason in
 * why.  Thread-safe. */
int dcm_write_sr(const dcm_sr_input *in, const char *path, char sop_uid[65], char *why,
                 size_t n);

/* ---- reading a received report SR (srtext.cc) ------------------------------ */

/* The largest text dcm_sr_text returns (bytes, the NUL excluded); longer
 * reports are cut at a line boundary and info->truncated is set. */
#define DCM_SR_TEXT_MAX (1u << 20)

/* What a report SR says about itself.  Strings are NUL-terminated UTF-8,
 * "" when absent. */
typedef struct dcm_sr_info {
    char sop_class[65], sop_uid[65], study_uid[65];
    char accession[17];
    char manufacturer[65];
    char title[129];          /* the document title: the root container's concept meaning */
    char completion[16];      /* Completion Flag: "COMPLETE", "PARTIAL" */
    char verification[16];    /* Verification Flag: "VERIFIED", "UNVERIFIED" */
    /* Observation DateTime of the root content item, else Content Date and
     * Time; DICOM DT form (YYYYMMDDHHMMSS...). */
    char observed[27];
    char content_dt[27];      /* Content Date + Content Time */
    /* The (first) Verifying Observer Name, else the first Person Observer
     * Name (121008, DCM) in the content tree; DICOM PN form (Last^First). */
    char author[128];
    int nitems;               /* TEXT, CODE and NUM items written to the text */
    int truncated;            /* the text was cut at DCM_SR_TEXT_MAX */
} dcm_sr_info;

/* Reads a Structured Report file and renders its content tree as plain
 * text, in document order: each CONTAINER's concept name is a heading on a
 * line of its own (the root's as the first line, nested ones followed by
 * ':' and preceded by a blank line); each TEXT value, CODE meaning and NUM
 * value (with its unit) follows on its own line, prefixed "Concept: "
 * unless its concept name just repeats the enclosing heading ("Finding"
 * under "Findings").  Other value types (IMAGE, UIDREF, DATE, ...) are
 * left out.  Values are converted to UTF-8 from the file's Specific
 * Character Set; invalid bytes become '?', line ends become "\n", other
 * control characters are dropped.  Files larger than 64 MiB are refused.
 * *text is new (free() it) and may be "" for a report with no text; info
 * may be NULL.  Returns 0, or CTG_EDICOM (not an SR, unreadable content
 * tree), CTG_ETOOBIG, CTG_ENOMEM or a system error, with the reason in why.
 * Reentrant. */
int dcm_sr_text(const char *path, char **text, dcm_sr_info *info, char *why, size_t n);

#ifdef __cplusplus
}
#endif
#endif
