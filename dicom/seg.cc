/*
 * seg.cc - DICOM Segmentation Storage (binary) of an organ label map
 * (dcm_write_seg, dicom.h), UIDs made from hex digests (dcm_uid_from_hex),
 * and two helpers the other derived-object writers share through
 * dicom_int.h: new random UIDs and the durable file write.
 *
 * The label map lies on the canonical grid of the volume dcm_series_volume()
 * built from the source series (core/vol.h).  The source slices run along
 * one canonical axis (dcm_vol_info.slice_axis: k for an axial series, i or
 * j for a sagittal or coronal one), so every plane of the grid across that
 * axis is the plane of one source slice.  A frame is one such plane for one
 * segment.  Along a row (the column index) runs the lower of the two other
 * axes, down a column the higher one: i and j for axial, i and k for
 * coronal, j and k for sagittal.  Image Orientation (Patient) is those two
 * affine columns normalised, the same for every frame (a shared functional
 * group); Image Position (Patient) is the affine at the plane's first
 * voxel.  Frames come per segment, then in increasing slice order, and only
 * where the segment has voxels.  Each frame's Derivation Image group
 * references the source instance (and frame, for Enhanced CT) of its slice;
 * a slice that dcm_series_volume() filled by interpolation has no source,
 * and its frames carry a Derivation Image item with an empty Source Image
 * Sequence (type 2).
 *
 * The object itself is DCMTK's DcmSegmentation (dcmseg) with the dcmfg
 * functional groups; patient, study and frame of reference are imported
 * from one file of the source series.  Two of DCMTK 3.6.7's habits are
 * worked around here.  Its functional-group check on write visits every
 * frame once per frame, quadratic in the frame count (an abdomen with a
 * hundred organs at 1-2 mm has several thousand frames), so it is off: the
 * structure it checks (Frame Content in every frame, nothing both shared
 * and per frame) holds by construction.  And it packs binary frames wrongly
 * when a frame's pixel count is not a multiple of 8 (DCMTK issue #1132), so
 * such objects get their Pixel Data packed here.  The tests read every
 * frame back with an independent reader and run dciodvfy.
 *
 * Threading: reentrant.  DCMTK's dictionary and codec lists are set up once
 * (dcm_global_init) and only read here.  No C++ exception leaves this file.
 */
#include "dicom.h"
#include "dicom_int.h"

#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <new>
#include <set>
#include <string>
#include <vector>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcostrmf.h"
#include "dcmtk/dcmdata/dctk.h"
#include "dcmtk/dcmdata/dcuid.h"
#include "dcmtk/dcmfg/fgderimg.h"
#include "dcmtk/dcmfg/fgfracon.h"
#include "dcmtk/dcmfg/fgpixmsr.h"
#include "dcmtk/dcmfg/fgplanor.h"
#include "dcmtk/dcmfg/fgplanpo.h"
#include "dcmtk/dcmiod/cielabutil.h"
#include "dcmtk/dcmiod/iodreferences.h"
#include "dcmtk/dcmseg/segdoc.h"
#include "dcmtk/dcmseg/segment.h"

namespace {

/* Content Label (CS: capitals, digits, space, underscore; 16 at most). */
const char *const kContentLabel = "CTGLIP_ORGANS";
const char *const kDefaultDesc = "ctglip organ segmentation";

/* One write call's error state (dicom_int.h). */
struct Ctx : DcmWhy {};

/* DCMTK reports running out of memory as a condition, everything else it
 * refuses is a DICOM-level problem. */
int cond_err(const OFCondition &r)
{
    return r == EC_MemoryExhausted ? CTG_ENOMEM : CTG_EDICOM;
}

const char *nz(const char *s) { return s ? s : ""; }
bool empty(const char *s) { return !s || !s[0]; }


/* "2.25." and the decimal value of a 128-bit big-endian number (PS3.5
 * B.2): at most 5 + 39 characters.  b is used up. */
void uid_from_bytes(unsigned char b[16], char out[65])
{
    char dig[40];
    int nd = 0;
    for (;;) {
        /* One long division of the whole number by 10 per digit. */
        unsigned rem = 0;
        int nonzero = 0;
        for (int i = 0; i < 16; i++) {
            unsigned cur = rem * 256u + b[i];
            b[i] = (unsigned char)(cur / 10u);
            rem = cur % 10u;
            nonzero |= b[i];
        }
        dig[nd++] = (char)('0' + rem);
        if (!nonzero) break;
    }
    memcpy(out, "2.25.", 5);
    int o = 5;
    while (nd) out[o++] = dig[--nd];
    out[o] = 0;
}

/* A single string value of at most max characters (LO 64, SH 16): no
 * backslash (the value separator) and no control characters.  DCMTK's own
 * checks leave lengths alone, and a PACS does not. */
bool text_ok(const char *s, size_t max)
{
    size_t len = 0;
    for (const unsigned char *q = (const unsigned char *)s; *q; q++, len++)
        if (*q < 0x20 || *q == 0x7f || *q == '\\') return false;
    return len <= max;
}

/* A DS value (at most 16 characters) as close to v as fits. */
std::string fmt_ds(double v)
{
    char buf[64];
    if (fabs(v) < 1e-12) v = 0; /* no "-0" or "1e-17" for what is zero */
    for (int prec = 15; prec > 0; prec--) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strlen(buf) <= 16) break;
    }
    return buf;
}

void now_strings(std::string &date, std::string &tm)
{
    time_t t = time(nullptr);
    struct tm lt;
    char d[16], h[16];
    localtime_r(&t, &lt);
    strftime(d, sizeof d, "%Y%m%d", &lt);
    strftime(h, sizeof h, "%H%M%S", &lt);
    date = d;
    tm = h;
}

