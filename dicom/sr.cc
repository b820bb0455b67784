/*
 * sr.cc - the findings report: a Comprehensive 3D SR holding a TID 1500
 * Measurement Report (dcm_write_sr, dicom.h), built with DCMTK's dcmsr/cmr
 * template classes so that the tree follows the templates row by row.
 *
 * The content tree (DCMR template and row numbers in DCMTK's annotations):
 *
 *   CONTAINER (126000, DCM, "Imaging Measurement Report")        TID 1500
 *     HAS CONCEPT MOD  Language = English                        TID 1204
 *     HAS OBS CONTEXT  Observer Type = Device, Device Observer
 *                      UID / Name / Manufacturer / Model Name    TID 1001-1004
 *     HAS CONCEPT MOD  Procedure reported =
 *                      (25045-6, LN, "CT unspecified body region")
 *     CONTAINS CONTAINER Image Library                           TID 1600
 *       CONTAINER Image Library Group (descriptors common to the series)
 *         IMAGE  one per source instance (with its own descriptors)
 *     CONTAINS CONTAINER Imaging Measurements
 *       CONTAINER Measurement Group, one per organ                TID 1411
 *         Tracking Identifier (TEXT), Tracking Unique Identifier (UIDREF)
 *         Finding (CODE) = the organ's structure code
 *         Referenced Segment (IMAGE: the SEG, one segment number)
 *         Source series for segmentation (UIDREF)
 *         Finding Site (CODE) [+ Laterality]
 *         NUM (118565006, SCT, "Volume") in ml                      TID 1419
 *         NUM (112031, DCM, "Attenuation Coefficient") in [hnsf'U],
 *             Derivation = Mean
 *         NUM (111012, DCM, "Certainty of Finding") in %, one per finding,
 *             Finding = the finding's code, equivalent meaning in words
 *           (each NUM with Algorithm Name/Version, TID 4019; the
 *           certainties also carry the decision threshold as a parameter)
 *         CODE (finding) = (52101004, SCT, "Present") or
 *                          (2667000, SCT, "Absent"), one per finding
 *         TEXT (121106, DCM, "Comment") for an organ that failed the
 *             zero-shot organ check, naming what it looked like
 *
 * The probability of a finding is reported as DICOM's "Certainty of
 * Finding" (as CAD reports do) in percent, post-coordinated with the
 * finding it belongs to, rather than as a private concept.
 *
 * Around the tree: patient and study copied from the first source file, a
 * new SR series, General Equipment and a Contributing Equipment item
 * naming the model (Device UID = the model's UID), Current Requested
 * Procedure Evidence listing every source instance and the SEG,
 * Predecessor Documents when the report replaces an earlier one,
 * COMPLETE / UNVERIFIED, Coding Scheme Identification for private
 * schemes.  The file is written durably (dcm__save_file: temp file,
 * fsync, rename, fsync of the folder) in explicit VR little endian.
 *
 * Threading: reentrant.  dcmsr/cmr's context groups fill static code lists
 * on first use; they are all initialised once per process (pthread_once)
 * before the first report, so concurrent workers only read them.
 */
#include "dicom.h"
#include "dicom_int.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cmath>
#include <new>
#include <set>
#include <string>
#include <vector>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dctk.h"
#include "dcmtk/dcmsr/cmr/init.h"
#include "dcmtk/dcmsr/cmr/tid1500.h"
#include "dcmtk/dcmsr/codes/dcm.h"
#include "dcmtk/dcmsr/codes/sct.h"
#include "dcmtk/dcmsr/dsrdoc.h"

namespace {

/* Our private coding scheme, for findings that have no SNOMED CT code.
 * Its code values are the finding keys of etc/findings.conf. */
const char *const kPrivateScheme = "99CTGLIP";
const char *const kPrivateSchemeName = "ctglip finding keys (etc/findings.conf)";

/* One write call's error state (dicom_int.h). */
struct Ctx : DcmWhy {};

/* A DCMTK call that cannot fail on input we already checked: a failure is
 * DCMTK's, reported with what we were doing. */
int dcmtk_ok(Ctx &c, const OFCondition &r, const char *what)
{
    if (r.good()) return 0;
    return dcm__fail_why(c, CTG_EDICOM, "cannot %s: %s", what, r.text());
}

bool empty(const char *s) { return !s || !s[0]; }

/* Text we write ourselves goes into LO/ST/UT values of a data set whose
 * character set is that of the source: plain printable ASCII is right in
 * every one of them, and no backslash (the LO value separator). */
bool text_ok(const char *s, size_t max)
{
    if (!s) return false;
    size_t len = strlen(s);
    if (len == 0 || len > max) return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '\\') return false;
    return true;
}

/* A coded concept: all three parts or (when optional) none.  Code values
 * longer than 16 characters become Long Code Values (UC), which DCMTK
 * chooses by itself. */
