/*
 * volume.cc - series to volume: from the files of one study, picks the
 * primary CT series, checks its geometry, decodes its pixel data through
 * DCMTK's codecs and returns a float volume in Hounsfield units in the
 * canonical orientation of core/vol.h.
 *
 * Two passes.  The header pass reads every file with large values left on
 * disk, so a study of thousands of files costs little memory, and collects
 * one record per frame (a single-frame CT image is one frame, an Enhanced CT
 * object many), grouped by Series Instance UID.  Series are ranked, and the
 * first one whose geometry holds up becomes the volume: its files are then
 * loaded one at a time and every frame is decoded straight into its slice of
 * the output, so besides the volume at most one data set and one frame are
 * in memory.
 *
 * Everything a file can make us allocate is capped: files, frames per object
 * and in all, Rows/Columns, voxels of the result.
 *
 * The per-slice records (dcm_vol_info.slice_sop/slice_frame) list the
 * acquisition slices in increasing order along the canonical axis the slice
 * normal became.  For an axial series that axis is k, so entry k is the
 * source of canonical slice k; for a sagittal or coronal series (used only
 * when a study has no axial one) it is i or j, and entry m is the source of
 * the canonical plane at that index.
 *
 * Threading: dcm_series_volume() is reentrant.  DCMTK's codec registry is
 * filled once by dcm_global_init() and only read afterwards.  No C++
 * exception leaves this file: allocation failures become CTG_ENOMEM.
 */
#include "dicom.h"
#include "dicom_int.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <new>
#include <string>
#include <vector>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcfcache.h"
#include "dcmtk/dcmdata/dcpxitem.h"
#include "dcmtk/dcmdata/dctk.h"

#define UID_CT_IMAGE "1.2.840.10008.5.1.4.1.1.2"
#define UID_ENHANCED_CT_IMAGE "1.2.840.10008.5.1.4.1.1.2.1"

enum {
    MAX_FILES = 100000,         /* files in one call */
    MAX_FRAMES = 16384,         /* frames of one object */
    MAX_TOTAL_FRAMES = 1 << 18, /* frames over all files (a big study has 10^4) */
    MAX_DIM = 4096,             /* Rows, Columns */
    MIN_SLICES = 3,             /* fewer is no volume anyone can use */
};

/* Geometry tolerances.  Orientation cosines of one series agree to 1e-4;
 * two slices closer than DUP_MM along the normal are at the same place;
 * slice positions may step off the normal by MAX_TILT_DEG before we call it
 * a gantry tilt (rounding of positions to 0.01 mm stays well below). */
#define IOP_TOL 1e-4
#define DUP_MM 0.01
#define MAX_TILT_DEG 0.5
#define MAX_COORD 1e6 /* mm; anything beyond is not a patient position */

/* How the stored values of one object are laid out. */
struct PixFmt {
    int rows, cols;
    int ba, bs, hb; /* bits allocated, stored, high bit */
    int is_signed;
    int has_pad;
    long long pad_lo, pad_hi; /* Pixel Padding Value (and range limit) */
};

/* One frame: a single-frame image, or one frame of a multi-frame object. */
struct Frame {
    int file;  /* index into the caller's paths */
    int frame; /* 1-based */
    char sop[65];
    int rows, cols;
    int has_ipp, has_iop, has_ps;
    double ipp[3], iop[6], ps[2];
    double slope, intercept;
    double d; /* position along the series' slice normal (plan_series) */
};

struct Series {
    std::string uid;
    char study[65], for_uid[65], sop_class[65], desc[65], ppos[17];
    int number;
    int enhanced;
    std::vector<Frame> frames;
    /* The first object that makes the whole series unusable (unsupported
     * compression, bad pixel format): CTG_EFORMAT with this reason. */
    std::string problem;
    /* Why objects of this series were left out (not CT, localizer, ...);
     * the reason for a series without any usable frame. */
    std::string excluded;
    int nexcluded;
};

struct Study {
    std::vector<Series> series;
    std::map<std::string, size_t> by_uid;
    size_t total_frames;
    int unreadable;
    std::string unreadable_first;
};

/* The volume a series makes: per output slice the frame it comes from
 * (index into Series::frames) or -1 for a slice filled by interpolation. */
struct Plan {
    std::vector<int> src;
    double r[3], c[3], n[3];
    double ps[2];
    double spacing;
    int filled;
};

/* ---- small helpers ------------------------------------------------------ */

static void get_str(DcmItem *it, const DcmTagKey &tag, char *dst, size_t n)
{
    OFString v;
    dst[0] = 0;
    if (it && it->findAndGetOFStringArray(tag, v).good()) {
        /* Values are trimmed of the padding DICOM allows. */
        size_t b = 0, e = v.length();
        while (b < e && (v[b] == ' ' || v[b] == 0)) b++;
        while (e > b && (v[e - 1] == ' ' || v[e - 1] == 0)) e--;
        OFStandard::strlcpy(dst, v.substr(b, e - b).c_str(), n);
    }
}

static int get_int(DcmItem *it, const DcmTagKey &tag, int dflt)
{
    Sint32 si;
    Uint16 us;
    Sint16 ss;
    if (!it) return dflt;
    if (it->findAndGetUint16(tag, us).good()) return (int)us;
    if (it->findAndGetSint32(tag, si).good()) return (int)si;
    if (it->findAndGetSint16(tag, ss).good()) return (int)ss;
    return dflt;
}

/* Reads n values of a DS/FD attribute; 1 when all are there and finite. */
static int get_dbl(DcmItem *it, const DcmTagKey &tag, double *v, int n)
{
    if (!it) return 0;
    for (int i = 0; i < n; i++) {
        Float64 f;
        if (it->findAndGetFloat64(tag, f, (unsigned long)i).bad() || !isfinite(f)) return 0;
        v[i] = f;
    }
    return 1;
}

/* The first item of sequence `seq` in the per-frame item, else in the
 * shared item (Enhanced CT functional groups), else NULL. */
static DcmItem *fg_item(DcmItem *per_frame, DcmItem *shared, const DcmTagKey &seq)
{
    DcmItem *it = NULL;
    if (per_frame && per_frame->findAndGetSequenceItem(seq, it, 0).good() && it) return it;
    it = NULL;
    if (shared && shared->findAndGetSequenceItem(seq, it, 0).good() && it) return it;
    return NULL;
}

static int contains_nocase(const char *hay, const char *needle)
{
    size_t ln = strlen(needle);
    for (const char *p = hay; *p; p++)
        if (strncasecmp(p, needle, ln) == 0) return 1;
    return 0;
}