/* The geometry of the frames: which canonical axis the slices run along
 * (a), which axes the frame's columns (u, along a row) and rows (v, down a
 * column) follow, and the unit vectors and spacings of those axes. */
struct Planes {
    int a, u, v;
    int dims[3];
    size_t stride[3];
    double row[3], col[3]; /* unit vectors along u and v */
    double len[3];         /* mm per voxel along each axis */
};

int plan_geometry(Ctx &c, const ctg_vol *lab, int axis, Planes &p)
{
    p.a = axis;
    p.u = axis == 0 ? 1 : 0;
    p.v = axis == 2 ? 1 : 2;
    p.dims[0] = lab->nx;
    p.dims[1] = lab->ny;
    p.dims[2] = lab->nz;
    p.stride[0] = 1;
    p.stride[1] = (size_t)lab->nx;
    p.stride[2] = (size_t)lab->nx * (size_t)lab->ny;
    for (int ax = 0; ax < 3; ax++) {
        double s = 0;
        for (int r = 0; r < 3; r++) s += lab->aff[r][ax] * lab->aff[r][ax];
        p.len[ax] = sqrt(s);
        if (!(p.len[ax] > 1e-9) || !std::isfinite(p.len[ax]))
            return dcm__fail_why(c, CTG_EINVAL, "label map affine column %d has no length: no geometry",
                            ax);
    }
    for (int r = 0; r < 3; r++) {
        p.row[r] = lab->aff[r][p.u] / p.len[p.u];
        p.col[r] = lab->aff[r][p.v] / p.len[p.v];
    }
    /* Image planes have orthogonal rows and columns; the canonical grid of
     * a series volume always has. */
    double d = p.row[0] * p.col[0] + p.row[1] * p.col[1] + p.row[2] * p.col[2];
    if (fabs(d) > 1e-4)
        return dcm__fail_why(c, CTG_EINVAL, "label map axes %c and %c are not orthogonal (cos %.6f)",
                        "ijk"[p.u], "ijk"[p.v], d);
    return 0;
}

/* Image Position (Patient) of plane s: the affine at its first voxel. */
void plane_position(const ctg_vol *lab, const Planes &p, int s, std::string xyz[3])
{
    for (int r = 0; r < 3; r++) xyz[r] = fmt_ds(lab->aff[r][3] + lab->aff[r][p.a] * s);
}

/* A coded concept for DCMTK, checked; scheme defaults to SNOMED CT. */
int make_code(Ctx &c, const dcm_code &in, const char *what, int segno, CodeSequenceMacro &out)
{
    const char *scheme = empty(in.scheme) ? "SCT" : in.scheme;
    OFCondition r = out.set(in.value, scheme, nz(in.meaning), "", OFTrue);
    if (r.bad() || out.check(OFTrue).bad())
        return dcm__fail_why(
            c, CTG_EINVAL, "segment %d: %s code (%.20s, %.16s, \"%.64s\") is not valid: %s", segno,
            what, nz(in.value), scheme, nz(in.meaning), r.bad() ? r.text() : "incomplete");
    return 0;
}

/* The DICOM CIELab triplet of an sRGB colour (PS3.3 C.10.7.1.1: L 0..100
 * and a, b -128..127 scaled to 0..65535). */
void rgb_to_dicom_lab(const uint8_t rgb[3], Uint16 lab[3])
{
    double L, A, B;
    IODCIELabUtil::rgb2DicomLab(L, A, B, rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0);
    double v[3] = {L, A, B};
    for (int i = 0; i < 3; i++) {
        double x = round(v[i]);
        lab[i] = (Uint16)(x < 0 ? 0 : x > 65535 ? 65535 : x);
    }
}