int check_code(Ctx &c, const dcm_code &k, const char *what, bool required)
{
    bool none = empty(k.value) && empty(k.scheme) && empty(k.meaning);
    if (none) {
        if (required) return dcm__fail_why(c, CTG_EINVAL, "%s: no code", what);
        return 0;
    }
    if (empty(k.value) || empty(k.scheme) || empty(k.meaning))
        return dcm__fail_why(c, CTG_EINVAL, "%s: code value, scheme and meaning are all needed "
                        "(got '%s', '%s', '%s')", what, k.value ? k.value : "",
                        k.scheme ? k.scheme : "", k.meaning ? k.meaning : "");
    if (!text_ok(k.value, 64) || !text_ok(k.scheme, 16) || !text_ok(k.meaning, 64))
        return dcm__fail_why(c, CTG_EINVAL, "%s: code (%.70s, %.20s, \"%.70s\") is not printable ASCII "
                        "within 64/16/64 characters", what, k.value, k.scheme, k.meaning);
    DSRCodedEntryValue v(k.value, k.scheme, k.meaning);
    if (!v.isValid())
        return dcm__fail_why(c, CTG_EINVAL, "%s: code (%s, %s, \"%s\") is not a valid DICOM code", what,
                        k.value, k.scheme, k.meaning);
    return 0;
}

DSRCodedEntryValue code_of(const dcm_code &k)
{
    return DSRCodedEntryValue(k.value, k.scheme, k.meaning);
}

bool private_scheme(const char *scheme)
{
    return !strncmp(scheme, "99", 2) || !strcmp(scheme, "L");
}

/* A measurement value as a DS string (at most 16 characters) with the
 * given number of decimals, fewer when the value is too large for them. */
std::string fmt_num(double v, int decimals)
{
    char buf[64];
    if (std::fabs(v) < 0.5 * std::pow(10.0, -decimals)) v = 0; /* no "-0.0" */
    for (int d = decimals; d >= 0; d--) {
        snprintf(buf, sizeof buf, "%.*f", d, v);
        if (strlen(buf) <= 16) return buf;
    }
    snprintf(buf, sizeof buf, "%.9g", v);
    return buf;
}