static std::string fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static std::string fmt(const char *f, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

static const char *series_name(const Series &s)
{
    return s.uid.empty() ? "(no Series Instance UID)" : s.uid.c_str();
}

static double dot3(const double *a, const double *b)
{
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

/* A position for messages: "z = 12.50 mm" for an axial-ish series (what a
 * radiologist reads off the viewer), else all three coordinates. */
static std::string pos_str(const double *p, const double *n)
{
    if (fabs(n[2]) >= fabs(n[0]) && fabs(n[2]) >= fabs(n[1]))
        return fmt("z = %.2f mm", p[2]);
    return fmt("(%.2f, %.2f, %.2f) mm", p[0], p[1], p[2]);
}

static const char *orientation_name(const double *n)
{
    double ax = fabs(n[0]), ay = fabs(n[1]), az = fabs(n[2]);
    if (az >= ax && az >= ay) return az > 0.95 ? "axial" : "oblique axial";
    if (ay >= ax) return ay > 0.95 ? "coronal" : "oblique coronal";
    return ax > 0.95 ? "sagittal" : "oblique sagittal";
}

/* ---- what we can decode --------------------------------------------------- */

/* NULL when pixel data in this transfer syntax can be decoded exactly;
 * otherwise the reason, for an admin who can change what the PACS sends. */
static const char *ts_problem(const char *uid)
{
    if (!uid[0]) return "no Transfer Syntax UID";
    if (!strncmp(uid, "1.2.840.10008.1.2.4.9", 21) || !strncmp(uid, "1.2.840.10008.1.2.4.20", 22))
        return "JPEG 2000 compressed pixel data is not supported (DCMTK has no JPEG 2000 codec); "
               "send uncompressed or JPEG lossless";
    DcmXfer x(uid);
    switch (x.getXfer()) {
    case EXS_LittleEndianImplicit:
    case EXS_LittleEndianExplicit:
    case EXS_BigEndianExplicit:
    case EXS_DeflatedLittleEndianExplicit:
    case EXS_JPEGProcess14:
    case EXS_JPEGProcess14SV1:
    case EXS_JPEGLSLossless:
    case EXS_RLELossless:
        return NULL;
    case EXS_JPEGProcess1:
    case EXS_JPEGProcess2_4:
    case EXS_JPEGLSLossy:
        /* DCMTK could decode these, but the HU values would not be the
         * scanner's: findings measured on them would be wrong. */
        return "lossy compressed pixel data (JPEG baseline/extended or near-lossless JPEG-LS) "
               "is not accepted: Hounsfield units would be approximate; send uncompressed or "
               "lossless";
    default:
        break;
    }
    if (x.getXfer() == EXS_Unknown) return "unknown transfer syntax";
    if (x.isEncapsulated())
        return "compressed pixel data in a transfer syntax we cannot decode; send uncompressed, "
               "JPEG lossless, JPEG-LS lossless or RLE";
    return "unsupported transfer syntax";
}

/* Reads and checks the pixel format of an object; "" or the reason. */
static std::string read_pixfmt(DcmItem *ds, PixFmt *f)
{
    memset(f, 0, sizeof *f);
    f->rows = get_int(ds, DCM_Rows, 0);
    f->cols = get_int(ds, DCM_Columns, 0);
    f->ba = get_int(ds, DCM_BitsAllocated, 0);
    f->bs = get_int(ds, DCM_BitsStored, f->ba);
    f->hb = get_int(ds, DCM_HighBit, f->bs - 1);
    int pr = get_int(ds, DCM_PixelRepresentation, 0);
    int spp = get_int(ds, DCM_SamplesPerPixel, 1);
    if (f->rows <= 0 || f->cols <= 0) return "no Rows/Columns";
    if (f->rows > MAX_DIM || f->cols > MAX_DIM)
        return fmt("%d x %d pixels exceed the limit of %d", f->cols, f->rows, MAX_DIM);
    if (spp != 1) return fmt("not a grayscale image (Samples per Pixel %d)", spp);
    if (f->ba != 8 && f->ba != 16 && f->ba != 32)
        return fmt("Bits Allocated %d not supported", f->ba);
    if (f->bs < 1 || f->bs > f->ba || f->hb < f->bs - 1 || f->hb >= f->ba)
        return fmt("inconsistent Bits Stored %d / High Bit %d for Bits Allocated %d", f->bs, f->hb,
                   f->ba);
    if (pr != 0 && pr != 1) return fmt("Pixel Representation %d", pr);
    f->is_signed = pr;
    if (!ds->tagExists(DCM_PixelData)) return "no Pixel Data";

    /* Pixel Padding Value is US or SS like the pixels; in implicit VR it may
     * have been read as either, so the bits are interpreted here. */
    Uint16 us;
    Sint16 ss;
    long long pad = 0, lim = 0;
    int have = 0, have_lim = 0;
    if (ds->findAndGetUint16(DCM_PixelPaddingValue, us).good()) {
        pad = f->is_signed ? (long long)(Sint16)us : (long long)us;
        have = 1;
    } else if (ds->findAndGetSint16(DCM_PixelPaddingValue, ss).good()) {
        pad = f->is_signed ? (long long)ss : (long long)(Uint16)ss;
        have = 1;
    }
    if (ds->findAndGetUint16(DCM_PixelPaddingRangeLimit, us).good()) {
        lim = f->is_signed ? (long long)(Sint16)us : (long long)us;
        have_lim = 1;
    } else if (ds->findAndGetSint16(DCM_PixelPaddingRangeLimit, ss).good()) {
        lim = f->is_signed ? (long long)ss : (long long)(Uint16)ss;
        have_lim = 1;
    }
    if (have) {
        f->has_pad = 1;
        f->pad_lo = have_lim ? std::min(pad, lim) : pad;
        f->pad_hi = have_lim ? std::max(pad, lim) : pad;
    }
    return "";
}

/* ---- header pass ------------------------------------------------------------ */

/* Why an object that is not a CT image is left out. */
static std::string other_reason(const char *sop_class, const char *image_type, const char *desc,
                                const char *modality)
{
    static const char *const dose_sr[] = {
        "1.2.840.10008.5.1.4.1.1.88.67", /* X-Ray Radiation Dose SR */
        "1.2.840.10008.5.1.4.1.1.88.68", /* Radiopharmaceutical Radiation Dose SR */
        "1.2.840.10008.5.1.4.1.1.88.73", /* Patient Radiation Dose SR */
        "1.2.840.10008.5.1.4.1.1.88.76", /* Enhanced X-Ray Radiation Dose SR */
    };
    for (size_t i = 0; i < sizeof dose_sr / sizeof dose_sr[0]; i++)
        if (!strcmp(sop_class, dose_sr[i])) return "radiation dose report (structured report)";
    if (!strncmp(sop_class, "1.2.840.10008.5.1.4.1.1.88.", 27)) return "structured report";
    if (!strncmp(sop_class, "1.2.840.10008.5.1.4.1.1.7", 25)) {
        if (contains_nocase(image_type, "DOSE") || contains_nocase(desc, "DOSE"))
            return "dose report (secondary capture)";
        return "secondary capture image";
    }
    if (!sop_class[0]) return "no SOP Class UID";
    return fmt("not a CT image (SOP Class %s, modality %s)", sop_class, modality[0] ? modality : "-");
}

/* Why a CT image is not an original axial slice, or "" when it is one. */
static std::string image_type_reason(const char *image_type)
{
    char v[4][65] = {{0}};
    int nv = 0;
    for (const char *p = image_type; *p && nv < 4; nv++) {
        const char *e = strchr(p, '\\');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        snprintf(v[nv], sizeof v[nv], "%.*s", (int)std::min(len, (size_t)64), p);
        if (!e) {
            nv++;
            break;
        }
        p = e + 1;
    }
    if (contains_nocase(image_type, "LOCALIZER")) return fmt("localizer (ImageType %s)", image_type);
    if (contains_nocase(image_type, "DOSE")) return fmt("dose report (ImageType %s)", image_type);
    if (!strcasecmp(v[0], "DERIVED")) return fmt("derived image (ImageType %s)", image_type);
    if (nv > 1 && !strcasecmp(v[1], "SECONDARY"))
        return fmt("secondary image (ImageType %s)", image_type);
    return "";
}

static Series &series_for(Study &st, const char *uid)
{
    auto it = st.by_uid.find(uid);
    if (it != st.by_uid.end()) return st.series[it->second];
    st.series.emplace_back();
    Series &s = st.series.back();
    s.uid = uid;
    s.study[0] = s.for_uid[0] = s.sop_class[0] = s.desc[0] = s.ppos[0] = 0;
    s.number = 0;
    s.enhanced = 0;
    s.nexcluded = 0;
    st.by_uid[uid] = st.series.size() - 1;
    return s;
}

static void frame_geometry(Frame &fr, DcmItem *top, DcmItem *per_frame, DcmItem *shared)
{
    DcmItem *pos = fg_item(per_frame, shared, DCM_PlanePositionSequence);
    DcmItem *ori = fg_item(per_frame, shared, DCM_PlaneOrientationSequence);
    DcmItem *meas = fg_item(per_frame, shared, DCM_PixelMeasuresSequence);
    DcmItem *pvt = fg_item(per_frame, shared, DCM_PixelValueTransformationSequence);
    fr.has_ipp = get_dbl(pos, DCM_ImagePositionPatient, fr.ipp, 3) ||
                 get_dbl(top, DCM_ImagePositionPatient, fr.ipp, 3);
    fr.has_iop = get_dbl(ori, DCM_ImageOrientationPatient, fr.iop, 6) ||
                 get_dbl(top, DCM_ImageOrientationPatient, fr.iop, 6);
    fr.has_ps = get_dbl(meas, DCM_PixelSpacing, fr.ps, 2) ||
                get_dbl(top, DCM_PixelSpacing, fr.ps, 2);
    double v;
    fr.slope = get_dbl(pvt, DCM_RescaleSlope, &v, 1) || get_dbl(top, DCM_RescaleSlope, &v, 1) ? v : 1.0;
    fr.intercept = get_dbl(pvt, DCM_RescaleIntercept, &v, 1) ||
                           get_dbl(top, DCM_RescaleIntercept, &v, 1)
                       ? v
                       : 0.0;
}

/* Reads one file's header into the study.  A file that does not parse is
 * counted, not fatal: a study may carry anything.  Returns 0, or
 * CTG_EREJECT when the study exceeds the frame cap. */
static int scan_file(const char *path, int fi, Study &st, std::string &why)
{
    DcmFileFormat ff;
    if (!path) {
        if (st.unreadable++ == 0) st.unreadable_first = "(null path)";
        return 0;
    }
    OFCondition c = ff.loadFile(path, EXS_Unknown, EGL_noChange, 4096, ERM_autoDetect);
    if (c.bad()) {
        if (st.unreadable++ == 0) st.unreadable_first = fmt("%s: %s", path, c.text());
        return 0;
    }
    DcmDataset *ds = ff.getDataset();
    DcmMetaInfo *meta = ff.getMetaInfo();
    char sop_class[65], series_uid[65], image_type[129], desc[65], modality[17], ts[65];
    get_str(ds, DCM_SOPClassUID, sop_class, sizeof sop_class);
    /* Anonymisers sometimes blank the data set's SOP Class UID; the meta
     * header still says what the object is. */
    if (!sop_class[0]) get_str(meta, DCM_MediaStorageSOPClassUID, sop_class, sizeof sop_class);
    get_str(ds, DCM_SeriesInstanceUID, series_uid, sizeof series_uid);
    get_str(ds, DCM_ImageType, image_type, sizeof image_type);
    get_str(ds, DCM_SeriesDescription, desc, sizeof desc);
    get_str(ds, DCM_Modality, modality, sizeof modality);
    get_str(meta, DCM_TransferSyntaxUID, ts, sizeof ts);
    if (!ts[0]) {
        DcmXfer x(ds->getOriginalXfer());
        OFStandard::strlcpy(ts, x.getXferID(), sizeof ts);
    }

    Series &s = series_for(st, series_uid);
    if (!s.study[0]) get_str(ds, DCM_StudyInstanceUID, s.study, sizeof s.study);
    if (!s.for_uid[0]) get_str(ds, DCM_FrameOfReferenceUID, s.for_uid, sizeof s.for_uid);
    if (!s.desc[0]) OFStandard::strlcpy(s.desc, desc, sizeof s.desc);
    if (!s.ppos[0]) get_str(ds, DCM_PatientPosition, s.ppos, sizeof s.ppos);
    if (!s.number) s.number = get_int(ds, DCM_SeriesNumber, 0);

    int enhanced = !strcmp(sop_class, UID_ENHANCED_CT_IMAGE);
    std::string skip;
    if (!enhanced && strcmp(sop_class, UID_CT_IMAGE) != 0)
        skip = other_reason(sop_class, image_type, desc, modality);
    else
        skip = image_type_reason(image_type);
    if (!skip.empty()) {
        if (s.nexcluded++ == 0) s.excluded = skip;
        return 0;
    }
    if (!s.sop_class[0]) OFStandard::strlcpy(s.sop_class, sop_class, sizeof s.sop_class);
    if (enhanced) s.enhanced = 1;

    /* Problems of the object as a whole make its series unusable; they are
     * noted and the frames still counted, so that the reason reaches the
     * admin when this was the series to use. */
    std::string problem;
    PixFmt pf;
    const char *tsp = ts_problem(ts);
    if (tsp) problem = tsp;
    if (problem.empty()) problem = read_pixfmt(ds, &pf);
    else read_pixfmt(ds, &pf);
    int nframes = get_int(ds, DCM_NumberOfFrames, 1);
    if (nframes < 1 || nframes > MAX_FRAMES) {
        if (problem.empty()) problem = fmt("Number of Frames %d", nframes);
        nframes = 1;
    }
    if (!enhanced && nframes != 1) {
        if (problem.empty()) problem = "multi-frame object in CT Image Storage";
        nframes = 1;
    }
    if (st.total_frames + (size_t)nframes > MAX_TOTAL_FRAMES) {
        why = fmt("more than %d images in the study", MAX_TOTAL_FRAMES);
        return CTG_EREJECT;
    }
    st.total_frames += (size_t)nframes;

    Frame fr;
    memset(&fr, 0, sizeof fr);
    fr.file = fi;
    get_str(ds, DCM_SOPInstanceUID, fr.sop, sizeof fr.sop);
    fr.rows = pf.rows;
    fr.cols = pf.cols;

    if (!enhanced) {
        fr.frame = 1;
        frame_geometry(fr, ds, NULL, NULL);
        s.frames.push_back(fr);
    } else {
        DcmItem *shared = NULL;
        DcmSequenceOfItems *pfs = NULL;
        ds->findAndGetSequenceItem(DCM_SharedFunctionalGroupsSequence, shared, 0);
        if (ds->findAndGetSequence(DCM_PerFrameFunctionalGroupsSequence, pfs).bad()) pfs = NULL;
        if (pfs && pfs->card() != (unsigned long)nframes && problem.empty())
            problem = fmt("%lu per-frame functional group items for %d frames", pfs->card(),
                          nframes);
        DcmObject *o = NULL;
        for (int f = 0; f < nframes; f++) {
            DcmItem *item = NULL;
            if (pfs && (o = pfs->nextInContainer(o)) != NULL) item = OFstatic_cast(DcmItem *, o);
            fr.frame = f + 1;
            frame_geometry(fr, ds, item, shared);
            s.frames.push_back(fr);
        }
    }
    if (!problem.empty() && s.problem.empty()) {
        s.problem = problem;
    }
    return 0;
}

/* ---- geometry ------------------------------------------------------------- */

static int files_equal(const char *a, const char *b)
{
    if (!strcmp(a, b)) return 1;
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int eq = fa && fb;
    char ba[65536], bb[65536];
    while (eq) {
        size_t na = fread(ba, 1, sizeof ba, fa), nb = fread(bb, 1, sizeof bb, fb);
        if (na != nb || memcmp(ba, bb, na) != 0) eq = 0;
        if (na < sizeof ba) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return eq;
}

/* Checks the geometry of a series and works out the volume it makes.
 * Returns 0, or CTG_EREJECT / CTG_EFORMAT with the reason in why.  Sets
 * Frame::d of every frame. */
static int plan_series(const char *const *paths, Series &s, const dcm_vol_opts &o, Plan &p,
                       std::string &why)
{
    if (!s.problem.empty()) {
        why = s.problem;
        return CTG_EFORMAT;
    }
    std::vector<Frame> &fr = s.frames;
    if (fr.size() < MIN_SLICES) {
        why = fmt("only %zu image(s); a volume needs at least %d slices", fr.size(), MIN_SLICES);
        return CTG_EREJECT;
    }
    for (const Frame &f : fr) {
        const char *miss = !f.has_iop ? "Image Orientation (Patient)"
                           : !f.has_ipp ? "Image Position (Patient)"
                           : !f.has_ps  ? "Pixel Spacing"
                                        : NULL;
        if (miss) {
            why = fmt("image %s frame %d has no valid %s", f.sop, f.frame, miss);
            return CTG_EFORMAT;
        }
        for (int i = 0; i < 3; i++)
            if (fabs(f.ipp[i]) > MAX_COORD) {
                why = fmt("image %s has an implausible position", f.sop);
                return CTG_EFORMAT;
            }
        if (!(f.ps[0] > 1e-3 && f.ps[0] < 1e3 && f.ps[1] > 1e-3 && f.ps[1] < 1e3)) {
            why = fmt("image %s has an implausible Pixel Spacing", f.sop);
            return CTG_EFORMAT;
        }
        if (!(f.slope != 0 && fabs(f.slope) < 1e6 && fabs(f.intercept) < 1e7)) {
            why = fmt("image %s has an unusable Rescale Slope/Intercept", f.sop);
            return CTG_EFORMAT;
        }
    }

    /* Row and column directions: unit length and perpendicular within what
     * DS rounding explains. */
    const Frame &f0 = fr[0];
    double nr = sqrt(dot3(f0.iop, f0.iop)), nc = sqrt(dot3(f0.iop + 3, f0.iop + 3));
    if (fabs(nr - 1) > 1e-2 || fabs(nc - 1) > 1e-2 ||
        fabs(dot3(f0.iop, f0.iop + 3)) / (nr * nc) > 1e-3) {
        why = "Image Orientation (Patient) is not two perpendicular unit vectors";
        return CTG_EFORMAT;
    }
    for (int i = 0; i < 3; i++) {
        p.r[i] = f0.iop[i] / nr;
        p.c[i] = f0.iop[3 + i] / nc;
    }
    p.n[0] = p.r[1] * p.c[2] - p.r[2] * p.c[1];
    p.n[1] = p.r[2] * p.c[0] - p.r[0] * p.c[2];
    p.n[2] = p.r[0] * p.c[1] - p.r[1] * p.c[0];
    double nn = sqrt(dot3(p.n, p.n));
    for (int i = 0; i < 3; i++) p.n[i] /= nn;
    p.ps[0] = f0.ps[0];
    p.ps[1] = f0.ps[1];

    for (Frame &f : fr) {
        if (f.rows != f0.rows || f.cols != f0.cols) {
            why = fmt("images of different sizes (%dx%d and %dx%d)", f0.cols, f0.rows, f.cols,
                      f.rows);
            return CTG_EREJECT;
        }
        for (int i = 0; i < 6; i++)
            if (fabs(f.iop[i] - f0.iop[i]) > IOP_TOL) {
                why = "images of more than one orientation";
                return CTG_EREJECT;
            }
        for (int i = 0; i < 2; i++)
            if (fabs(f.ps[i] - f0.ps[i]) > IOP_TOL * f0.ps[i]) {
                why = fmt("images with different Pixel Spacing (%g and %g mm)", f0.ps[i], f.ps[i]);
                return CTG_EREJECT;
            }
        f.d = dot3(f.ipp, p.n);
    }

    /* Slices in order along the normal; Instance Number is not trusted. */
    std::vector<int> ord(fr.size());
    for (size_t i = 0; i < ord.size(); i++) ord[i] = (int)i;
    std::sort(ord.begin(), ord.end(), [&fr](int a, int b) {
        if (fr[a].d != fr[b].d) return fr[a].d < fr[b].d;
        int c = strcmp(fr[a].sop, fr[b].sop);
        if (c) return c < 0;
        if (fr[a].frame != fr[b].frame) return fr[a].frame < fr[b].frame;
        return fr[a].file < fr[b].file;
    });

    /* The same instance received twice is one slice; two different images
     * at one place (two phases in one series, say) make no volume. */
    std::vector<int> keep;
    keep.reserve(ord.size());
    for (int i : ord) {
        if (!keep.empty()) {
            const Frame &a = fr[keep.back()], &b = fr[i];
            if (fabs(b.d - a.d) < DUP_MM) {
                if (!strcmp(a.sop, b.sop) && a.frame == b.frame &&
                    files_equal(paths[a.file], paths[b.file]))
                    continue;
                why = fmt("two images at the same position %s (%s frame %d and %s frame %d)",
                          pos_str(b.ipp, p.n).c_str(), a.sop, a.frame, b.sop, b.frame);
                return CTG_EREJECT;
            }
        }
        keep.push_back(i);
    }
    if (keep.size() < MIN_SLICES) {
        why = fmt("only %zu distinct slice position(s); a volume needs at least %d", keep.size(),
                  MIN_SLICES);
        return CTG_EREJECT;
    }

    /* Gantry tilt: slice positions that step off the slice normal.  The
     * angle is taken over the whole stack, where position rounding does not
     * matter; each slice must also lie on that line.  A non-zero Gantry/
     * Detector Tilt attribute alone is no reason to refuse: when the
     * scanner reports the tilted orientation and the positions follow its
     * normal, the grid is rectangular and the affine describes it exactly. */
    const Frame &first = fr[keep.front()], &last = fr[keep.back()];
    double v[3], w[3];
    for (int i = 0; i < 3; i++) v[i] = last.ipp[i] - first.ipp[i];
    double along = dot3(v, p.n), perp2 = 0;
    for (int i = 0; i < 3; i++) perp2 += (v[i] - along * p.n[i]) * (v[i] - along * p.n[i]);
    double tilt = atan2(sqrt(perp2), fabs(along)) * 180.0 / M_PI;
    if (tilt > MAX_TILT_DEG) {
        why = fmt("gantry tilt %.1f degrees: slice positions step off the slice normal; "
                  "send a series reconstructed without tilt",
                  tilt);
        return CTG_EREJECT;
    }
    double vv = dot3(v, v), line_tol = std::max(0.1, 0.25 * std::min(p.ps[0], p.ps[1]));
    for (int i : keep) {
        for (int k = 0; k < 3; k++) w[k] = fr[i].ipp[k] - first.ipp[k];
        double t = dot3(w, v) / vv, dev2 = 0;
        for (int k = 0; k < 3; k++) dev2 += (w[k] - t * v[k]) * (w[k] - t * v[k]);
        if (sqrt(dev2) > line_tol) {
            why = fmt("slice positions are not on one line (the slice at %s is %.2f mm off)",
                      pos_str(fr[i].ipp, p.n).c_str(), sqrt(dev2));
            return CTG_EREJECT;
        }
    }

    /* Spacing: the usual step is the median; a step of k times it means
     * k-1 missing slices; anything else is irregular.  The lower median is
     * taken so that a few gaps do not shift it. */
    size_t ns = keep.size();
    std::vector<double> steps(ns - 1);
    for (size_t i = 0; i + 1 < ns; i++) steps[i] = fr[keep[i + 1]].d - fr[keep[i]].d;
    std::vector<double> sorted = steps;
    std::sort(sorted.begin(), sorted.end());
    double med = sorted[(sorted.size() - 1) / 2];
    double tol = o.spacing_tolerance > 0 ? o.spacing_tolerance : 0.05;
    int max_fill = o.max_fill > 0 ? o.max_fill : 2;
    p.src.clear();
    p.filled = 0;
    int gaps = 0;
    std::string first_gap;
    for (size_t i = 0; i < ns; i++) {
        p.src.push_back(keep[i]);
        if (i + 1 == ns) break;
        const Frame &a = fr[keep[i]], &b = fr[keep[i + 1]];
        double st = steps[i];
        long k = lround(st / med);
        if (k < 1 || fabs(st - (double)k * med) > tol * med) {
            why = fmt("irregular slice spacing: %.3g mm between the slices at %s and %s "
                      "(usual spacing %.3g mm)",
                      st, pos_str(a.ipp, p.n).c_str(), pos_str(b.ipp, p.n).c_str(), med);
            return CTG_EREJECT;
        }
        if (k == 1) continue;
        long missing = k - 1;
        if (gaps++ == 0) {
            double m[3];
            for (int j = 0; j < 3; j++) m[j] = a.ipp[j] + (b.ipp[j] - a.ipp[j]) / (double)k;
            first_gap = fmt("%ld missing slice(s) at %s%s (between %s and %s; spacing %.3g mm)",
                            missing, pos_str(m, p.n).c_str(), missing > 1 ? " onwards" : "",
                            pos_str(a.ipp, p.n).c_str(), pos_str(b.ipp, p.n).c_str(), med);
        }
        if (!o.fill_missing) continue;
        if (missing > max_fill) {
            why = fmt("%ld consecutive missing slices between %s and %s; at most %d are filled",
                      missing, pos_str(a.ipp, p.n).c_str(), pos_str(b.ipp, p.n).c_str(),
                      max_fill);
            return CTG_EREJECT;
        }
        if ((uint64_t)p.src.size() + (uint64_t)missing > (uint64_t)MAX_TOTAL_FRAMES) {
            why = "too many slices to fill";
            return CTG_EREJECT;
        }
        for (long j = 0; j < missing; j++) p.src.push_back(-1);
        p.filled += (int)missing;
    }
    if (gaps && !o.fill_missing) {
        why = first_gap + (gaps > 1 ? fmt(", and %d more gap(s)", gaps - 1) : std::string());
        return CTG_EREJECT;
    }
    uint64_t max_vox = o.max_voxels ? o.max_voxels : (uint64_t)1024 * 1024 * 2048;
    uint64_t nvox = (uint64_t)f0.cols * (uint64_t)f0.rows * (uint64_t)p.src.size();
    if (nvox > max_vox) {
        why = fmt("volume of %dx%dx%zu voxels exceeds the limit of %llu", f0.cols, f0.rows,
                  p.src.size(), (unsigned long long)max_vox);
        return CTG_EREJECT;
    }
    p.spacing = (last.d - first.d) / (double)(p.src.size() - 1);
    return 0;
}

/* ---- pixel pass ------------------------------------------------------------- */

/* Stored values of one frame to HU.  Bits outside Bits Stored are masked
 * off, signed values sign-extended; padding (outside the scanned field of
 * view) becomes air. */
static void to_hu(const uint8_t *buf, const PixFmt &f, double slope, double icpt, float *dst,
                  size_t count)
{
    int shift = f.hb + 1 - f.bs;
    uint64_t mask = ((uint64_t)1 << f.bs) - 1;
    for (size_t i = 0; i < count; i++) {
        uint32_t raw;
        if (f.ba == 8) {
            raw = buf[i];
        } else if (f.ba == 16) {
            uint16_t u;
            memcpy(&u, buf + 2 * i, 2);
            raw = u;
        } else {
            memcpy(&raw, buf + 4 * i, 4);
        }
        uint64_t u = ((uint64_t)raw >> shift) & mask;
        long long val = (long long)u;
        if (f.is_signed && (u >> (f.bs - 1)) & 1) val -= (long long)1 << f.bs;
        if (f.has_pad) {
            /* Some scanners put the padding value outside Bits Stored, so
             * the whole allocated word is compared too. */
            long long full = (long long)raw;
            if (f.is_signed && f.ba < 64 && (raw >> (f.ba - 1)) & 1) full -= (long long)1 << f.ba;
            if ((val >= f.pad_lo && val <= f.pad_hi) || (full >= f.pad_lo && full <= f.pad_hi)) {
                dst[i] = -1024.0f;
                continue;
            }
        }
        dst[i] = (float)((double)val * slope + icpt);
    }
}

/* DCMTK 3.6.7's decoders trust parts of the compressed stream that a peer
 * controls: its RLE decoder reads past a fragment shorter than the RLE
 * header or with segment offsets beyond its end, its JPEG marker scan loops
 * forever on a TEM marker, and CharLS can index its tables out of range on
 * unusual JPEG-LS parameters (all fixed in later DCMTK releases).  So the
 * fragment a frame starts in is found here, checked for those cases, and
 * handed to DCMTK by index, so that it decodes exactly what was checked. */

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static unsigned be16(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }

static std::string check_rle(const uint8_t *d, uint32_t len, const PixFmt &pf)
{
    if (len < 64) return "RLE fragment shorter than its header";
    uint32_t nseg = le32(d);
    if (nseg != (uint32_t)(pf.ba / 8)) return fmt("RLE data has %u segments, expected %d", nseg, pf.ba / 8);
    /* Every segment at least two bytes (one run), inside the fragment, in
     * order: then each one decodes to something and nothing is read
     * outside the fragment. */
    for (uint32_t s = 0; s < nseg; s++) {
        uint32_t off = le32(d + 4 + 4 * s);
        uint32_t next = s + 1 < nseg ? le32(d + 8 + 4 * s) : len;
        if (off < 64 || off > len || next > len || next < off || next - off < 2)
            return "RLE header has invalid segment offsets";
    }
    return "";
}

/* Walks the markers the way DCMTK's bit-depth scan does, refusing the
 * stream where that scan would never end. */
static std::string check_jpeg(const uint8_t *d, uint32_t len)
{
    uint32_t off = 0;
    while (off + 4 < len) {
        unsigned m = be16(d + off);
        if (m == 0xffc0 || m == 0xffc1 || m == 0xffc2 || m == 0xffc3 || m == 0xffc5 ||
            m == 0xffc6 || m == 0xffc7 || m == 0xffc9 || m == 0xffca || m == 0xffcb ||
            m == 0xffcd || m == 0xffce || m == 0xffcf)
            return "";
        if (m == 0xff01) return "JPEG stream has a TEM marker before its frame header";
        if ((m >= 0xffd0 && m <= 0xffd9)) off += 2;
        else if (m == 0xffff) off += 1;
        else if (m == 0xffc4 || m == 0xffc8 || m == 0xffcc || (m >= 0xffda && m <= 0xffdf) ||
                 (m >= 0xffe0 && m <= 0xfffe))
            off += be16(d + off + 2) + 2;
        else if (d[off] == 0xff && d[off + 1] > 2 && d[off + 1] <= 0xbf) off += 2;
        else return ""; /* DCMTK stops here and reports the error itself */
    }
    return "";
}

/* The JPEG-LS header up to the start of scan: one component, at most 16
 * bits, lossless, and preset parameters (if any) within the sample range. */
static std::string check_jpegls(const uint8_t *d, uint32_t len)
{
    const char *bad = "JPEG-LS header is malformed or not lossless grayscale";
    if (len < 4 || d[0] != 0xff || d[1] != 0xd8) return bad;
    uint32_t off = 2;
    int bits = 0, have_lse = 0;
    unsigned maxval = 0, t1 = 0, t2 = 0, t3 = 0, reset = 0;
    for (;;) {
        if (off + 4 > len || d[off] != 0xff) return bad;
        unsigned m = d[off + 1], l = be16(d + off + 2);
        if (l < 2 || off + 2 + l > len) return bad;
        const uint8_t *seg = d + off + 4;
        if (m == 0xf7) { /* SOF55 */
            if (l != 11 || seg[5] != 1) return bad;
            bits = seg[0];
            if (bits < 2 || bits > 16) return bad;
        } else if (m == 0xf8) { /* LSE */
            if (l != 13 || seg[0] != 1) return bad;
            have_lse = 1;
            maxval = be16(seg + 1);
            t1 = be16(seg + 3);
            t2 = be16(seg + 5);
            t3 = be16(seg + 7);
            reset = be16(seg + 9);
        } else if (m == 0xda) { /* SOS */
            if (!bits || l != 8 || seg[0] != 1 || seg[3] != 0 || seg[4] != 0) return bad;
            if (have_lse) {
                unsigned top = (1u << bits) - 1;
                if (maxval > top || (t1 && (t1 > t2 || t2 > t3 || t3 > (maxval ? maxval : top))) ||
                    (reset && (reset < 3 || reset > (maxval > 255 ? maxval : 255))) ||
                    (!t1 && (t2 || t3)))
                    return bad;
            }
            return "";
        } else if (!((m >= 0xe0 && m <= 0xef) || m == 0xfe)) {
            return bad;
        }
        off += 2 + l;
    }
}

/* Finds the fragment frame `frame` (0-based) starts in and checks it.
 * start_frag carries DCMTK's "next fragment" from the previous frame (0
 * when unknown) and receives the fragment to decode from. */
static std::string check_frame(DcmPixelData *pd, E_TransferSyntax xs, const PixFmt &pf,
                               int nframes, int frame, Uint32 &start_frag)
{
    DcmXfer x(xs);
    if (!x.isEncapsulated()) return "";
    DcmPixelSequence *seq = NULL;
    if (pd->getEncapsulatedRepresentation(xs, NULL, seq).bad() || !seq)
        return "compressed Pixel Data without fragments";
    unsigned long card = seq->card();
    if (card < 2) return "compressed Pixel Data without fragments";
    Uint32 sf = start_frag;
    if (sf == 0) {
        if (frame == 0 || card == (unsigned long)nframes + 1) {
            sf = (Uint32)frame + 1;
        } else {
            /* Several fragments per frame: the Basic Offset Table says
             * where each frame starts. */
            DcmPixelItem *bot = NULL;
            Uint8 *b = NULL;
            if (seq->getItem(bot, 0).bad() || !bot || bot->getLength() < 4u * (Uint32)nframes ||
                bot->getUint8Array(b).bad() || !b)
                return "cannot locate the frame's fragments (no offset table)";
            uint64_t want = le32(b + 4 * frame), pos = 0;
            for (unsigned long i = 1; i < card && !sf; i++) {
                DcmPixelItem *it = NULL;
                if (seq->getItem(it, i).bad() || !it) break;
                if (pos == want) sf = (Uint32)i;
                pos += (uint64_t)it->getLength() + 8;
            }
            if (!sf) return "offset table does not match the fragments";
        }
    }
    if (sf >= card) return fmt("frame %d has no fragment", frame + 1);
    if (xs == EXS_RLELossless && card != (unsigned long)nframes + 1)
        return "RLE data must have one fragment per frame";
    DcmPixelItem *item = NULL;
    Uint8 *d = NULL;
    if (seq->getItem(item, sf).bad() || !item || item->getUint8Array(d).bad())
        return "unreadable fragment";
    Uint32 len = item->getLength();
    if (!d || len < 2) return "empty fragment";
    start_frag = sf;
    if (xs == EXS_RLELossless) return check_rle(d, len, pf);
    if (xs == EXS_JPEGLSLossless) return check_jpegls(d, len);
    return check_jpeg(d, len);
}

/* Decodes every frame the plan uses into v (acquisition grid), one file at
 * a time, then fills the gaps. */
static int decode_series(const char *const *paths, const Series &s, const Plan &p, ctg_vol *v,
                         std::string &why)
{
    size_t plane = (size_t)v->nx * (size_t)v->ny;
    float *out = (float *)v->data;
    struct Job {
        int file, frame, k;
    };
    std::vector<Job> jobs;
    for (size_t k = 0; k < p.src.size(); k++)
        if (p.src[k] >= 0) {
            const Frame &f = s.frames[p.src[k]];
            jobs.push_back({f.file, f.frame, (int)k});
        }
    /* Frames of one file in ascending order, so compressed frames are
     * found by walking the fragments forward. */
    std::sort(jobs.begin(), jobs.end(), [](const Job &a, const Job &b) {
        return a.file != b.file ? a.file < b.file : a.frame < b.frame;
    });
    std::vector<uint8_t> buf;
    for (size_t j = 0; j < jobs.size();) {
        const char *path = paths[jobs[j].file];
        DcmFileFormat ff;
        OFCondition c = ff.loadFile(path, EXS_Unknown, EGL_noChange, DCM_MaxReadLength,
                                    ERM_autoDetect);
        if (c.bad()) {
            why = fmt("cannot read %s: %s", path, c.text());
            return access(path, R_OK) == 0 ? CTG_EFORMAT : CTG_EIO;
        }
        DcmDataset *ds = ff.getDataset();
        PixFmt pf;
        std::string bad = read_pixfmt(ds, &pf);
        if (bad.empty() && (pf.rows != v->ny || pf.cols != v->nx))
            bad = "image size changed since it was first read";
        DcmElement *el = NULL;
        Uint32 fsize = 0;
        if (bad.empty() && (ds->findAndGetElement(DCM_PixelData, el).bad() || !el))
            bad = "no Pixel Data";
        if (bad.empty() && (el->getUncompressedFrameSize(ds, fsize).bad() ||
                            (uint64_t)fsize != (uint64_t)plane * (uint64_t)(pf.ba / 8)))
            bad = "Pixel Data does not match Rows, Columns and Bits Allocated";
        if (!bad.empty()) {
            why = fmt("%s: %s", path, bad.c_str());
            return CTG_EFORMAT;
        }
        /* Only our checked path may decode: the element must be DCMTK's
         * pixel data class in the file's own transfer syntax. */
        E_TransferSyntax xs = ds->getOriginalXfer();
        int nframes = get_int(ds, DCM_NumberOfFrames, 1);
        if (el->ident() != EVR_PixelData || nframes < 1 || nframes > MAX_FRAMES) {
            why = fmt("%s: unusable Pixel Data", path);
            return CTG_EFORMAT;
        }
        DcmPixelData *pd = OFstatic_cast(DcmPixelData *, el);
        buf.resize((size_t)fsize + 2);
        Uint32 start_frag = 0;
        int prev_frame = 0;
        DcmFileCache cache;
        for (; j < jobs.size() && path == paths[jobs[j].file]; j++) {
            const Job &jb = jobs[j];
            const Frame &f = s.frames[p.src[jb.k]];
            OFString color;
            /* A frame that does not follow the last one decoded is looked up
             * from the start (offset table or fragment scan). */
            if (jb.frame != prev_frame + 1) start_frag = 0;
            bad = check_frame(pd, xs, pf, nframes, jb.frame - 1, start_frag);
            if (!bad.empty()) {
                why = fmt("frame %d of %s: %s", jb.frame, path, bad.c_str());
                return CTG_EFORMAT;
            }
            c = el->getUncompressedFrame(ds, (Uint32)(jb.frame - 1), start_frag, buf.data(),
                                         (Uint32)buf.size(), color, &cache);
            if (c.bad()) {
                why = fmt("cannot decode frame %d of %s: %s", jb.frame, path, c.text());
                return CTG_EFORMAT;
            }
            prev_frame = jb.frame;
            to_hu(buf.data(), pf, f.slope, f.intercept, out + (size_t)jb.k * plane, plane);
        }
    }

    /* Missing slices: linear interpolation between the neighbours. */
    for (size_t k = 0; k < p.src.size(); k++) {
        if (p.src[k] >= 0) continue;
        size_t a = k - 1, b = k;
        while (p.src[b] < 0) b++;
        for (size_t m = k; m < b; m++) {
            float t = (float)(m - a) / (float)(b - a);
            const float *fa = out + a * plane, *fb = out + b * plane;
            float *dst = out + m * plane;
            for (size_t i = 0; i < plane; i++) dst[i] = (1.0f - t) * fa[i] + t * fb[i];
        }
        k = b;
    }
    return 0;
}

/* ---- choosing the series ------------------------------------------------- */

/* The slice normal of a series' first image (zero without orientation). */
static void series_normal(const Series &s, double n[3])
{
    const double *o = s.frames[0].iop;
    if (!s.frames[0].has_iop) {
        n[0] = n[1] = n[2] = 0;
        return;
    }
    n[0] = o[1] * o[5] - o[2] * o[4];
    n[1] = o[2] * o[3] - o[0] * o[5];
    n[2] = o[0] * o[4] - o[1] * o[3];
}

static int is_axial(const Series &s)
{
    double n[3];
    series_normal(s, n);
    return s.frames[0].has_iop && fabs(n[2]) >= fabs(n[0]) && fabs(n[2]) >= fabs(n[1]);
}

static void add_skipped(char *dst, size_t cap, const Series &s, const std::string &reason)
{
    size_t len = strlen(dst);
    if (len + 1 >= cap) return;
    snprintf(dst + len, cap - len, "%s: %s\n", series_name(s), reason.c_str());
    /* A truncated line still ends the buffer cleanly. */
    if (strlen(dst) == cap - 1) dst[cap - 2] = '\n';
}

/* The whole job; C++ exceptions are caught by the caller. */
static int build(const char *const *paths, size_t npaths, const dcm_vol_opts &o, ctg_vol **out,
                 dcm_vol_info *info, std::string &why)
{
    if (npaths > MAX_FILES) {
        why = fmt("%zu files exceed the limit of %d", npaths, MAX_FILES);
        return CTG_EREJECT;
    }
    Study st;
    st.total_frames = 0;
    st.unreadable = 0;
    for (size_t i = 0; i < npaths; i++) {
        int rc = scan_file(paths[i], (int)i, st, why);
        if (rc < 0) return rc;
    }
    info->nseries = (int)st.series.size();
    if (st.unreadable)
        snprintf(info->skipped, sizeof info->skipped,
                 "%d file(s) not readable as DICOM (first: %s)\n", st.unreadable,
                 st.unreadable_first.c_str());

    /* Candidates in order of preference: axial before other orientations,
     * then more slices, then the lower series number, then the UID (so the
     * choice does not depend on the order of the files). */
    std::vector<size_t> cand;
    for (size_t i = 0; i < st.series.size(); i++) {
        if (!st.series[i].frames.empty()) cand.push_back(i);
    }
    std::sort(cand.begin(), cand.end(), [&st](size_t a, size_t b) {
        const Series &x = st.series[a], &y = st.series[b];
        int ax = is_axial(x), ay = is_axial(y);
        if (ax != ay) return ax > ay;
        if (x.frames.size() != y.frames.size()) return x.frames.size() > y.frames.size();
        if (x.number != y.number) return x.number < y.number;
        return x.uid < y.uid;
    });

    const char *forced = o.series_uid && o.series_uid[0] ? o.series_uid : NULL;
    Plan plan;
    long chosen = -1;
    int rc = CTG_EREJECT;
    std::string best_why;
    if (forced) {
        auto it = st.by_uid.find(forced);
        if (it == st.by_uid.end()) {
            why = fmt("series %s is not among the %zu files", forced, npaths);
            return CTG_EREJECT;
        }
        Series &s = st.series[it->second];
        if (s.frames.empty()) {
            why = fmt("series %s: %s", forced, s.excluded.c_str());
            return CTG_EREJECT;
        }
        std::string r;
        rc = plan_series(paths, s, o, plan, r);
        if (rc < 0) {
            why = fmt("series %s: %s", forced, r.c_str());
            return rc;
        }
        chosen = (long)it->second;
    } else {
        for (size_t ci = 0; ci < cand.size() && chosen < 0; ci++) {
            Series &s = st.series[cand[ci]];
            std::string r;
            int prc = plan_series(paths, s, o, plan, r);
            if (prc == 0) {
                chosen = (long)cand[ci];
                break;
            }
            if (ci == 0) {
                rc = prc;
                best_why = fmt("series %s (%zu images): %s", series_name(s), s.frames.size(),
                               r.c_str());
            }
            add_skipped(info->skipped, sizeof info->skipped, s, r);
        }
    }

    /* Everything else goes into skipped with its reason. */
    for (size_t i = 0; i < st.series.size(); i++) {
        const Series &s = st.series[i];
        if ((long)i == chosen) continue;
        if (s.frames.empty()) {
            add_skipped(info->skipped, sizeof info->skipped, s, s.excluded);
            continue;
        }
        if (chosen < 0 || forced) {
            if (forced) add_skipped(info->skipped, sizeof info->skipped, s, "not the requested series");
            continue;
        }
        /* Candidates ranked above the chosen one were rejected (listed
         * above); the rest lost on orientation or size. */
        size_t pos = std::find(cand.begin(), cand.end(), i) - cand.begin();
        size_t cpos = std::find(cand.begin(), cand.end(), (size_t)chosen) - cand.begin();
        if (pos < cpos) continue;
        const Series &c = st.series[chosen];
        if (is_axial(c) && !is_axial(s)) {
            double nrm[3];
            series_normal(s, nrm);
            add_skipped(info->skipped, sizeof info->skipped, s,
                        fmt("%s images; an axial series is preferred",
                            s.frames[0].has_iop ? orientation_name(nrm) : "unoriented"));
        } else {
            add_skipped(info->skipped, sizeof info->skipped, s,
                        fmt("%zu images; the chosen series has %zu", s.frames.size(),
                            c.frames.size()));
        }
    }

    if (chosen < 0) {
        if (cand.empty()) {
            why = fmt("no CT image series among %zu file(s)", npaths);
            if (info->skipped[0]) {
                std::string first(info->skipped, strcspn(info->skipped, "\n"));
                why += " (" + first + ")";
            }
            return CTG_EREJECT;
        }
        why = "no usable CT series: " + best_why;
        return rc;
    }

    Series &s = st.series[chosen];
    int nx = s.frames[0].cols, ny = s.frames[0].rows, nz = (int)plan.src.size();
    ctg_vol *v = ctg_vol_new(nx, ny, nz, CTG_F32);
    if (!v) return CTG_ENOMEM;
    /* Acquisition grid: i along a row, j down a column, k along the normal
     * in the order the slices were sorted. */
    const Frame &first = s.frames[plan.src[0]];
    for (int r = 0; r < 3; r++) {
        v->aff[r][0] = plan.r[r] * plan.ps[1];
        v->aff[r][1] = plan.c[r] * plan.ps[0];
        v->aff[r][2] = plan.n[r] * plan.spacing;
        v->aff[r][3] = first.ipp[r];
    }
    double acq[3][4];
    memcpy(acq, v->aff, sizeof acq);

    char (*sop)[65] = NULL;
    int *frame = NULL;
    int axis = 2, reversed = 0;
    rc = decode_series(paths, s, plan, v, why);
    if (rc < 0) goto fail;
    rc = ctg_vol_canonical(v);
    if (rc < 0) goto fail;

    /* Which canonical axis the slice normal became, and whether it was
     * flipped: for an axial series that is k, and the per-slice records are
     * then exactly in the volume's k order.  For a sagittal or coronal
     * series the slices run along canonical i or j; the records are in the
     * order along that axis (see dcm_vol_info in dicom.h). */
    for (int a = 0; a < 3; a++) {
        double d = 0, n2 = 0;
        for (int r = 0; r < 3; r++) {
            d += v->aff[r][a] * acq[r][2];
            n2 += acq[r][2] * acq[r][2];
        }
        if (fabs(fabs(d) / n2 - 1.0) < 1e-3) {
            axis = a;
            reversed = d < 0;
        }
    }
    if (axis != 2)
        log_info("series %s: no axial series; using %s slices (they run along canonical axis %c)",
                 series_name(s), orientation_name(plan.n), "ijk"[axis]);

    sop = (char(*)[65])calloc((size_t)nz, sizeof *sop);
    frame = (int *)calloc((size_t)nz, sizeof *frame);
    if (!sop || !frame) {
        rc = CTG_ENOMEM;
        goto fail;
    }
    for (int k = 0; k < nz; k++) {
        int src = plan.src[reversed ? nz - 1 - k : k];
        if (src < 0) continue;
        OFStandard::strlcpy(sop[k], s.frames[src].sop, sizeof sop[k]);
        frame[k] = s.frames[src].frame;
    }
    OFStandard::strlcpy(info->study_uid, s.study, sizeof info->study_uid);
    OFStandard::strlcpy(info->series_uid, s.uid.c_str(), sizeof info->series_uid);
    OFStandard::strlcpy(info->frame_of_ref_uid, s.for_uid, sizeof info->frame_of_ref_uid);
    OFStandard::strlcpy(info->sop_class, s.sop_class, sizeof info->sop_class);
    OFStandard::strlcpy(info->series_desc, s.desc, sizeof info->series_desc);
    OFStandard::strlcpy(info->patient_position, s.ppos, sizeof info->patient_position);
    info->series_number = s.number;
    info->nslices = nz;
    info->filled = plan.filled;
    info->slice_spacing = plan.spacing;
    info->enhanced = s.enhanced;
    info->slice_sop = sop;
    info->slice_frame = frame;
    info->slice_axis = axis;
    if (plan.filled)
        log_info("series %s: %d missing slice(s) filled by interpolation", series_name(s),
                 plan.filled);
    *out = v;
    return 0;

fail:
    free(sop);
    free(frame);
    ctg_vol_free(v);
    return rc;
}

int dcm_series_volume(const char *const *paths, size_t npaths, const dcm_vol_opts *opts,
                      ctg_vol **out, dcm_vol_info *info, char *why, size_t n)
{
    dcm_vol_info local;
    char why_local[1];
    dcm_vol_opts dflt;
    memset(&dflt, 0, sizeof dflt);
    if (!info) info = &local;
    if (!why || n == 0) {
        why = why_local;
        n = sizeof why_local;
    }
    memset(info, 0, sizeof *info);
    why[0] = 0;
    *out = NULL;
    if (!paths && npaths) {
        snprintf(why, n, "no files");
        return CTG_EINVAL;
    }
    dcm_global_init();

    int rc;
    std::string reason;
    try {
        rc = build(paths, npaths, opts ? *opts : dflt, out, info, reason);
    } catch (const std::bad_alloc &) {
        rc = CTG_ENOMEM;
    } catch (...) {
        rc = CTG_EFORMAT;
        reason = "internal error while reading the series";
    }
    if (rc < 0) {
        snprintf(why, n, "%s", reason.empty() ? ctg_strerror(rc) : reason.c_str());
        /* Only the explanation survives a failure. */
        free(info->slice_sop);
        free(info->slice_frame);
        info->slice_sop = NULL;
        info->slice_frame = NULL;
    }
    if (info == &local) dcm_vol_info_free(&local);
    return rc;
}

void dcm_vol_info_free(dcm_vol_info *info)
{
    if (!info) return;
    free(info->slice_sop);
    free(info->slice_frame);
    info->slice_sop = NULL;
    info->slice_frame = NULL;
}