int check_input(Ctx &c, const dcm_seg_input *in)
{
    const dcm_source *src = in->src;
    const dcm_vol_info *info = src ? src->info : nullptr;
    const ctg_vol *lab = in->labels;
    if (!src || !info || !src->files || src->nfiles < 1)
        return dcm__fail_why(c, CTG_EINVAL, "no source series (its files and dcm_vol_info are needed)");
    if (!info->slice_sop || !info->slice_frame || info->nslices < 1)
        return dcm__fail_why(c, CTG_EINVAL, "source dcm_vol_info has no per-slice records");
    if (info->slice_axis < 0 || info->slice_axis > 2)
        return dcm__fail_why(c, CTG_EINVAL, "source slice axis %d is not 0, 1 or 2", info->slice_axis);
    if (!dcm__uid_ok(info->study_uid) || !dcm__uid_ok(info->series_uid) ||
        !dcm__uid_ok(info->sop_class))
        return dcm__fail_why(c, CTG_EINVAL,
                        "source dcm_vol_info lacks valid study, series or SOP class UIDs");
    if (!lab || !lab->data)
        return dcm__fail_why(c, CTG_EINVAL, "no label map");
    if (lab->dtype != CTG_U8)
        return dcm__fail_why(c, CTG_EINVAL, "label map dtype %d is not CTG_U8", lab->dtype);
    int dims[3] = {lab->nx, lab->ny, lab->nz};
    int a = info->slice_axis;
    if (dims[0] < 1 || dims[1] < 1 || dims[2] < 1)
        return dcm__fail_why(c, CTG_EINVAL, "label map size %dx%dx%d is empty", dims[0], dims[1],
                        dims[2]);
    if (dims[a] != info->nslices)
        return dcm__fail_why(c, CTG_EINVAL,
                        "label map has %d planes along axis %c but the source series has %d slices",
                        dims[a], "ijk"[a], info->nslices);
    for (int ax = 0; ax < 3; ax++)
        if (ax != a && dims[ax] > 65535)
            return dcm__fail_why(c, CTG_EINVAL,
                            "label map plane of %d voxels along %c is too wide for a frame",
                            dims[ax], "ijk"[ax]);
    if (in->nsegments < 1 || !in->segments)
        return dcm__fail_why(c, CTG_EINVAL, "no segments");
    if (in->nsegments > 255)
        return dcm__fail_why(c, CTG_EINVAL, "%d segments; a U8 label map has at most 255",
                        in->nsegments);
    int seen[256] = {0};
    for (int i = 0; i < in->nsegments; i++) {
        const dcm_seg_segment &s = in->segments[i];
        if (s.label < 1 || s.label > 255)
            return dcm__fail_why(c, CTG_EINVAL, "segment %d: label %d is out of range 1..255", i + 1,
                            s.label);
        if (seen[s.label])
            return dcm__fail_why(c, CTG_EINVAL, "segment %d: label %d is segment %d's already", i + 1,
                            s.label, seen[s.label]);
        seen[s.label] = i + 1;
        if (empty(s.label_name) || !text_ok(s.label_name, 64))
            return dcm__fail_why(c, CTG_EINVAL,
                            "segment %d (label %d): name '%.80s' is not 1 to 64 "
                            "characters without control characters",
                            i + 1, s.label, nz(s.label_name));
        if (empty(s.category.value) || empty(s.type.value))
            return dcm__fail_why(c, CTG_EINVAL, "segment %d (%.64s) needs a category and a type code",
                            i + 1, s.label_name);
        const dcm_code *codes[3] = {&s.category, &s.type, &s.type_modifier};
        for (int q = 0; q < 3; q++) {
            const dcm_code *k = codes[q];
            if (empty(k->value)) continue;
            /* Values beyond 16 characters go to Long Code Value. */
            if (!text_ok(k->value, 64) || !text_ok(nz(k->scheme), 16) || empty(k->meaning) ||
                !text_ok(k->meaning, 64))
                return dcm__fail_why(c, CTG_EINVAL,
                                "segment %d (%.64s): code (%.20s, %.20s, \"%.80s\") needs "
                                "a value, a scheme of at most 16 and a meaning of at most 64 "
                                "characters",
                                i + 1, s.label_name, k->value, nz(k->scheme), nz(k->meaning));
        }
        if (!empty(s.tracking_id) && !text_ok(s.tracking_id, 1024))
            return dcm__fail_why(c, CTG_EINVAL, "segment %d (%.64s): tracking ID '%.80s' is not valid",
                            i + 1, s.label_name, s.tracking_id);
        /* Segment Description asks for both or neither. */
        if (empty(s.tracking_id) != empty(s.tracking_uid))
            return dcm__fail_why(c, CTG_EINVAL,
                            "segment %d (%.64s): tracking ID and tracking UID go together", i + 1,
                            s.label_name);
        if (!empty(s.tracking_uid) && !dcm__uid_ok(s.tracking_uid))
            return dcm__fail_why(c, CTG_EBADUID, "segment %d (%.64s): tracking UID '%.80s' is not valid",
                            i + 1, s.label_name, s.tracking_uid);
    }
    const dcm_equipment *eq = in->eq;
    if (!eq || empty(eq->manufacturer) || empty(eq->software_version) || empty(eq->model_name))
        return dcm__fail_why(c, CTG_EINVAL,
                        "equipment needs manufacturer, software version and model name");
    const struct {
        const char *what, *v;
    } lo[] = {{"manufacturer", eq->manufacturer},   {"software version", eq->software_version},
              {"model name", eq->model_name},       {"model version", nz(eq->model_version)},
              {"institution", nz(eq->institution)}, {"series description", nz(in->series_desc)}};
    for (size_t q = 0; q < sizeof lo / sizeof lo[0]; q++)
        if (!text_ok(lo[q].v, 64))
            return dcm__fail_why(c, CTG_EINVAL,
                            "%s '%.80s' is not at most 64 characters without control "
                            "characters",
                            lo[q].what, lo[q].v);
    if (!empty(eq->device_uid) && !dcm__uid_ok(eq->device_uid))
        return dcm__fail_why(c, CTG_EBADUID, "device UID '%.80s' is not valid", eq->device_uid);
    if (!empty(in->series_uid) && !dcm__uid_ok(in->series_uid))
        return dcm__fail_why(c, CTG_EBADUID, "series UID '%.80s' is not valid", in->series_uid);
    return 0;
}

/* Loads the header of one file of the source series (pixel data and other
 * large values stay on disk) for the patient, study and frame of reference
 * it carries. */
int load_source_header(Ctx &c, const dcm_source *src, DcmFileFormat &ff)
{
    const dcm_vol_info *info = src->info;
    std::string last;
    bool loaded = false;
    for (int f = 0; f < src->nfiles; f++) {
        if (!src->files[f]) continue;
        OFCondition r = ff.loadFile(src->files[f], EXS_Unknown, EGL_noChange, 256);
        if (r.bad()) {
            last = std::string(src->files[f]) + ": " + r.text();
            continue;
        }
        loaded = true;
        OFString series, study;
        DcmDataset *ds = ff.getDataset();
        ds->findAndGetOFString(DCM_SeriesInstanceUID, series);
        ds->findAndGetOFString(DCM_StudyInstanceUID, study);
        if (series == info->series_uid && study == info->study_uid) return 0;
    }
    if (!loaded)
        return dcm__fail_why(c, CTG_EIO, "no source file could be read (%.300s)", last.c_str());
    return dcm__fail_why(c, CTG_EINVAL, "none of the %d source files belongs to series %s of study %s",
                    src->nfiles, info->series_uid, info->study_uid);
}