std::string get_str(DcmItem *ds, const DcmTagKey &tag)
{
    OFString v;
    if (ds->findAndGetOFStringArray(tag, v).good()) {
        size_t b = 0, e = v.length();
        while (b < e && (v[b] == ' ' || v[b] == 0)) b++;
        while (e > b && (v[e - 1] == ' ' || v[e - 1] == 0)) e--;
        return std::string(v.c_str() + b, e - b);
    }
    return std::string();
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

/* The identity of a referenced object, read from its file. */
struct Ref {
    std::string study, series, cls, sop;
};

/* Loads a file's header (large values stay on disk) and its four UIDs. */
int load_header(Ctx &c, const char *path, const char *what, DcmFileFormat &ff, Ref &ref)
{
    /* DCMTK says "file not found" for a missing file and an unreadable
     * one alike; the system says which. */
    struct stat st;
    if (stat(path, &st) < 0)
        return dcm__fail_why(c, ctg_errno(errno), "%s %s: %s", what, path, strerror(errno));
    OFCondition r = ff.loadFile(path, EXS_Unknown, EGL_noChange, 4096, ERM_fileOnly);
    if (r.bad()) return dcm__fail_why(c, CTG_EDICOM, "%s %s cannot be read: %s", what, path, r.text());
    DcmDataset *ds = ff.getDataset();
    ref.study = get_str(ds, DCM_StudyInstanceUID);
    ref.series = get_str(ds, DCM_SeriesInstanceUID);
    ref.cls = get_str(ds, DCM_SOPClassUID);
    ref.sop = get_str(ds, DCM_SOPInstanceUID);
    if (!dcm__uid_ok(ref.study.c_str()) || !dcm__uid_ok(ref.series.c_str()) ||
        !dcm__uid_ok(ref.cls.c_str()) || !dcm__uid_ok(ref.sop.c_str()))
        return dcm__fail_why(c, CTG_EDICOM, "%s %s lacks a valid study, series, SOP class or SOP "
                        "instance UID", what, path);
    return 0;
}

bool is_sr_class(const std::string &cls)
{
    /* Every SR storage class lives under 1.2.840.10008.5.1.4.1.1.88. */
    return cls.compare(0, 27, "1.2.840.10008.5.1.4.1.1.88.") == 0;
}

/* Everything the caller passes is checked here, before anything is read
 * or built, so that a bad argument comes back as CTG_EINVAL with the
 * reason instead of as a report a PACS or validator rejects. */
int check_input(Ctx &c, const dcm_sr_input *in, const char *path)
{
    if (empty(path)) return dcm__fail_why(c, CTG_EINVAL, "no output path");
    const dcm_source *src = in->src;
    if (!src || !src->files || src->nfiles < 1 || !src->info)
        return dcm__fail_why(c, CTG_EINVAL, "no source series (files and dcm_vol_info)");
    for (int i = 0; i < src->nfiles; i++)
        if (empty(src->files[i])) return dcm__fail_why(c, CTG_EINVAL, "source file %d has no path", i);
    const dcm_vol_info *info = src->info;
    if (!dcm__uid_ok(info->study_uid) || !dcm__uid_ok(info->series_uid))
        return dcm__fail_why(c, CTG_EINVAL, "the source volume info has no valid study and series UID");
    if (empty(in->seg_path)) return dcm__fail_why(c, CTG_EINVAL, "no SEG path");

    const dcm_equipment *eq = in->eq;
    if (!eq) return dcm__fail_why(c, CTG_EINVAL, "no equipment (model identity)");
    if (!text_ok(eq->manufacturer, 64))
        return dcm__fail_why(c, CTG_EINVAL, "equipment manufacturer missing or not printable ASCII of "
                        "at most 64 characters");
    if (!text_ok(eq->model_name, 64))
        return dcm__fail_why(c, CTG_EINVAL, "model name missing or not printable ASCII of at most 64 "
                        "characters");
    if (!text_ok(eq->model_version, 64))
        return dcm__fail_why(c, CTG_EINVAL, "model version missing or not printable ASCII of at most "
                        "64 characters");
    if (!empty(eq->software_version) && !text_ok(eq->software_version, 64))
        return dcm__fail_why(c, CTG_EINVAL, "software version is not printable ASCII of at most 64 "
                        "characters");
    if (!empty(eq->institution) && !text_ok(eq->institution, 64))
        return dcm__fail_why(c, CTG_EINVAL, "institution is not printable ASCII of at most 64 "
                        "characters");
    if (!dcm__uid_ok(eq->device_uid))
        return dcm__fail_why(c, CTG_EINVAL, "device UID '%.80s' is not a valid UID",
                        eq->device_uid ? eq->device_uid : "");
    if (!empty(eq->creation_date) && DcmDate::checkStringValue(eq->creation_date, "1").bad())
        return dcm__fail_why(c, CTG_EINVAL, "creation date '%.20s' is not a DICOM date (YYYYMMDD)",
                        eq->creation_date);
    if (!empty(eq->creation_time) && DcmTime::checkStringValue(eq->creation_time, "1").bad())
        return dcm__fail_why(c, CTG_EINVAL, "creation time '%.20s' is not a DICOM time (HHMMSS)",
                        eq->creation_time);

    if (!empty(in->series_uid) && !dcm__uid_ok(in->series_uid))
        return dcm__fail_why(c, CTG_EINVAL, "series UID '%.80s' is not a valid UID", in->series_uid);
    if (!empty(in->series_desc) && !text_ok(in->series_desc, 64))
        return dcm__fail_why(c, CTG_EINVAL, "series description is not printable ASCII of at most 64 "
                        "characters");

    if (in->norgans < 1 || !in->organs) return dcm__fail_why(c, CTG_EINVAL, "no organs to report");
    std::set<std::string> ids, uids;
    std::set<int> segs;
    for (int i = 0; i < in->norgans; i++) {
        const dcm_sr_organ *o = &in->organs[i];
        char what[96];
        snprintf(what, sizeof what, "organ %d", i);
        if (!text_ok(o->tracking_id, 64))
            return dcm__fail_why(c, CTG_EINVAL, "%s: tracking identifier missing or not printable "
                            "ASCII of at most 64 characters", what);
        snprintf(what, sizeof what, "organ %d (%s)", i, o->tracking_id);
        if (!dcm__uid_ok(o->tracking_uid))
            return dcm__fail_why(c, CTG_EINVAL, "%s: tracking UID '%.80s' is not a valid UID", what,
                            o->tracking_uid ? o->tracking_uid : "");
        if (o->segment_number < 1 || o->segment_number > 65535)
            return dcm__fail_why(c, CTG_EINVAL, "%s: segment number %d is not 1..65535", what,
                            o->segment_number);
        if (!ids.insert(o->tracking_id).second || !uids.insert(o->tracking_uid).second ||
            !segs.insert(o->segment_number).second)
            return dcm__fail_why(c, CTG_EINVAL, "%s: tracking identifier, tracking UID or segment "
                            "number %d repeats an earlier organ's", what, o->segment_number);
        int r;
        std::string w = std::string(what) + " finding site";
        if ((r = check_code(c, o->site, w.c_str(), true)) < 0) return r;
        w = std::string(what) + " laterality";
        if ((r = check_code(c, o->laterality, w.c_str(), false)) < 0) return r;
        if (!empty(o->laterality.value) &&
            !CID244e_Laterality(code_of(o->laterality)).hasSelectedValue())
            return dcm__fail_why(c, CTG_EINVAL, "%s: laterality is not usable", what);
        if (!std::isfinite(o->volume_ml) || o->volume_ml < 0)
            return dcm__fail_why(c, CTG_EINVAL, "%s: volume %g ml is not a finite value >= 0", what,
                            o->volume_ml);
        /* NaN is allowed (an organ without voxels has no mean) and is
         * written as "Not a number"; infinity is a bug upstream. */
        if (std::isinf(o->mean_hu))
            return dcm__fail_why(c, CTG_EINVAL, "%s: mean HU is infinite", what);
        if (o->low_confidence && o->nearest && !empty(o->nearest) && !text_ok(o->nearest, 64))
            return dcm__fail_why(c, CTG_EINVAL, "%s: nearest organ name is not printable ASCII of at "
                            "most 64 characters", what);
        if (o->nfindings < 0 || (o->nfindings > 0 && !o->findings))
            return dcm__fail_why(c, CTG_EINVAL, "%s: %d findings but no array", what, o->nfindings);
        std::set<std::string> seen;
        for (int j = 0; j < o->nfindings; j++) {
            const dcm_sr_finding *f = &o->findings[j];
            char fw[160];
            snprintf(fw, sizeof fw, "%s finding %d", what, j);
            if ((r = check_code(c, f->finding, fw, true)) < 0) return r;
            if (!seen.insert(std::string(f->finding.scheme) + ":" + f->finding.value).second)
                return dcm__fail_why(c, CTG_EINVAL, "%s: finding (%s, %s) is listed twice", what,
                                f->finding.value, f->finding.scheme);
            if (!(f->probability >= 0 && f->probability <= 1))
                return dcm__fail_why(c, CTG_EINVAL, "%s (%s): probability %g is not in [0, 1]", fw,
                                f->finding.meaning, f->probability);
            if (!(f->threshold >= 0 && f->threshold <= 1))
                return dcm__fail_why(c, CTG_EINVAL, "%s (%s): threshold %g is not in [0, 1]", fw,
                                f->finding.meaning, f->threshold);
        }
    }
    return 0;
}

/* The SEG the organs refer to: a Segmentation object of the same study
 * that has every segment number the organs name.  Where a segment carries
 * a tracking UID it must be the organ's (the SEG and the SR are read
 * together by viewers through it). */
int check_seg(Ctx &c, const dcm_sr_input *in, DcmFileFormat &ff, Ref &seg)
{
    int r;
    if ((r = load_header(c, in->seg_path, "SEG", ff, seg)) < 0) return r;
    if (seg.cls != UID_SegmentationStorage)
        return dcm__fail_why(c, CTG_EINVAL, "%s is not a Segmentation object (SOP class %s)",
                        in->seg_path, seg.cls.c_str());
    if (seg.study != in->src->info->study_uid)
        return dcm__fail_why(c, CTG_EINVAL, "SEG %s belongs to study %s, not to the source study %s",
                        in->seg_path, seg.study.c_str(), in->src->info->study_uid);
    DcmDataset *ds = ff.getDataset();
    for (int i = 0; i < in->norgans; i++) {
        const dcm_sr_organ *o = &in->organs[i];
        DcmItem *item = nullptr;
        bool found = false;
        for (signed long k = 0;
             ds->findAndGetSequenceItem(DCM_SegmentSequence, item, k).good(); k++) {
            Uint16 num = 0;
            if (item->findAndGetUint16(DCM_SegmentNumber, num).bad() || num != o->segment_number)
                continue;
            found = true;
            std::string tuid = get_str(item, DCM_TrackingUID);
            if (!tuid.empty() && tuid != o->tracking_uid)
                return dcm__fail_why(c, CTG_EINVAL, "organ %s: segment %d of the SEG has tracking UID "
                                "%s, the organ %s", o->tracking_id, o->segment_number,
                                tuid.c_str(), o->tracking_uid);
            break;
        }
        if (!found)
            return dcm__fail_why(c, CTG_EINVAL, "organ %s: the SEG %s has no segment %d",
                            o->tracking_id, in->seg_path, o->segment_number);
    }
    return 0;
}

/* The earlier report this one replaces: an SR of the same study. */
int check_predecessor(Ctx &c, const dcm_sr_input *in, Ref &pre)
{
    DcmFileFormat ff;
    int r;
    if ((r = load_header(c, in->predecessor_path, "predecessor SR", ff, pre)) < 0) return r;
    if (!is_sr_class(pre.cls))
        return dcm__fail_why(c, CTG_EINVAL, "predecessor %s is not a structured report (SOP class %s)",
                        in->predecessor_path, pre.cls.c_str());
    if (pre.study != in->src->info->study_uid)
        return dcm__fail_why(c, CTG_EINVAL, "predecessor %s belongs to study %s, not to the source "
                        "study %s", in->predecessor_path, pre.study.c_str(),
                        in->src->info->study_uid);
    return 0;
}

/* Header, image library entry and evidence reference of every source
 * instance.  The first file's data set is kept: patient and study come
 * from it. */
int add_sources(Ctx &c, const dcm_sr_input *in, TID1600_ImageLibrary &lib, DcmFileFormat &first,
                std::vector<Ref> &refs)
{
    const dcm_source *src = in->src;
    if (dcmtk_ok(c, lib.addImageGroup(), "start the image library group") < 0) return c.err;
    /* Every descriptor DCMTK derives from the header but the target
     * region: DCMTK codes Body Part Examined with the current CID 4031
     * codes (e.g. 818981001 "Abdomen"), which validators built on older
     * lists reject as errors, and the region says nothing the images do
     * not. */
    TID1600_ImageLibrary::ConceptNameList skip;
    skip.push_back(CODE_DCM_TargetRegion);
    std::set<std::string> seen;
    for (int i = 0; i < src->nfiles; i++) {
        DcmFileFormat local;
        DcmFileFormat &ff = i == 0 ? first : local;
        Ref ref;
        int r;
        if ((r = load_header(c, src->files[i], "source file", ff, ref)) < 0) return r;
        if (ref.study != src->info->study_uid || ref.series != src->info->series_uid)
            return dcm__fail_why(c, CTG_EINVAL, "source file %s is not of the analysed series %s of "
                            "study %s", src->files[i], src->info->series_uid,
                            src->info->study_uid);
        /* The same instance listed twice (a file stored twice) is one
         * image. */
        if (!seen.insert(ref.sop).second) continue;
        OFCondition cond = lib.addImageEntry(
            *ff.getDataset(), TID1600_ImageLibrary::withoutSelectedDescriptors, skip);
        if (cond.bad()) {
            /* An odd header whose descriptors DCMTK cannot map still
             * belongs in the library, by reference alone. */
            cond = lib.addImageEntry(*ff.getDataset(), TID1600_ImageLibrary::withoutDescriptors);
        }
        if (cond.bad())
            return dcm__fail_why(c, CTG_EDICOM, "cannot list %s in the image library: %s", src->files[i],
                            cond.text());
        refs.push_back(ref);
    }
    /* Orientation, spacing, thickness and the like are the same for every
     * slice; they are said once, on the group.  "Nothing to move" is not
     * an error. */
    OFCondition cond = lib.moveCommonImageDescriptorsToImageGroups();
    if (cond.bad() && cond != CMR_EC_NoImageLibraryEntryDescriptorsToBeMoved)
        return dcmtk_ok(c, cond, "group the image library descriptors");
    return 0;
}

/* The TID 4019 identification every measurement carries. */
template <class M>
int set_algorithm(Ctx &c, M &m, const dcm_equipment *eq)
{
    return dcmtk_ok(c, m.setAlgorithmIdentification(eq->model_name, eq->model_version),
                    "set the algorithm identification");
}

/* One TID 1411 group for one organ. */
int add_organ(Ctx &c, const dcm_sr_input *in, const dcm_sr_organ *o, CMR_TID1411_in_TID1500 &g,
              DcmDataset &segds)
{
    typedef CMR_TID1411_in_TID1500::MeasurementValue Value;
    const dcm_equipment *eq = in->eq;
    if (dcmtk_ok(c, g.setTrackingIdentifier(o->tracking_id), "set the tracking identifier") < 0 ||
        dcmtk_ok(c, g.setTrackingUniqueIdentifier(o->tracking_uid), "set the tracking UID") < 0 ||
        dcmtk_ok(c, g.setFinding(code_of(o->site)), "set the finding") < 0 ||
        dcmtk_ok(c, g.setReferencedSegment(segds, (Uint16)o->segment_number, OFFalse),
                 "reference the segment") < 0 ||
        dcmtk_ok(c, g.setSourceSeriesForSegmentation(in->src->info->series_uid),
                 "set the source series") < 0)
        return c.err;
    const CID244e_Laterality lat(empty(o->laterality.value) ? DSRCodedEntryValue()
                                                            : code_of(o->laterality));
    if (dcmtk_ok(c, g.addFindingSite(code_of(o->site), lat), "set the finding site") < 0)
        return c.err;

    /* Volume, in ml. */
    Value vol(fmt_num(o->volume_ml, 2).c_str(),
              CMR_CID7181(DSRCodedEntryValue("ml", "UCUM", "milliliter")));
    vol.setFloatingPointRepresentation(o->volume_ml, OFFalse);
    if (dcmtk_ok(c, g.addMeasurement(CMR_CID7469::Volume, vol), "add the volume") < 0 ||
        set_algorithm(c, g.getMeasurement(), eq) < 0)
        return c.err;

    /* Mean attenuation, in HU. */
    Value hu = std::isnan(o->mean_hu)
                   ? Value(CMR_CID42::NotANumber)
                   : Value(fmt_num(o->mean_hu, 1).c_str(), CMR_CID7181::HounsfieldUnit);
    if (!std::isnan(o->mean_hu)) hu.setFloatingPointRepresentation(o->mean_hu, OFFalse);
    if (dcmtk_ok(c, g.addMeasurement(CMR_CID7469(CODE_DCM_AttenuationCoefficient), hu),
                 "add the mean attenuation") < 0 ||
        dcmtk_ok(c, g.getMeasurement().setDerivation(CMR_CID7464::Mean),
                 "set the derivation") < 0 ||
        set_algorithm(c, g.getMeasurement(), eq) < 0)
        return c.err;

    /* The probability of each finding: Certainty of Finding, in percent,
     * modified by the finding it is about. */
    for (int j = 0; j < o->nfindings; j++) {
        const dcm_sr_finding *f = &o->findings[j];
        double pct = f->probability * 100.0;
        Value p(fmt_num(pct, 1).c_str(), CMR_CID7181::Percent);
        p.setFloatingPointRepresentation(pct, OFFalse);
        std::string eqv = std::string("Certainty of Finding: ") + f->finding.meaning;
        char param[96];
        snprintf(param, sizeof param, "decision threshold %.1f %%", f->threshold * 100.0);
        if (dcmtk_ok(c, g.addMeasurement(CMR_CID7469(CODE_DCM_CertaintyOfFinding), p),
                     "add a finding's certainty") < 0 ||
            dcmtk_ok(c, g.getMeasurement().addModifier(CODE_DCM_Finding, code_of(f->finding)),
                     "name the finding of a certainty") < 0 ||
            dcmtk_ok(c, g.getMeasurement().setEquivalentMeaningOfConceptName(eqv.c_str()),
                     "set the meaning of a certainty") < 0 ||
            set_algorithm(c, g.getMeasurement(), eq) < 0 ||
            dcmtk_ok(c, g.getMeasurement().getAlgorithmIdentification().addParameter(param),
                     "add the decision threshold") < 0)
            return c.err;
    }

    /* The decisions: one qualitative evaluation per finding. */
    for (int j = 0; j < o->nfindings; j++) {
        const dcm_sr_finding *f = &o->findings[j];
        DSRCodedEntryValue verdict = f->present ? DSRCodedEntryValue("52101004", "SCT", "Present")
                                                : DSRCodedEntryValue("2667000", "SCT", "Absent");
        if (dcmtk_ok(c, g.addQualitativeEvaluation(code_of(f->finding), verdict),
                     "add a finding's evaluation") < 0)
            return c.err;
    }

    /* An organ whose embedding did not match its own prompt: the reader
     * is told so next to the numbers that may be wrong. */
    if (o->low_confidence) {
        char note[320];
        if (!empty(o->nearest))
            snprintf(note, sizeof note, "Zero-shot organ check failed: the region segmented as %s "
                     "looks most like %s. Review the segmentation before relying on these "
                     "measurements and findings.", o->tracking_id, o->nearest);
        else
            snprintf(note, sizeof note, "Zero-shot organ check failed: the region segmented as %s "
                     "does not look like it. Review the segmentation before relying on these "
                     "measurements and findings.", o->tracking_id);
        if (dcmtk_ok(c, g.addQualitativeEvaluation(CODE_DCM_Comment, note),
                     "add the organ check note") < 0)
            return c.err;
    }
    return 0;
}

/* Optional patient and study attributes the source has and DSRDocument
 * does not carry over itself. */
void copy_extra(DcmDataset *dst, DcmDataset *src)
{
    static const DcmTagKey tags[] = {
        DCM_PatientBirthTime, DCM_OtherPatientIDsSequence, DCM_EthnicGroup, DCM_PatientComments,
        DCM_PatientIdentityRemoved, DCM_DeidentificationMethod,
        DCM_DeidentificationMethodCodeSequence, DCM_IssuerOfPatientIDQualifiersSequence,
        DCM_PatientAge, DCM_PhysiciansOfRecord, DCM_NameOfPhysiciansReadingStudy,
        DCM_ProcedureCodeSequence,
    };
    for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++) {
        if (dst->tagExists(tags[i])) continue;
        DcmElement *e = nullptr;
        if (src->findAndGetElement(tags[i], e).good() && e)
            dst->insert(OFstatic_cast(DcmElement *, e->clone()), OFTrue);
    }
}