/* Patient, study and frame of reference from the source; the General
 * Equipment the source came with is the scanner's, so it is replaced by
 * ours. */
int set_hierarchy(Ctx &c, DcmSegmentation &seg, DcmDataset &srcds, const dcm_seg_input *in,
                  const IODGeneralEquipmentModule::EquipmentInfo &eqi,
                  const std::string &series_uid, const std::string &date, const std::string &tm)
{
    const dcm_vol_info *info = in->src->info;
    const dcm_equipment *eq = in->eq;
    OFCondition r = seg.importHierarchy(srcds, OFTrue, OFTrue, OFTrue, OFFalse, OFTrue);
    if (r.bad())
        return dcm__fail_why(c, cond_err(r), "cannot import patient and study from the source: %s",
                        r.text());
    if (empty(info->frame_of_ref_uid) || !dcm__uid_ok(info->frame_of_ref_uid))
        return dcm__fail_why(c, CTG_EINVAL, "source series %s has no valid Frame of Reference UID",
                        info->series_uid);
    /* The volume's UIDs are what the label map was made on; the file's
     * agree with them (load_source_header checked the study). */
    if (r.good()) r = seg.getStudy().setStudyInstanceUID(info->study_uid);
    if (r.good()) r = seg.getFrameOfReference().setFrameOfReferenceUID(info->frame_of_ref_uid);
    if (r.bad())
        return dcm__fail_why(c, cond_err(r), "cannot set study or frame of reference: %s", r.text());

    seg.getEquipment().clearData();
    r = seg.setEquipmentInfo(eqi, OFTrue);
    if (r.good() && !empty(eq->institution))
        r = seg.getEquipment().setInstitutionName(eq->institution);
    if (r.bad())
        return dcm__fail_why(c, CTG_EINVAL,
                        "equipment (manufacturer '%.64s', model '%.64s', version '%.64s', "
                        "institution '%.64s') is not valid: %s",
                        eq->manufacturer, eq->model_name, eq->software_version, nz(eq->institution),
                        r.text());

    IODGeneralSeriesModule &ser = seg.getSeries();
    r = ser.setModality("SEG");
    if (r.good()) r = ser.setSeriesInstanceUID(series_uid.c_str());
    if (r.good()) r = ser.setSeriesNumber(std::to_string(in->series_number).c_str());
    if (r.good())
        r = ser.setSeriesDescription(empty(in->series_desc) ? kDefaultDesc : in->series_desc);
    if (r.good()) r = ser.setSeriesDate(date.c_str());
    if (r.good()) r = ser.setSeriesTime(tm.c_str());
    if (r.bad())
        return dcm__fail_why(c, CTG_EINVAL, "series (number %d, description '%.80s'): %s",
                        in->series_number, nz(in->series_desc), r.text());

    /* Content and instance creation: the same moment, from eq or the
     * clock. */
    r = seg.getGeneralImage().setContentDate(date.c_str());
    if (r.good()) r = seg.getGeneralImage().setContentTime(tm.c_str());
    if (r.good()) r = seg.getSOPCommon().setInstanceCreationDate(date.c_str());
    if (r.good()) r = seg.getSOPCommon().setInstanceCreationTime(tm.c_str());
    if (r.good()) r = seg.getSOPCommon().setInstanceCreatorUID(CTG_IMPLEMENTATION_UID);
    if (r.bad())
        return dcm__fail_why(c, CTG_EINVAL, "creation date/time '%s' '%s' is not valid: %s",
                        date.c_str(), tm.c_str(), r.text());

    /* Common Instance Reference: every source instance (a filled slice has
     * none), all in the source series of this study. */
    IODReferences refs;
    std::set<std::string> done; /* an Enhanced CT object holds many slices */
    for (int s = 0; s < info->nslices; s++) {
        const char *sop = info->slice_sop[s];
        if (!sop[0] || !done.insert(sop).second) continue;
        OFVector<Uint32> frames;
        IODImageReference *ref = new IODImageReference("", info->study_uid, info->series_uid, sop,
                                                       info->sop_class, frames);
        if (!refs.add(ref)) {
            delete ref;
            return dcm__fail_why(c, CTG_EINVAL, "source instance UID '%.80s' cannot be referenced", sop);
        }
    }
    if (seg.getCommonInstanceReference().addReferences(refs, info->study_uid) != refs.size())
        return dcm__fail_why(c, CTG_EDICOM, "cannot add the source instances to Referenced Series");
    return 0;
}

int add_segments(Ctx &c, DcmSegmentation &seg, const dcm_seg_input *in)
{
    const dcm_equipment *eq = in->eq;
    for (int i = 0; i < in->nsegments; i++) {
        const dcm_seg_segment &s = in->segments[i];
        CodeSequenceMacro cat, type;
        int rc;
        if ((rc = make_code(c, s.category, "category", i + 1, cat)) < 0 ||
            (rc = make_code(c, s.type, "type", i + 1, type)) < 0)
            return rc;
        DcmSegment *raw = nullptr;
        OFCondition r = DcmSegment::create(raw, s.label_name, cat, type, DcmSegTypes::SAT_AUTOMATIC,
                                           eq->model_name);
        std::unique_ptr<DcmSegment> sp(raw);
        if (r.bad() || !raw)
            return dcm__fail_why(c, r == EC_MemoryExhausted ? CTG_ENOMEM : CTG_EINVAL,
                            "segment %d: label '%.80s' or algorithm name '%.80s' is not valid: %s",
                            i + 1, s.label_name, eq->model_name, r.text());
        if (!empty(s.type_modifier.value)) {
            CodeSequenceMacro *mod = new CodeSequenceMacro();
            raw->getSegmentedPropertyTypeModifierCode().push_back(mod);
            if ((rc = make_code(c, s.type_modifier, "type modifier", i + 1, *mod)) < 0) return rc;
        }
        /* Segmentation Algorithm Identification: CID 7162 family "Artificial
         * Intelligence", the model by name and identity. */
        AlgorithmIdentificationMacro &alg = raw->getSegmentationAlgorithmIdentification();
        r = alg.getAlgorithmFamilyCode().set("123110", "DCM", "Artificial Intelligence");
        if (r.good()) r = alg.setAlgorithmName(eq->model_name);
        if (r.good()) r = alg.setAlgorithmVersion(empty(eq->model_version) ? eq->software_version
                                                                          : eq->model_version);
        if (r.good()) r = alg.setAlgorithmSource(eq->manufacturer);
        if (r.bad())
            return dcm__fail_why(c, CTG_EINVAL,
                            "algorithm identification (name '%.64s', version '%.64s'): %s",
                            eq->model_name, nz(eq->model_version), r.text());
        Uint16 lab[3];
        rgb_to_dicom_lab(s.rgb, lab);
        r = raw->setRecommendedDisplayCIELabValue(lab[0], lab[1], lab[2]);
        if (r.good() && !empty(s.tracking_id)) r = raw->setTrackingID(s.tracking_id);
        if (r.good() && !empty(s.tracking_uid)) r = raw->setTrackingUID(s.tracking_uid);
        if (r.bad())
            return dcm__fail_why(c, CTG_EINVAL, "segment %d (%.64s): colour or tracking ID '%.64s': %s",
                            i + 1, s.label_name, nz(s.tracking_id), r.text());
        Uint16 number = 0;
        r = seg.addSegment(raw, number);
        if (r.bad()) return dcm__fail_why(c, cond_err(r), "cannot add segment %d: %s", i + 1, r.text());
        sp.release();
        if (number != i + 1)
            return dcm__fail_why(c, CTG_EDICOM, "segment %d was numbered %u", i + 1, (unsigned)number);
    }
    return 0;
}

/* Shared functional groups (spacing, orientation) and the two dimensions
 * a viewer sorts frames by: segment, then position. */
int add_shared(Ctx &c, DcmSegmentation &seg, const Planes &p)
{
    FGPixelMeasures meas;
    std::string spacing = fmt_ds(p.len[p.v]) + "\\" + fmt_ds(p.len[p.u]);
    OFCondition r = meas.setPixelSpacing(spacing.c_str());
    if (r.good()) r = meas.setSliceThickness(fmt_ds(p.len[p.a]).c_str());
    if (r.good()) r = seg.addForAllFrames(meas);
    FGPlaneOrientationPatient orient;
    if (r.good())
        r = orient.setImageOrientationPatient(fmt_ds(p.row[0]).c_str(), fmt_ds(p.row[1]).c_str(),
                                              fmt_ds(p.row[2]).c_str(), fmt_ds(p.col[0]).c_str(),
                                              fmt_ds(p.col[1]).c_str(), fmt_ds(p.col[2]).c_str());
    if (r.good()) r = seg.addForAllFrames(orient);
    if (r.bad()) return dcm__fail_why(c, cond_err(r), "cannot set the frame geometry: %s", r.text());

    char dim_uid[65];
    dcm__uid_random(dim_uid);
    IODMultiframeDimensionModule &dims = seg.getDimensions();
    r = dims.addDimensionIndex(DCM_ReferencedSegmentNumber, dim_uid,
                               DCM_SegmentIdentificationSequence, "Segment Number");
    if (r.good())
        r = dims.addDimensionIndex(DCM_ImagePositionPatient, dim_uid, DCM_PlanePositionSequence,
                                   "Image Position (Patient)");
    if (r.bad()) return dcm__fail_why(c, cond_err(r), "cannot set the dimensions: %s", r.text());
    return 0;
}

/* Plane s of the label map as one byte per frame pixel, 1 where the label
 * is L: column index along u, row index along v. */
void extract_plane(const uint8_t *data, const Planes &p, int s, Uint8 L, Uint8 *o)
{
    const uint8_t *base = data + p.stride[p.a] * (size_t)s;
    int nu = p.dims[p.u], nv = p.dims[p.v];
    if (p.u == 0 && p.v == 1) {
        size_t np = (size_t)nu * (size_t)nv;
        for (size_t q = 0; q < np; q++) o[q] = base[q] == L;
        return;
    }
    for (int r = 0; r < nv; r++) {
        const uint8_t *line = base + p.stride[p.v] * (size_t)r;
        for (int cc = 0; cc < nu; cc++) *o++ = line[p.stride[p.u] * (size_t)cc] == L;
    }
}

/* One frame per segment and slice where it has voxels.  present[L * ns +
 * s] says whether label L occurs in slice s. */