/* The model as Contributing Equipment: the object the PACS stores says
 * which model (Device UID, version = checksum) produced its content. */
int add_contributing(Ctx &c, DcmDataset *ds, const dcm_equipment *eq, const std::string &dt)
{
    DcmItem *it = nullptr;
    if (dcmtk_ok(c, ds->findOrCreateSequenceItem(DCM_ContributingEquipmentSequence, it, -2),
                 "create the Contributing Equipment Sequence") < 0)
        return c.err;
    DcmItem *purpose = nullptr;
    OFCondition r = it->findOrCreateSequenceItem(DCM_PurposeOfReferenceCodeSequence, purpose, -2);
    /* (109102, DCM, "Processing Equipment"): equipment that processed
     * composite instances to create new ones (CID 7005). */
    if (r.good()) r = purpose->putAndInsertString(DCM_CodeValue, "109102");
    if (r.good()) r = purpose->putAndInsertString(DCM_CodingSchemeDesignator, "DCM");
    if (r.good()) r = purpose->putAndInsertString(DCM_CodeMeaning, "Processing Equipment");
    if (r.good()) r = it->putAndInsertString(DCM_Manufacturer, eq->manufacturer);
    if (r.good() && !empty(eq->institution))
        r = it->putAndInsertString(DCM_InstitutionName, eq->institution);
    if (r.good()) r = it->putAndInsertString(DCM_ManufacturerModelName, eq->model_name);
    /* As in the SEG, the model's checksum serves as the serial number. */
    if (r.good()) r = it->putAndInsertString(DCM_DeviceSerialNumber, eq->model_version);
    /* The model's identity first, then the software that ran it. */
    std::string versions = eq->model_version;
    if (!empty(eq->software_version)) versions += std::string("\\") + eq->software_version;
    if (r.good()) r = it->putAndInsertString(DCM_SoftwareVersions, versions.c_str());
    if (r.good()) r = it->putAndInsertString(DCM_DeviceUID, eq->device_uid);
    if (r.good()) r = it->putAndInsertString(DCM_ContributionDateTime, dt.c_str());
    if (r.good())
        r = it->putAndInsertString(DCM_ContributionDescription, "Organ segmentation, volumetry "
                                   "and zero-shot findings (CT-GLIP)");
    return dcmtk_ok(c, r, "fill the Contributing Equipment item");
}