int add_frames(Ctx &c, DcmSegmentation &seg, const dcm_seg_input *in, const Planes &p,
               const std::vector<uint8_t> &present)
{
    const dcm_vol_info *info = in->src->info;
    const ctg_vol *lab = in->labels;
    int ns = p.dims[p.a], nu = p.dims[p.u], nv = p.dims[p.v];

    /* Position index of each slice among the slices any frame uses: the
     * second dimension index, 1 for the lowest plane. */
    std::vector<Uint32> rank((size_t)ns, 0);
    Uint32 next = 1;
    for (int s = 0; s < ns; s++) {
        bool used = false;
        for (int i = 0; i < in->nsegments && !used; i++)
            used = present[(size_t)in->segments[i].label * ns + s] != 0;
        if (used) rank[s] = next++;
    }

    CodeSequenceMacro derivation("113076", "DCM", "Segmentation");
    CodeSequenceMacro purpose("121322", "DCM", "Source image for image processing operation");
    std::vector<Uint8> buf((size_t)nu * (size_t)nv);
    for (int i = 0; i < in->nsegments; i++) {
        const Uint8 L = (Uint8)in->segments[i].label;
        for (int s = 0; s < ns; s++) {
            if (!present[(size_t)L * ns + s]) continue;
            extract_plane((const uint8_t *)lab->data, p, s, L, buf.data());

            std::string xyz[3];
            plane_position(lab, p, s, xyz);
            FGPlanePosPatient pos;
            OFCondition r =
                pos.setImagePositionPatient(xyz[0].c_str(), xyz[1].c_str(), xyz[2].c_str());
            FGFrameContent content;
            if (r.good()) r = content.setDimensionIndexValues((Uint32)i + 1, 0);
            if (r.good()) r = content.setDimensionIndexValues(rank[s], 1);
            /* The source slice, with its frame number when it is one frame
             * of an Enhanced CT object. */
            FGDerivationImage deriv;
            DerivationImageItem *item = nullptr;
            if (r.good()) r = deriv.addDerivationImageItem(derivation, "", item);
            if (r.good() && item && info->slice_sop[s][0]) {
                SourceImageItem *src = new SourceImageItem();
                item->getSourceImageItems().push_back(src);
                src->getPurposeOfReferenceCode() = purpose;
                ImageSOPInstanceReferenceMacro &ref = src->getImageSOPInstanceReference();
                r = ref.setReferencedSOPClassUID(info->sop_class);
                if (r.good()) r = ref.setReferencedSOPInstanceUID(info->slice_sop[s]);
                if (r.good() && info->enhanced) {
                    if (info->slice_frame[s] < 1 || info->slice_frame[s] > 65535)
                        return dcm__fail_why(c, CTG_EINVAL, "source slice %d has frame number %d", s,
                                        info->slice_frame[s]);
                    r = ref.addReferencedFrameNumber((Uint16)info->slice_frame[s]);
                }
            }
            if (r.bad())
                return dcm__fail_why(c, cond_err(r), "segment %d, slice %d: cannot describe the frame "
                                "(source '%.80s'): %s", i + 1, s, info->slice_sop[s], r.text());
            OFVector<FGBase *> groups;
            groups.push_back(&pos);
            groups.push_back(&content);
            groups.push_back(&deriv);
            r = seg.addFrame(buf.data(), (Uint16)(i + 1), groups);
            if (r.bad())
                return dcm__fail_why(c, cond_err(r), "segment %d, slice %d: cannot add the frame: %s",
                                i + 1, s, r.text());
        }
    }
    return 0;
}

/* Pixel Data packed again, frame after frame with no padding between
 * them, the first pixel of each in the bit after the last one of the frame
 * before (PS3.5 8.1.1).  DCMTK 3.6.7 loses bits when a frame's pixel count
 * is not a multiple of 8 (DCMTK issue #1132, fixed in 3.6.9), so such
 * objects get their Pixel Data from here, in the frame order of
 * add_frames(). */
int repack_pixel_data(Ctx &c, DcmDataset *ds, const dcm_seg_input *in, const Planes &p,
                      const std::vector<uint8_t> &present, size_t nframes)
{
    int ns = p.dims[p.a];
    size_t plane = (size_t)p.dims[p.u] * (size_t)p.dims[p.v];
    size_t bytes = (plane * nframes + 7) / 8;
    if (bytes > 0xFFFFFFFEu) return dcm__fail_why(c, CTG_ETOOBIG, "segmentation pixel data too large");
    std::vector<Uint8> out(bytes, 0), buf(plane);
    size_t bit = 0;
    for (int i = 0; i < in->nsegments; i++) {
        const Uint8 L = (Uint8)in->segments[i].label;
        for (int s = 0; s < ns; s++) {
            if (!present[(size_t)L * ns + s]) continue;
            extract_plane((const uint8_t *)in->labels->data, p, s, L, buf.data());
            for (size_t q = 0; q < plane; q++, bit++)
                if (buf[q]) out[bit >> 3] |= (Uint8)(1u << (bit & 7));
        }
    }
    if (bit != plane * nframes)
        return dcm__fail_why(c, CTG_EDICOM, "internal error: %zu frames packed, %zu written",
                        bit / plane, nframes);
    OFCondition r = ds->putAndInsertUint8Array(DCM_PixelData, out.data(), (unsigned long)bytes);
    if (r.bad()) return dcm__fail_why(c, cond_err(r), "cannot set Pixel Data: %s", r.text());
    return 0;
}

/* The model as Contributing Equipment (what SR and SEG of one run share),
 * and its Device UID in General Equipment too.  DCMTK's equipment module
 * knows neither, so they go straight into the written data set. */
int add_contributing(Ctx &c, DcmDataset *ds, const dcm_equipment *eq, const std::string &serial,
                     const std::string &date, const std::string &tm)
{
    OFCondition r;
    if (!empty(eq->device_uid)) r = ds->putAndInsertString(DCM_DeviceUID, eq->device_uid);
    DcmItem *it = nullptr;
    if (r.good()) r = ds->findOrCreateSequenceItem(DCM_ContributingEquipmentSequence, it, -2);
    if (r.good() && it) {
        DcmItem *purpose = nullptr;
        r = it->findOrCreateSequenceItem(DCM_PurposeOfReferenceCodeSequence, purpose, -2);
        if (r.good() && purpose) {
            r = purpose->putAndInsertString(DCM_CodeValue, "109102");
            if (r.good()) r = purpose->putAndInsertString(DCM_CodingSchemeDesignator, "DCM");
            if (r.good()) r = purpose->putAndInsertString(DCM_CodeMeaning, "Processing Equipment");
        }
        if (r.good()) r = it->putAndInsertString(DCM_Manufacturer, eq->manufacturer);
        if (r.good() && !empty(eq->institution))
            r = it->putAndInsertString(DCM_InstitutionName, eq->institution);
        if (r.good()) r = it->putAndInsertString(DCM_ManufacturerModelName, eq->model_name);
        if (r.good()) r = it->putAndInsertString(DCM_DeviceSerialNumber, serial.c_str());
        if (r.good()) r = it->putAndInsertString(DCM_SoftwareVersions, eq->software_version);
        if (r.good() && !empty(eq->device_uid))
            r = it->putAndInsertString(DCM_DeviceUID, eq->device_uid);
        if (r.good()) r = it->putAndInsertString(DCM_ContributionDateTime, (date + tm).c_str());
        if (r.good())
            r = it->putAndInsertString(DCM_ContributionDescription, "Automatic organ segmentation");
    }
    if (r.bad())
        return dcm__fail_why(c, cond_err(r), "cannot write Contributing Equipment: %s", r.text());
    return 0;
}

int write_seg(Ctx &c, const dcm_seg_input *in, const char *path, char *sop_out)
{
    int rc;
    if ((rc = check_input(c, in)) < 0) return rc;
    const dcm_vol_info *info = in->src->info;
    const dcm_equipment *eq = in->eq;
    const ctg_vol *lab = in->labels;
    Planes p;
    if ((rc = plan_geometry(c, lab, info->slice_axis, p)) < 0) return rc;

    /* Which label occurs in which slice, in one pass over the map. */
    int ns = p.dims[p.a];
    std::vector<uint8_t> present((size_t)256 * (size_t)ns, 0);
    std::vector<uint64_t> count(256, 0);
    const uint8_t *d = (const uint8_t *)lab->data;
    for (int k = 0; k < lab->nz; k++)
        for (int j = 0; j < lab->ny; j++)
            for (int i = 0; i < lab->nx; i++) {
                uint8_t L = *d++;
                if (!L) continue;
                int s = p.a == 0 ? i : p.a == 1 ? j : k;
                present[(size_t)L * ns + s] = 1;
                count[L]++;
            }
    /* A segment without frames is no use to a viewer, and DCMTK refuses
     * objects with more segments than frames. */
    for (int i = 0; i < in->nsegments; i++)
        if (!count[in->segments[i].label])
            return dcm__fail_why(c, CTG_EINVAL,
                            "segment %d (%.64s, label %d) has no voxels in the label map; "
                            "leave absent structures out",
                            i + 1, in->segments[i].label_name, in->segments[i].label);

    std::string date, tm;
    now_strings(date, tm);
    if (!empty(eq->creation_date)) date = eq->creation_date;
    if (!empty(eq->creation_time)) tm = eq->creation_time;
    char uid[65];
    std::string series_uid;
    if (!empty(in->series_uid)) {
        series_uid = in->series_uid;
    } else {
        dcm__uid_random(uid);
        series_uid = uid;
    }
    dcm__uid_random(uid);
    std::string sop_uid = uid;

    DcmFileFormat srcff;
    if ((rc = load_source_header(c, in->src, srcff)) < 0) return rc;

    /* The model's identity (its checksum) serves as the device's serial
     * number: it is what tells one model from the next. */
    std::string serial = empty(eq->model_version) ? "0" : eq->model_version;
    IODGeneralEquipmentModule::EquipmentInfo eqi(eq->manufacturer, eq->model_name, serial.c_str(),
                                                 eq->software_version);
    const char *desc = empty(in->series_desc) ? kDefaultDesc : in->series_desc;
    /* Content Creator's Name is a person name; the manufacturer stands in
     * as the family name (a name without '^' is the retired form). */
    std::string creator = std::string(eq->manufacturer) + "^";
    ContentIdentificationMacro ci("1", kContentLabel, desc, creator.c_str());
    DcmSegmentation *raw = nullptr;
    OFCondition r = DcmSegmentation::createBinarySegmentation(raw, (Uint16)p.dims[p.v],
                                                              (Uint16)p.dims[p.u], eqi, ci);
    std::unique_ptr<DcmSegmentation> seg(raw);
    if (r.bad() || !raw)
        return dcm__fail_why(
            c, r == EC_MemoryExhausted ? CTG_ENOMEM : CTG_EINVAL,
            "cannot start the segmentation (description '%.80s', manufacturer '%.64s', model "
            "'%.64s', serial '%.64s', version '%.64s'): %s",
            desc, eq->manufacturer, eq->model_name, serial.c_str(), eq->software_version, r.text());
    seg->setCheckFGOnWrite(OFFalse);
    /* The dimension check looks for the per-frame groups in the wrong data
     * set (DCMTK 3.6.7) and would only warn; the indices are set below. */
    seg->setCheckDimensionsOnWrite(OFFalse);

    if ((rc = set_hierarchy(c, *seg, *srcff.getDataset(), in, eqi, series_uid, date, tm)) < 0)
        return rc;
    r = seg->getSOPCommon().setSOPInstanceUID(sop_uid.c_str());
    if (r.bad()) return dcm__fail_why(c, CTG_EDICOM, "cannot set the SOP Instance UID: %s", r.text());
    if ((rc = add_segments(c, *seg, in)) < 0 || (rc = add_shared(c, *seg, p)) < 0 ||
        (rc = add_frames(c, *seg, in, p, present)) < 0)
        return rc;

    DcmFileFormat ff;
    r = seg->writeDataset(*ff.getDataset());
    if (r.bad())
        return dcm__fail_why(c, cond_err(r), "cannot build the segmentation data set: %s", r.text());
    size_t nframes = seg->getNumberOfFrames();
    seg.reset(); /* the frames now live in Pixel Data */
    if ((size_t)p.dims[p.u] * (size_t)p.dims[p.v] % 8 &&
        (rc = repack_pixel_data(c, ff.getDataset(), in, p, present, nframes)) < 0)
        return rc;
    if ((rc = add_contributing(c, ff.getDataset(), eq, serial, date, tm)) < 0) return rc;
    if ((rc = dcm__save_file(ff, path, c.why, c.n)) < 0) {
        c.err = rc;
        return rc;
    }
    if (sop_out) snprintf(sop_out, 65, "%s", sop_uid.c_str());
    return 0;
}


} // namespace