int write_sr(Ctx &c, const dcm_sr_input *in, const char *path, char *sop_out)
{
    int r;
    if ((r = check_input(c, in, path)) < 0) return r;
    const dcm_equipment *eq = in->eq;

    DcmFileFormat segff;
    Ref seg, pre;
    if ((r = check_seg(c, in, segff, seg)) < 0) return r;
    if (!empty(in->predecessor_path) && (r = check_predecessor(c, in, pre)) < 0) return r;

    std::string date, tm;
    now_strings(date, tm);
    if (!empty(eq->creation_date)) date = eq->creation_date;
    if (!empty(eq->creation_time)) tm = eq->creation_time;

    /* ---- the content tree ---- */
    TID1500_MeasurementReport report(CMR_CID7021::ImagingMeasurementReport);
    if (dcmtk_ok(c, report.setLanguage(CID5000_Languages::English), "set the language") < 0 ||
        dcmtk_ok(c, report.getObservationContext().addDeviceObserver(
                        eq->device_uid, eq->model_name, eq->manufacturer, eq->model_name),
                 "set the device observer") < 0 ||
        dcmtk_ok(c, report.addProcedureReported(CMR_CID100::CTUnspecifiedBodyRegion),
                 "set the procedure reported") < 0 ||
        dcmtk_ok(c, report.getImageLibrary().createNewImageLibrary(),
                 "create the image library") < 0)
        return c.err;
    DcmFileFormat first;
    std::vector<Ref> refs;
    if ((r = add_sources(c, in, report.getImageLibrary(), first, refs)) < 0) return r;
    for (int i = 0; i < in->norgans; i++) {
        /* The report starts with one empty group; later organs add theirs. */
        if (i > 0 &&
            dcmtk_ok(c, report.addVolumetricROIMeasurements(), "add a measurement group") < 0)
            return c.err;
        if ((r = add_organ(c, in, &in->organs[i], report.getVolumetricROIMeasurements(),
                           *segff.getDataset())) < 0)
            return r;
    }
    if (!report.isValid())
        return dcm__fail_why(c, CTG_EDICOM, "the TID 1500 report is incomplete (DCMTK's template "
                        "check failed)");

    /* ---- the document around it ---- */
    DSRDocument doc;
    if (dcmtk_ok(c, doc.setTreeFromRootTemplate(report, OFTrue), "set the document tree") < 0 ||
        dcmtk_ok(c, doc.changeDocumentType(DSRTypes::DT_Comprehensive3DSR),
                 "make the document a Comprehensive 3D SR") < 0)
        return c.err;
    DcmDataset *srcds = first.getDataset();
    /* Patient and study as the source has them, in its character set. */
    if (dcmtk_ok(c, doc.readStudyData(*srcds), "copy patient and study") < 0) return c.err;
    std::string charset = get_str(srcds, DCM_SpecificCharacterSet);
    if (!charset.empty() && dcmtk_ok(c, doc.setSpecificCharacterSet(charset.c_str()),
                                     "set the character set") < 0)
        return c.err;
    std::string tz = get_str(srcds, DCM_TimezoneOffsetFromUTC);
    if (!tz.empty()) doc.setTimezoneOffsetFromUTC(tz.c_str());
    char num[16];
    snprintf(num, sizeof num, "%d", in->series_number);
    OFCondition cond = doc.setSeriesNumber(num);
    if (cond.good())
        cond = doc.setSeriesDescription(empty(in->series_desc) ? "ctglip findings"
                                                               : in->series_desc);
    if (cond.good()) cond = doc.setSeriesDate(date.c_str());
    if (cond.good()) cond = doc.setSeriesTime(tm.c_str());
    if (cond.good()) cond = doc.setContentDate(date.c_str());
    if (cond.good()) cond = doc.setContentTime(tm.c_str());
    if (cond.good()) cond = doc.setInstanceNumber("1");
    if (cond.good()) cond = doc.setManufacturer(eq->manufacturer);
    if (cond.good()) cond = doc.setManufacturerModelName(eq->model_name);
    if (cond.good()) cond = doc.setDeviceSerialNumber(eq->model_version);
    if (cond.good() && !empty(eq->software_version))
        cond = doc.setSoftwareVersions(eq->software_version);
    if (dcmtk_ok(c, cond, "set the series and equipment attributes") < 0) return c.err;

    /* Evidence: every source instance and the SEG, all of this study. */
    DSRSOPInstanceReferenceList &ev = doc.getCurrentRequestedProcedureEvidence();
    for (const Ref &e : refs)
        if (dcmtk_ok(c, ev.addItem(e.study, e.series, e.cls, e.sop), "list the evidence") < 0)
            return c.err;
    if (dcmtk_ok(c, ev.addItem(seg.study, seg.series, seg.cls, seg.sop),
                 "list the SEG as evidence") < 0)
        return c.err;
    if (!pre.sop.empty() &&
        dcmtk_ok(c, doc.getPredecessorDocuments().addItem(pre.study, pre.series, pre.cls, pre.sop),
                 "reference the predecessor") < 0)
        return c.err;

    /* Private coding schemes used by the caller's codes are identified;
     * standard designators (SCT, DCM, UCUM, LN) need no entry. */
    std::set<std::string> schemes;
    for (int i = 0; i < in->norgans; i++) {
        const dcm_sr_organ *o = &in->organs[i];
        schemes.insert(o->site.scheme);
        if (!empty(o->laterality.scheme)) schemes.insert(o->laterality.scheme);
        for (int j = 0; j < o->nfindings; j++) schemes.insert(o->findings[j].finding.scheme);
    }
    for (const std::string &s : schemes) {
        if (!private_scheme(s.c_str())) continue;
        if (s == kPrivateScheme)
            cond = doc.getCodingSchemeIdentification().addItem(s.c_str(), "", kPrivateSchemeName,
                                                               eq->manufacturer);
        else
            cond = doc.getCodingSchemeIdentification().addItem(s.c_str());
        if (dcmtk_ok(c, cond, "identify a private coding scheme") < 0) return c.err;
    }

    /* A machine's report: complete, and unverified until a radiologist
     * signs a report of their own. */
    if (dcmtk_ok(c, doc.completeDocument(), "complete the document") < 0) return c.err;

    DcmFileFormat ff;
    DcmDataset *ds = ff.getDataset();
    if (dcmtk_ok(c, doc.write(*ds), "encode the SR document") < 0) return c.err;

    /* Our UIDs ("2.25." + 128 random bits) and creation time replace the
     * ones DSRDocument made from DCMTK's root and the clock. */
    char sop[65], series[65];
    dcm__uid_random(sop);
    if (!empty(in->series_uid))
        snprintf(series, sizeof series, "%s", in->series_uid);
    else
        dcm__uid_random(series);
    cond = ds->putAndInsertString(DCM_SOPInstanceUID, sop);
    if (cond.good()) cond = ds->putAndInsertString(DCM_SeriesInstanceUID, series);
    if (cond.good()) cond = ds->putAndInsertString(DCM_InstanceCreationDate, date.c_str());
    if (cond.good()) cond = ds->putAndInsertString(DCM_InstanceCreationTime, tm.c_str());
    if (cond.good() && !empty(eq->institution))
        cond = ds->putAndInsertString(DCM_InstitutionName, eq->institution);
    if (dcmtk_ok(c, cond, "set the instance identity") < 0) return c.err;
    copy_extra(ds, srcds);
    if ((r = add_contributing(c, ds, eq, date + tm)) < 0) return r;

    if ((r = dcm__save_file(ff, path, c.why, c.n)) < 0) return c.err = r;
    if (sop_out) snprintf(sop_out, 65, "%s", sop);
    return 0;
}

pthread_once_t cmr_once = PTHREAD_ONCE_INIT;

void init_cmr(void)
{
    dcm_global_init();
    CMR_ContentMappingResource::initializeAllContextGroups();
}

} // namespace

int dcm_write_sr(const dcm_sr_input *in, const char *path, char sop_uid[65], char *why, size_t n)
{
    if (why && n) why[0] = 0;
    if (sop_uid) sop_uid[0] = 0;
    if (!in) {
        if (why && n) snprintf(why, n, "no SR input");
        return CTG_EINVAL;
    }
    Ctx c;
    c.why = why;
    c.n = n;
    try {
        pthread_once(&cmr_once, init_cmr);
        return write_sr(c, in, path, sop_uid);
    } catch (const std::bad_alloc &) {
        if (why && n) snprintf(why, n, "out of memory building the SR");
        return CTG_ENOMEM;
    } catch (...) {
        if (why && n) snprintf(why, n, "unexpected exception building the SR");
        return CTG_EDICOM;
    }
}