/* ---- helpers shared through dicom_int.h ------------------------------------ */

void dcm__uid_random(char out[65])
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
        /* No entropy source: DCMTK's generator (time, pid, host) is unique
         * too, only longer. */
        char buf[100];
        dcmGenerateUniqueIdentifier(buf, SITE_INSTANCE_UID_ROOT);
        OFStandard::strlcpy(out, buf, 65);
        return;
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* UUID version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant */
    uid_from_bytes(b, out);
}

int dcm__save_file(DcmFileFormat &ff, const char *path, char *why, size_t n)
{
    const E_TransferSyntax xfer = EXS_LittleEndianExplicit;
    static std::atomic<unsigned> seq(0);
    Ctx c;
    c.why = why;
    c.n = n;

    /* DCMTK fills the meta header (SOP UIDs, transfer syntax) with its own
     * implementation UID; ours replaces it. */
    DcmMetaInfo *mi = ff.getMetaInfo();
    OFCondition r = ff.validateMetaInfo(xfer, EWM_createNewMeta);
    if (r.good()) r = mi->putAndInsertString(DCM_ImplementationClassUID, CTG_IMPLEMENTATION_UID);
    if (r.good())
        r = mi->putAndInsertString(DCM_ImplementationVersionName, CTG_IMPLEMENTATION_NAME);
    if (r.good())
        r = mi->computeGroupLengthAndPadding(
            EGL_withGL, EPD_noChange, META_HEADER_DEFAULT_TRANSFERSYNTAX, EET_UndefinedLength);
    if (r.bad()) return dcm__fail_why(c, CTG_EDICOM, "cannot build the file meta header: %s", r.text());

    /* The temp file sits beside the target, so the rename stays in one
     * file system; pid and a counter keep concurrent writers apart. */
    std::string p(path), dir, base;
    size_t slash = p.rfind('/');
    if (slash == std::string::npos) {
        dir = ".";
        base = p;
    } else {
        dir = slash == 0 ? "/" : p.substr(0, slash);
        base = p.substr(slash + 1);
    }
    if (base.empty()) return dcm__fail_why(c, CTG_EINVAL, "output path '%.200s' names a folder", path);
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s/.%s.%ld.%u.tmp", dir.c_str(), base.c_str(), (long)getpid(),
                 seq.fetch_add(1)) >= (int)sizeof tmp)
        return dcm__fail_why(c, CTG_EINVAL, "output path too long");

    char msg[512];
    int err = dcm__write_durable(ff, tmp, path, xfer, msg, sizeof msg);
    if (err) return dcm__fail_why(c, err, "%s", msg);
    if ((err = ctg_fsync_dir(dir.c_str())) < 0)
        return dcm__fail_why(c, err, "cannot sync %s: %s", dir.c_str(), ctg_strerror(err));
    return 0;
}

/* ---- public ------------------------------------------------------------------- */

int dcm_uid_from_hex(const char *hex, char out[65])
{
    if (!out) return CTG_EINVAL;
    out[0] = 0;
    if (!hex) return CTG_EINVAL;
    /* The whole string must be hex, so a path or a prefixed digest is not
     * silently read up to its first odd character. */
    size_t len = strlen(hex);
    if (len < 32) return CTG_EINVAL;
    unsigned char b[16];
    for (size_t i = 0; i < len; i++) {
        char ch = hex[i];
        int v = ch >= '0' && ch <= '9' ? ch - '0'
              : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
              : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
              : -1;
        if (v < 0) return CTG_EINVAL;
        if (i < 32) {
            if (i % 2 == 0) b[i / 2] = (unsigned char)(v << 4);
            else b[i / 2] |= (unsigned char)v;
        }
    }
    uid_from_bytes(b, out);
    return 0;
}

int dcm_write_seg(const dcm_seg_input *in, const char *path, char sop_uid[65], char *why, size_t n)
{
    if (why && n) why[0] = 0;
    if (sop_uid) sop_uid[0] = 0;
    if (!in || !path || !path[0]) {
        if (why && n) snprintf(why, n, "no input or no output path");
        return CTG_EINVAL;
    }
    dcm_global_init();
    Ctx c;
    c.why = why;
    c.n = n;
    try {
        return write_seg(c, in, path, sop_uid);
    } catch (const std::bad_alloc &) {
        c.err = 0;
        return dcm__fail_why(c, CTG_ENOMEM, "out of memory writing the segmentation");
    } catch (...) {
        c.err = 0;
        return dcm__fail_why(c, CTG_EDICOM, "internal error writing the segmentation");
    }
}
