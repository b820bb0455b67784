/*
 * write.cc - writes a volume in Hounsfield units as a CT series: one CT
 * Image object per slice, or one multi-frame Enhanced CT Image object, in
 * explicit or implicit VR little endian, JPEG lossless (process 14, SV1),
 * JPEG-LS lossless or RLE.  The phantom generator, the tests and the
 * benchmarks use it to make series that real peers accept.
 *
 * Every value a caller passes is checked against its VR before it is
 * written, so a bad argument comes back as an error with a reason instead
 * of as a file that validators and PACS reject.  Each file is written to a
 * hidden temp name, fsynced and renamed, so a crash leaves whole files or
 * none (the directory is fsynced once at the end).
 *
 * Values: stored = round(HU - intercept) with slope 1, clamped to the
 * 16-bit range (unsigned pixels clamp below -1024 HU); NaN is written as
 * air.  UIDs the caller leaves NULL are generated; the irradiation event
 * and dimension organization UIDs of Enhanced CT are derived from the SOP
 * UID prefix (".0.1", ".0.2"), so writing the same input twice gives the
 * same objects.  Enhanced CT with an ORIGINAL image type requires the CT
 * acquisition macros; they carry fixed, plausible values (120 kVp, spiral,
 * pitch 1), which are not a description of any real scan.
 *
 * Threading: reentrant.  The encoders are registered once per process
 * (pthread_once); DCMTK's codec list is safe for concurrent encoding.
 */
#include "dicom.h"
#include "dicom_int.h"

#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <new>
#include <string>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcostrmf.h"
#include "dcmtk/dcmdata/dcrleerg.h"
#include "dcmtk/dcmdata/dcrlerp.h"
#include "dcmtk/dcmdata/dctk.h"
#include "dcmtk/dcmdata/dcuid.h"
#include "dcmtk/dcmjpeg/djencode.h"
#include "dcmtk/dcmjpeg/djrplol.h"
#include "dcmtk/dcmjpls/djencode.h"
#include "dcmtk/dcmjpls/djrparam.h"

namespace {

const char *const kManufacturer = "ctglip";
const char *const kModel = "ctglip phantom writer";
const char *const kSoftware = CTG_IMPLEMENTATION_NAME;
const char *const kSerial = "0";

/* Encoders are registered here rather than in dcm__init_once() because only
 * this file needs them.  Lossless codecs must never mint new SOP Instance
 * UIDs: the caller chose them. */
void register_encoders(void)
{
    dcm_global_init();
    DJEncoderRegistration::registerCodecs(ECC_lossyYCbCr, EUC_never);
    DJLSEncoderRegistration::registerCodecs(0, 0, 0, 0, OFTrue, 0, OFTrue,
                                            EJLSUC_never);
    DcmRLEEncoderRegistration::registerCodecs(OFFalse);
}

struct Geometry {
    double row[3], col[3]; /* unit vectors along i and j */
    double normal[3];      /* row x col */
    double sx, sy, sz;     /* mm along i, j, k */
    double thickness;
};

/* One write call: the inputs, what was derived from them, and the first
 * error met while building a data set (later ones would only repeat it). */
struct Ctx : DcmWhy {
    const ctg_vol *vol = nullptr;
    const dcm_ct_meta *meta = nullptr;
    Geometry g;
    E_TransferSyntax xfer = EXS_LittleEndianExplicit;
    std::string study_uid, series_uid, for_uid, prefix;
    std::string event_uid, dim_org_uid;
    std::string image_type;  /* 3 values (CT) or 4 (Enhanced CT) */
    std::string date, time;  /* study date and time: content, acquisition */
    std::string now_date, now_time;
    double intercept = 0;
};

const char *nz(const char *s) { return s ? s : ""; }



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

std::string ds_multi(const double *v, int count)
{
    std::string s;
    for (int i = 0; i < count; i++) {
        if (i) s += '\\';
        s += fmt_ds(v[i]);
    }
    return s;
}

/* The value multiplicity the data dictionary gives for a tag, in the
 * notation of DcmElement::checkValue(). */
OFString dict_vm(const DcmTagKey &tag)
{
    char buf[32] = "1-n";
    const DcmDataDictionary &dict = dcmDataDict.rdlock();
    const DcmDictEntry *de = dict.findEntry(tag, nullptr);
    if (de) {
        int lo = de->getVMMin(), hi = de->getVMMax();
        if (hi == DcmVariableVM)
            snprintf(buf, sizeof buf, "%d-n", lo);
        else if (lo == hi)
            snprintf(buf, sizeof buf, "%d", lo);
        else
            snprintf(buf, sizeof buf, "%d-%d", lo, hi);
    }
    dcmDataDict.rdunlock();
    return buf;
}

/* Every value of a string (backslash-separated; for PN, each component
 * group too) within the VR's maximum length.  Our values are ISO_IR 100,
 * one byte a character. */
bool value_lengths_ok(const DcmVR &vr, const std::string &v)
{
    size_t max = vr.getMaxValueLength();
    bool pn = vr.getEVR() == EVR_PN;
    size_t len = 0;
    for (char ch : v) {
        if (ch == '\\' || (pn && ch == '=')) {
            len = 0;
            continue;
        }
        if (++len > max) return false;
    }
    return true;
}

/* Inserts a value and checks it against its VR and the VM the dictionary
 * gives, so that a caller's bad value is reported instead of written. */
void put(Ctx &c, DcmItem *it, const DcmTagKey &tag, const std::string &v)
{
    if (c.err) return;
    OFCondition r = it->putAndInsertString(tag, v.c_str());
    if (r.good() && !v.empty()) {
        DcmElement *e = nullptr;
        if (it->findAndGetElement(tag, e).good()) {
            r = e->checkValue(dict_vm(tag));
            /* checkValue() leaves lengths alone; a PACS does not. */
            DcmVR vr = e->getTag().getVR();
            if (r.good() && vr.isaString() && !value_lengths_ok(vr, v))
                r = EC_MaximumLengthViolated;
        }
    }
    if (r.bad())
        dcm__fail_why(c, CTG_EINVAL, "%s %s: value '%.80s' is not valid: %s",
                 DcmTag(tag).getTagName(), DcmTag(tag).toString().c_str(),
                 v.c_str(), r.text());
}

void put(Ctx &c, DcmItem *it, const DcmTagKey &tag, const char *v)
{
    put(c, it, tag, std::string(nz(v)));
}

void put_int(Ctx &c, DcmItem *it, const DcmTagKey &tag, long v)
{
    put(c, it, tag, std::to_string(v));
}

/* Binary floating point values (FD), written exactly. */
void put_fd(Ctx &c, DcmItem *it, const DcmTagKey &tag, const double *v, int count)
{
    if (c.err) return;
    OFCondition r = it->putAndInsertFloat64Array(tag, v, (unsigned long)count);
    if (r.bad()) dcm__fail_why(c, CTG_EDICOM, "cannot set %s: %s", DcmTag(tag).getTagName(), r.text());
}

void put_us(Ctx &c, DcmItem *it, const DcmTagKey &tag, unsigned v)
{
    if (c.err) return;
    OFCondition r = it->putAndInsertUint16(tag, (Uint16)v);
    if (r.bad()) dcm__fail_why(c, CTG_EDICOM, "cannot set %s: %s", DcmTag(tag).getTagName(), r.text());
}

void put_at(Ctx &c, DcmItem *it, const DcmTagKey &tag, const DcmTagKey &value)
{
    if (c.err) return;
    OFCondition r = it->putAndInsertTagKey(tag, value);
    if (r.bad()) dcm__fail_why(c, CTG_EDICOM, "cannot set %s: %s", DcmTag(tag).getTagName(), r.text());
}

/* The item of a new sequence of one item (or a new item appended to it);
 * nullptr after an error. */
DcmItem *seq_item(Ctx &c, DcmItem *parent, const DcmTagKey &seq)
{
    if (c.err) return nullptr;
    DcmItem *item = nullptr;
    OFCondition r = parent->findOrCreateSequenceItem(seq, item, -2);
    if (r.bad() || !item) {
        dcm__fail_why(c, CTG_EDICOM, "cannot create %s: %s", DcmTag(seq).getTagName(), r.text());
        return nullptr;
    }
    return item;
}

/* An empty sequence (type 2). */
void empty_seq(Ctx &c, DcmItem *parent, const DcmTagKey &seq)
{
    if (c.err) return;
    OFCondition r = parent->insert(new DcmSequenceOfItems(seq), OFTrue);
    if (r.bad()) dcm__fail_why(c, CTG_EDICOM, "cannot create %s: %s", DcmTag(seq).getTagName(), r.text());
}

void put_code(Ctx &c, DcmItem *it, const char *value, const char *scheme,
              const char *meaning)
{
    put(c, it, DCM_CodeValue, value);
    put(c, it, DCM_CodingSchemeDesignator, scheme);
    put(c, it, DCM_CodeMeaning, meaning);
}

/* Body Part Examined to an anatomic region of CID 4031 (SNOMED CT), for the
 * Frame Anatomy functional group.  Unknown ones fall back to the whole
 * body, which is true of any CT region. */
void anatomy_code(const char *body_part, const char **code, const char **meaning)
{
    static const struct {
        const char *part, *code, *meaning;
    } map[] = {
        {"HEAD", "69536005", "Head"},
        {"NECK", "45048000", "Neck"},
        {"CHEST", "43799004", "Chest"},
        {"ABDOMEN", "818981001", "Abdomen"},
        {"PELVIS", "816092008", "Pelvis"},
        {"CHESTABDOMEN", "416550000", "Chest and Abdomen"},
        {"ABDOMENPELVIS", "818982008", "Abdomen and Pelvis"},
        {"CHESTABDPELVIS", "416775004", "Chest, Abdomen and Pelvis"},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        if (body_part && !strcasecmp(body_part, map[i].part)) {
            *code = map[i].code;
            *meaning = map[i].meaning;
            return;
        }
    }
    *code = "38266002";
    *meaning = "Entire body";
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

double dot3(const double *a, const double *b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

/* Position of slice k: aff * (0,0,k). */
void slice_position(const ctg_vol *v, int k, double p[3])
{
    for (int r = 0; r < 3; r++) p[r] = v->aff[r][3] + v->aff[r][2] * k;
}

int geometry(Ctx &c)
{
    const ctg_vol *v = c.vol;
    Geometry &g = c.g;
    double len[3];
    for (int a = 0; a < 3; a++) {
        double s = 0;
        for (int r = 0; r < 3; r++) s += v->aff[r][a] * v->aff[r][a];
        len[a] = sqrt(s);
        if (!(len[a] > 1e-9) || !std::isfinite(len[a]))
            return dcm__fail_why(c, CTG_EINVAL, "affine column %d has no length: the volume has no geometry", a);
    }
    for (int r = 0; r < 3; r++) {
        g.row[r] = v->aff[r][0] / len[0];
        g.col[r] = v->aff[r][1] / len[1];
    }
    /* DICOM image planes have orthogonal rows and columns. */
    if (fabs(dot3(g.row, g.col)) > 1e-4)
        return dcm__fail_why(c, CTG_EINVAL, "affine columns i and j are not orthogonal (cos %.6f)",
                        dot3(g.row, g.col));
    g.normal[0] = g.row[1] * g.col[2] - g.row[2] * g.col[1];
    g.normal[1] = g.row[2] * g.col[0] - g.row[0] * g.col[2];
    g.normal[2] = g.row[0] * g.col[1] - g.row[1] * g.col[0];
    g.sx = len[0];
    g.sy = len[1];
    g.sz = len[2];
    g.thickness = c.meta->slice_thickness > 0 ? c.meta->slice_thickness : g.sz;
    return 0;
}

/* Stored value of one HU value: round((HU - intercept) / 1), clamped to the
 * 16-bit range.  NaN is written as air. */
inline Uint16 stored(double hu, double intercept, bool is_signed)
{
    if (hu != hu) hu = -1024;
    double s = round(hu - intercept);
    if (is_signed) {
        if (s < -32768) s = -32768;
        if (s > 32767) s = 32767;
        return (Uint16)(Sint16)s;
    }
    if (s < 0) s = 0;
    if (s > 65535) s = 65535;
    return (Uint16)s;
}

void convert_slices(const Ctx &c, int k0, int count, Uint16 *dst)
{
    const ctg_vol *v = c.vol;
    size_t plane = (size_t)v->nx * (size_t)v->ny;
    bool sgn = c.meta->pixel_signed != 0;
    for (int k = k0; k < k0 + count; k++) {
        size_t base = plane * (size_t)k;
        Uint16 *out = dst + plane * (size_t)(k - k0);
        if (v->dtype == CTG_F32) {
            const float *src = (const float *)v->data + base;
            for (size_t i = 0; i < plane; i++) out[i] = stored(src[i], c.intercept, sgn);
        } else {
            const int16_t *src = (const int16_t *)v->data + base;
            for (size_t i = 0; i < plane; i++) out[i] = stored(src[i], c.intercept, sgn);
        }
    }
}

/* Modules that the single-frame and the Enhanced CT objects share:
 * SOP Common (less the SOP UIDs), Patient, General Study, General Series,
 * Frame of Reference, General Equipment and Image Pixel (less the pixels). */
void common_modules(Ctx &c, DcmItem *ds)
{
    const dcm_ct_meta *m = c.meta;
    put(c, ds, DCM_SpecificCharacterSet, "ISO_IR 100");
    put(c, ds, DCM_InstanceCreationDate, c.now_date);
    put(c, ds, DCM_InstanceCreationTime, c.now_time);
    put(c, ds, DCM_InstanceCreatorUID, CTG_IMPLEMENTATION_UID);

    put(c, ds, DCM_PatientName, m->patient_name);
    put(c, ds, DCM_PatientID, m->patient_id);
    put(c, ds, DCM_PatientBirthDate, m->patient_birth_date);
    put(c, ds, DCM_PatientSex, m->patient_sex);

    put(c, ds, DCM_StudyInstanceUID, c.study_uid);
    put(c, ds, DCM_StudyDate, c.date);
    put(c, ds, DCM_StudyTime, c.time);
    put(c, ds, DCM_ReferringPhysicianName, "");
    put(c, ds, DCM_StudyID, "1");
    put(c, ds, DCM_AccessionNumber, m->accession);
    if (m->study_desc && m->study_desc[0]) put(c, ds, DCM_StudyDescription, m->study_desc);

    put(c, ds, DCM_Modality, "CT");
    put(c, ds, DCM_SeriesInstanceUID, c.series_uid);
    put_int(c, ds, DCM_SeriesNumber, m->series_number);
    put(c, ds, DCM_SeriesDate, c.date);
    put(c, ds, DCM_SeriesTime, c.time);
    if (m->series_desc && m->series_desc[0]) put(c, ds, DCM_SeriesDescription, m->series_desc);
    /* Laterality is required for paired body parts unless a frame
     * laterality is sent (Enhanced CT sends one); with no body part named
     * it is unknown, which DICOM writes as an empty value. */
    if (m->body_part && m->body_part[0])
        put(c, ds, DCM_BodyPartExamined, m->body_part);
    else if (!m->enhanced)
        put(c, ds, DCM_Laterality, "");
    put(c, ds, DCM_PatientPosition, m->patient_position ? m->patient_position : "HFS");

    put(c, ds, DCM_FrameOfReferenceUID, c.for_uid);
    put(c, ds, DCM_PositionReferenceIndicator, "");

    put(c, ds, DCM_Manufacturer, kManufacturer);
    put(c, ds, DCM_ManufacturerModelName, kModel);
    put(c, ds, DCM_DeviceSerialNumber, kSerial);
    put(c, ds, DCM_SoftwareVersions, kSoftware);

    put_us(c, ds, DCM_SamplesPerPixel, 1);
    put(c, ds, DCM_PhotometricInterpretation, "MONOCHROME2");
    put_us(c, ds, DCM_Rows, (unsigned)c.vol->ny);
    put_us(c, ds, DCM_Columns, (unsigned)c.vol->nx);
    put_us(c, ds, DCM_BitsAllocated, 16);
    put_us(c, ds, DCM_BitsStored, 16);
    put_us(c, ds, DCM_HighBit, 15);
    put_us(c, ds, DCM_PixelRepresentation, c.meta->pixel_signed ? 1 : 0);
}

/* Pixel Data of slices k0..k0+count-1, converted straight into the
 * element's own buffer so the volume is not held twice. */
void put_pixels(Ctx &c, DcmDataset *ds, int k0, int count)
{
    if (c.err) return;
    size_t words = (size_t)c.vol->nx * (size_t)c.vol->ny * (size_t)count;
    DcmPixelData *pd = new DcmPixelData(DCM_PixelData);
    Uint16 *buf = nullptr;
    OFCondition r = pd->createUint16Array((Uint32)words, buf);
    if (r.good() && buf) {
        convert_slices(c, k0, count, buf);
        r = ds->insert(pd, OFTrue);
        if (r.good()) return;
    } else if (r.good()) {
        r = EC_MemoryExhausted;
    }
    delete pd;
    dcm__fail_why(c, r == EC_MemoryExhausted ? CTG_ENOMEM : CTG_EDICOM, "cannot set Pixel Data: %s",
             r.text());
}

/* The single-frame CT Image object of slice k. */
void build_ct_slice(Ctx &c, DcmDataset *ds, int k)
{
    const ctg_vol *v = c.vol;
    common_modules(c, ds);
    put(c, ds, DCM_SOPClassUID, UID_CTImageStorage);
    put(c, ds, DCM_SOPInstanceUID, c.prefix + "." + std::to_string(k + 1));

    /* General Image and CT Image. */
    put_int(c, ds, DCM_InstanceNumber, k + 1);
    put(c, ds, DCM_ImageType, c.image_type);
    put(c, ds, DCM_ContentDate, c.date);
    put(c, ds, DCM_ContentTime, c.time);
    put(c, ds, DCM_AcquisitionDate, c.date);
    put(c, ds, DCM_AcquisitionTime, c.time);
    put_int(c, ds, DCM_AcquisitionNumber, 1);
    put(c, ds, DCM_BurnedInAnnotation, "NO");
    put(c, ds, DCM_LossyImageCompression, "00");
    put(c, ds, DCM_KVP, "120");
    put(c, ds, DCM_RescaleIntercept, fmt_ds(c.intercept));
    put(c, ds, DCM_RescaleSlope, "1");
    put(c, ds, DCM_RescaleType, "HU");

    /* Image Plane. */
    double pos[3], orient[6], spacing[2] = {c.g.sy, c.g.sx};
    slice_position(v, k, pos);
    memcpy(orient, c.g.row, sizeof c.g.row);
    memcpy(orient + 3, c.g.col, sizeof c.g.col);
    put(c, ds, DCM_PixelSpacing, ds_multi(spacing, 2));
    put(c, ds, DCM_ImageOrientationPatient, ds_multi(orient, 6));
    put(c, ds, DCM_ImagePositionPatient, ds_multi(pos, 3));
    put(c, ds, DCM_SliceThickness, fmt_ds(c.g.thickness));
    put(c, ds, DCM_SliceLocation, fmt_ds(dot3(pos, c.g.normal)));

    /* VOI LUT: a soft-tissue window. */
    put(c, ds, DCM_WindowCenter, "40");
    put(c, ds, DCM_WindowWidth, "400");
    put(c, ds, DCM_WindowCenterWidthExplanation, "SOFT TISSUE");

    put_pixels(c, ds, k, 1);
}

/* Shared Functional Groups of the Enhanced CT object: geometry and pixel
 * value transformation are the same for every frame, and so is the
 * (made-up but plausible) acquisition that the ORIGINAL image type makes
 * the CT macros mandatory for. */
void shared_groups(Ctx &c, DcmItem *sh)
{
    const Geometry &g = c.g;
    DcmItem *it;
    double spacing[2] = {g.sy, g.sx}, orient[6];
    memcpy(orient, g.row, sizeof g.row);
    memcpy(orient + 3, g.col, sizeof g.col);

    if ((it = seq_item(c, sh, DCM_PixelMeasuresSequence))) {
        put(c, it, DCM_PixelSpacing, ds_multi(spacing, 2));
        put(c, it, DCM_SliceThickness, fmt_ds(g.thickness));
        if (c.vol->nz > 1) put(c, it, DCM_SpacingBetweenSlices, fmt_ds(g.sz));
    }
    if ((it = seq_item(c, sh, DCM_PlaneOrientationSequence)))
        put(c, it, DCM_ImageOrientationPatient, ds_multi(orient, 6));
    if ((it = seq_item(c, sh, DCM_CTImageFrameTypeSequence))) {
        put(c, it, DCM_FrameType, c.image_type);
        put(c, it, DCM_PixelPresentation, "MONOCHROME");
        put(c, it, DCM_VolumetricProperties, "VOLUME");
        put(c, it, DCM_VolumeBasedCalculationTechnique, "NONE");
    }
    if ((it = seq_item(c, sh, DCM_PixelValueTransformationSequence))) {
        put(c, it, DCM_RescaleIntercept, fmt_ds(c.intercept));
        put(c, it, DCM_RescaleSlope, "1");
        put(c, it, DCM_RescaleType, "HU");
    }
    /* No explanation here: Enhanced CT restricts it to defined terms that
     * do not include a plain soft-tissue window. */
    if ((it = seq_item(c, sh, DCM_FrameVOILUTSequence))) {
        put(c, it, DCM_WindowCenter, "40");
        put(c, it, DCM_WindowWidth, "400");
    }
    if ((it = seq_item(c, sh, DCM_FrameAnatomySequence))) {
        const char *code, *meaning;
        anatomy_code(c.meta->body_part, &code, &meaning);
        DcmItem *reg = seq_item(c, it, DCM_AnatomicRegionSequence);
        if (reg) put_code(c, reg, code, "SCT", meaning);
        put(c, it, DCM_FrameLaterality, "U");
    }
    if ((it = seq_item(c, sh, DCM_IrradiationEventIdentificationSequence)))
        put(c, it, DCM_IrradiationEventUID, c.event_uid);
    if ((it = seq_item(c, sh, DCM_CTAcquisitionTypeSequence))) {
        put(c, it, DCM_AcquisitionType, "SPIRAL");
        put(c, it, DCM_ConstantVolumeFlag, "NO");
        put(c, it, DCM_FluoroscopyFlag, "NO");
    }
    double fov = fmax(g.sx * c.vol->nx, g.sy * c.vol->ny);
    if ((it = seq_item(c, sh, DCM_CTAcquisitionDetailsSequence))) {
        put(c, it, DCM_DataCollectionDiameter, fmt_ds(fov));
        put(c, it, DCM_GantryDetectorTilt, "0");
        put(c, it, DCM_TableHeight, "0");
        put(c, it, DCM_RotationDirection, "CW");
        put(c, it, DCM_RevolutionTime, "0.5");
        put(c, it, DCM_SingleCollimationWidth, "0.625");
        put(c, it, DCM_TotalCollimationWidth, "40");
    }
    if ((it = seq_item(c, sh, DCM_CTTableDynamicsSequence))) {
        put(c, it, DCM_TableSpeed, "80");
        put(c, it, DCM_TableFeedPerRotation, "40");
        put(c, it, DCM_SpiralPitchFactor, "1");
    }
    if ((it = seq_item(c, sh, DCM_CTGeometrySequence))) {
        put(c, it, DCM_DistanceSourceToDetector, "1040");
        put(c, it, DCM_DistanceSourceToDataCollectionCenter, "570");
    }
    if ((it = seq_item(c, sh, DCM_CTReconstructionSequence))) {
        put(c, it, DCM_ReconstructionAlgorithm, "FILTER_BACK_PROJ");
        put(c, it, DCM_ConvolutionKernel, "STANDARD");
        put(c, it, DCM_ConvolutionKernelGroup, "SOFT_TISSUE");
        put(c, it, DCM_ReconstructionDiameter, fmt_ds(fov));
        put_fd(c, it, DCM_ReconstructionPixelSpacing, spacing, 2);
        put(c, it, DCM_ReconstructionAngle, "360");
        put(c, it, DCM_ImageFilter, "NONE");
    }
    if ((it = seq_item(c, sh, DCM_CTExposureSequence))) {
        put(c, it, DCM_ExposureTimeInms, "500");
        put(c, it, DCM_XRayTubeCurrentInmA, "200");
        put(c, it, DCM_ExposureInmAs, "100");
        put(c, it, DCM_ExposureModulationType, "NONE");
    }
    if ((it = seq_item(c, sh, DCM_CTXRayDetailsSequence))) {
        put(c, it, DCM_KVP, "120");
        put(c, it, DCM_FocalSpots, "1");
        put(c, it, DCM_FilterType, "BODY");
        put(c, it, DCM_FilterMaterial, "ALUMINUM");
    }
}

/* The Enhanced CT Image object of the whole volume. */
void build_enhanced(Ctx &c, DcmDataset *ds)
{
    const ctg_vol *v = c.vol;
    std::string dt = c.date + c.time;
    common_modules(c, ds);
    put(c, ds, DCM_SOPClassUID, UID_EnhancedCTImageStorage);
    put(c, ds, DCM_SOPInstanceUID, c.prefix + ".1");

    /* Enhanced General Equipment is satisfied by common_modules(). */

    /* Enhanced CT Image, with the Common CT and MR Image Description. */
    put(c, ds, DCM_ImageType, c.image_type);
    put_int(c, ds, DCM_AcquisitionNumber, 1);
    put(c, ds, DCM_AcquisitionDateTime, dt);
    put(c, ds, DCM_AcquisitionDuration, "10");
    put(c, ds, DCM_ContentQualification, "PRODUCT");
    put(c, ds, DCM_PixelPresentation, "MONOCHROME");
    put(c, ds, DCM_VolumetricProperties, "VOLUME");
    put(c, ds, DCM_VolumeBasedCalculationTechnique, "NONE");
    put(c, ds, DCM_BurnedInAnnotation, "NO");
    put(c, ds, DCM_RecognizableVisualFeatures, "NO");
    put(c, ds, DCM_LossyImageCompression, "00");
    put(c, ds, DCM_PresentationLUTShape, "IDENTITY");

    /* Multi-frame Functional Groups. */
    put_int(c, ds, DCM_InstanceNumber, 1);
    put(c, ds, DCM_ContentDate, c.date);
    put(c, ds, DCM_ContentTime, c.time);
    put_int(c, ds, DCM_NumberOfFrames, v->nz);
    DcmItem *sh = seq_item(c, ds, DCM_SharedFunctionalGroupsSequence);
    if (sh) shared_groups(c, sh);
    for (int k = 0; k < v->nz && !c.err; k++) {
        DcmItem *pf = seq_item(c, ds, DCM_PerFrameFunctionalGroupsSequence);
        if (!pf) break;
        double pos[3];
        slice_position(v, k, pos);
        DcmItem *it = seq_item(c, pf, DCM_PlanePositionSequence);
        if (it) put(c, it, DCM_ImagePositionPatient, ds_multi(pos, 3));
        /* The reconstruction is centred on the frame; the table moves along
         * the patient's z. */
        if ((it = seq_item(c, pf, DCM_CTPositionSequence))) {
            double centre[3];
            for (int r = 0; r < 3; r++)
                centre[r] = pos[r] + v->aff[r][0] * (v->nx - 1) / 2.0 +
                            v->aff[r][1] * (v->ny - 1) / 2.0;
            put_fd(c, it, DCM_TablePosition, &pos[2], 1);
            put_fd(c, it, DCM_ReconstructionTargetCenterPatient, centre, 3);
            put_fd(c, it, DCM_DataCollectionCenterPatient, centre, 3);
        }
        if ((it = seq_item(c, pf, DCM_FrameContentSequence))) {
            put_int(c, it, DCM_FrameAcquisitionNumber, 1);
            put(c, it, DCM_FrameReferenceDateTime, dt);
            put(c, it, DCM_FrameAcquisitionDateTime, dt);
            put(c, it, DCM_FrameAcquisitionDuration, "10");
            put(c, it, DCM_StackID, "1");
            put_int(c, it, DCM_InStackPositionNumber, k + 1);
            /* Stack 1, position k+1 in it, and the (k+1)th distinct
             * position: the three dimensions declared below. */
            Uint32 idx[3] = {1, (Uint32)k + 1, (Uint32)k + 1};
            if (!c.err) {
                OFCondition r = it->putAndInsertUint32Array(DCM_DimensionIndexValues, idx, 3);
                if (r.bad()) dcm__fail_why(c, CTG_EDICOM, "cannot set Dimension Index Values: %s", r.text());
            }
        }
    }

    /* Multi-frame Dimension. */
    DcmItem *it = seq_item(c, ds, DCM_DimensionOrganizationSequence);
    if (it) put(c, it, DCM_DimensionOrganizationUID, c.dim_org_uid);
    put(c, ds, DCM_DimensionOrganizationType, "3D");
    static const struct {
        DcmTagKey index, group;
        const char *label;
    } dims[] = {
        {DCM_StackID, DCM_FrameContentSequence, "Stack ID"},
        {DCM_InStackPositionNumber, DCM_FrameContentSequence, "In-Stack Position Number"},
        {DCM_ImagePositionPatient, DCM_PlanePositionSequence, "Image Position (Patient)"},
    };
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        if (!(it = seq_item(c, ds, DCM_DimensionIndexSequence))) break;
        put(c, it, DCM_DimensionOrganizationUID, c.dim_org_uid);
        put_at(c, it, DCM_DimensionIndexPointer, dims[d].index);
        put_at(c, it, DCM_FunctionalGroupPointer, dims[d].group);
        put(c, it, DCM_DimensionDescriptionLabel, dims[d].label);
    }

    /* Acquisition Context: nothing to say, but the sequence is type 2. */
    empty_seq(c, ds, DCM_AcquisitionContextSequence);

    put_pixels(c, ds, 0, v->nz);
}


/* Encodes ff's data set in the target transfer syntax and writes it as
 * dir/name through a hidden temp file that is fsynced before the rename. */
int save(Ctx &c, DcmFileFormat &ff, const char *dir, const char *name)
{
    DcmDataset *ds = ff.getDataset();
    DcmXfer xf(c.xfer);
    OFCondition r;
    if (xf.isEncapsulated()) {
        DJ_RPLossless jpeg(1, 0);
        DJLSRepresentationParameter jpls(0, OFTrue);
        DcmRLERepresentationParameter rle;
        const DcmRepresentationParameter *rp = nullptr;
        if (c.xfer == EXS_JPEGProcess14SV1)
            rp = &jpeg;
        else if (c.xfer == EXS_JPEGLSLossless)
            rp = &jpls;
        else
            rp = &rle;
        r = ds->chooseRepresentation(c.xfer, rp);
        /* canWriteXfer() asks whether the encoded pixel data is really
         * there, so a codec that quietly declined shows up here. */
        if (r.bad() || !ds->canWriteXfer(c.xfer))
            return dcm__fail_why(c, CTG_EDICOM, "cannot encode %s as %s: %s", name,
                            xf.getXferName(), r.bad() ? r.text() : "no encoder");
        /* The JPEG encoder notes itself in Derivation Description, which
         * Enhanced CT keeps only inside the Derivation Image functional
         * group; for a lossless encoding there is nothing to derive. */
        if (c.meta->enhanced) ds->findAndDeleteElement(DCM_DerivationDescription);
    }
    /* DCMTK fills the meta header (SOP UIDs, transfer syntax) with its own
     * implementation UID; ours replaces it, and the group length is
     * recomputed for the new value. */
    DcmMetaInfo *mi = ff.getMetaInfo();
    r = ff.validateMetaInfo(c.xfer, EWM_createNewMeta);
    if (r.good()) r = mi->putAndInsertString(DCM_ImplementationClassUID, CTG_IMPLEMENTATION_UID);
    if (r.good()) r = mi->putAndInsertString(DCM_ImplementationVersionName, CTG_IMPLEMENTATION_NAME);
    if (r.good())
        r = mi->computeGroupLengthAndPadding(EGL_withGL, EPD_noChange,
                                             META_HEADER_DEFAULT_TRANSFERSYNTAX, EET_UndefinedLength);
    if (r.bad()) return dcm__fail_why(c, CTG_EDICOM, "cannot build the file meta header: %s", r.text());

    char path[PATH_MAX], tmp[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path ||
        snprintf(tmp, sizeof tmp, "%s/.%s.%ld.tmp", dir, name, (long)getpid()) >= (int)sizeof tmp)
        return dcm__fail_why(c, CTG_EINVAL, "output directory name too long");
    char msg[512];
    int err = dcm__write_durable(ff, tmp, path, c.xfer, msg, sizeof msg);
    return err ? dcm__fail_why(c, err, "%s", msg) : 0;
}

/* A new UID: "2.25." followed by a random 128-bit number in decimal (the
 * UUID-derived form of PS3.5 B.2), at most 44 characters, so no site root
 * is needed and suffixes still fit in 64. */
std::string new_uid()
{
    char u[65];
    dcm__uid_random(u);
    return u;
}

/* A UID given by the caller, or a new one when none was given. */
int take_uid(Ctx &c, const char *given, const char *what, std::string &out)
{
    if (given && given[0]) {
        if (!dcm__uid_ok(given))
            return dcm__fail_why(c, CTG_EBADUID, "%s '%.80s' is not a valid UID", what, given);
        out = given;
        return 0;
    }
    out = new_uid();
    return 0;
}

/* A UID for an object that has no caller-given UID of its own (irradiation
 * event, dimension organization): derived from the prefix so that a series
 * written twice is identical, or new when the prefix leaves no room. */
std::string derived_uid(const std::string &prefix, const char *tail)
{
    std::string u = prefix + tail;
    if (u.size() <= 64) return u;
    return new_uid();
}

int prepare(Ctx &c)
{
    const ctg_vol *v = c.vol;
    const dcm_ct_meta *m = c.meta;
    if (v->dtype != CTG_F32 && v->dtype != CTG_I16)
        return dcm__fail_why(c, CTG_EINVAL, "volume dtype %d cannot be written as CT (F32 or I16 in HU)",
                        v->dtype);
    if (v->nx < 1 || v->ny < 1 || v->nz < 1 || v->nx > 65535 || v->ny > 65535 || !v->data)
        return dcm__fail_why(c, CTG_EINVAL, "volume size %dx%dx%d cannot be a CT image", v->nx, v->ny,
                        v->nz);
    switch (m->transfer_syntax) {
    case DCM_TS_EXPLICIT_LE: c.xfer = EXS_LittleEndianExplicit; break;
    case DCM_TS_IMPLICIT_LE: c.xfer = EXS_LittleEndianImplicit; break;
    case DCM_TS_JPEG_LOSSLESS: c.xfer = EXS_JPEGProcess14SV1; break;
    case DCM_TS_JPEGLS_LOSSLESS: c.xfer = EXS_JPEGLSLossless; break;
    case DCM_TS_RLE: c.xfer = EXS_RLELossless; break;
    default:
        return dcm__fail_why(c, CTG_EINVAL, "unknown transfer syntax %d", m->transfer_syntax);
    }
    if (m->enhanced) {
        /* Pixel Data in native encoding has a 32-bit length, and the whole
         * volume is also held in memory as one frame set while encoding. */
        uint64_t bytes = (uint64_t)v->nx * (uint64_t)v->ny * (uint64_t)v->nz * 2;
        if (bytes > 0xFFFFFFFEull)
            return dcm__fail_why(c, CTG_ETOOBIG,
                            "volume too large for one Enhanced CT object (%llu bytes of "
                            "pixel data, at most 4294967294)",
                            (unsigned long long)bytes);
    }
    if (m->patient_position && m->patient_position[0]) {
        static const char *const ok[] = {"HFS", "FFS", "HFP", "FFP", "HFDR", "HFDL", "FFDR", "FFDL"};
        bool found = false;
        for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
            if (!strcmp(m->patient_position, ok[i])) found = true;
        if (!found)
            return dcm__fail_why(c, CTG_EINVAL, "patient position '%.20s' is not one of HFS, FFS, HFP, "
                            "FFP, HFDR, HFDL, FFDR, FFDL", m->patient_position);
    }
    int r;
    if ((r = geometry(c)) < 0) return r;
    if ((r = take_uid(c, m->study_uid, "study UID", c.study_uid)) < 0 ||
        (r = take_uid(c, m->series_uid, "series UID", c.series_uid)) < 0 ||
        (r = take_uid(c, m->frame_of_ref_uid, "frame of reference UID",
                      c.for_uid)) < 0)
        return r;
    c.prefix = m->sop_uid_prefix && m->sop_uid_prefix[0] ? m->sop_uid_prefix : c.series_uid;
    std::string last = c.prefix + "." + std::to_string(m->enhanced ? 1 : v->nz);
    if (!dcm__uid_ok(last.c_str()))
        return dcm__fail_why(c, CTG_EBADUID, "SOP Instance UID %.80s%s is not valid (%s)", last.c_str(),
                        last.size() > 80 ? "..." : "",
                        last.size() > 64 ? "longer than 64 characters" : "bad prefix");
    c.event_uid = derived_uid(c.prefix, ".0.1");
    c.dim_org_uid = derived_uid(c.prefix, ".0.2");

    /* Image Type: CT images carry 3 values here, Enhanced CT exactly 4 (the
     * fourth, the derived pixel contrast, is NONE for plain images).  AXIAL
     * is no defined term for Enhanced CT's third value; VOLUME is. */
    if (m->image_type && m->image_type[0])
        c.image_type = m->image_type;
    else
        c.image_type = m->enhanced ? "ORIGINAL\\PRIMARY\\VOLUME\\NONE" : "ORIGINAL\\PRIMARY\\AXIAL";
    if (m->enhanced) {
        int values = 1;
        for (char ch : c.image_type) values += ch == '\\';
        if (values == 3) c.image_type += "\\NONE";
        else if (values != 4)
            return dcm__fail_why(c, CTG_EINVAL, "image type '%.80s' needs 3 or 4 values for Enhanced CT",
                            c.image_type.c_str());
    }
    now_strings(c.now_date, c.now_time);
    if (m->creation_date && m->creation_date[0]) c.now_date = m->creation_date;
    if (m->creation_time && m->creation_time[0]) c.now_time = m->creation_time;
    c.date = m->study_date && m->study_date[0] ? m->study_date : c.now_date;
    c.time = m->study_time && m->study_time[0] ? m->study_time : c.now_time;
    c.intercept = m->pixel_signed ? 0 : -1024;
    return 0;
}

int write_series(Ctx &c, const char *dir)
{
    int r;
    if ((r = prepare(c)) < 0) return r;
    if ((r = ctg_mkdirs(dir)) < 0)
        return dcm__fail_why(c, r, "cannot create %s: %s", dir, ctg_strerror(r));
    const ctg_vol *v = c.vol;
    char name[32];
    if (c.meta->enhanced) {
        DcmFileFormat ff;
        build_enhanced(c, ff.getDataset());
        if (c.err) return c.err;
        if ((r = save(c, ff, dir, "CT0001.dcm")) < 0) return r;
    } else {
        for (int k = 0; k < v->nz; k++) {
            DcmFileFormat ff;
            build_ct_slice(c, ff.getDataset(), k);
            if (c.err) return c.err;
            snprintf(name, sizeof name, "CT%04d.dcm", k + 1);
            if ((r = save(c, ff, dir, name)) < 0) return r;
        }
    }
    if ((r = ctg_fsync_dir(dir)) < 0) return dcm__fail_why(c, r, "cannot sync %s: %s", dir, ctg_strerror(r));
    return 0;
}

} // namespace

int dcm_write_ct_series(const char *dir, const ctg_vol *vol, const dcm_ct_meta *meta, char *why,
                        size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (why && n) why[0] = 0;
    if (!dir || !dir[0] || !vol || !meta) {
        if (why && n) snprintf(why, n, "no directory, volume or meta data");
        return CTG_EINVAL;
    }
    pthread_once(&once, register_encoders);
    Ctx c;
    c.vol = vol;
    c.meta = meta;
    c.why = why;
    c.n = n;
    try {
        return write_series(c, dir);
    } catch (const std::bad_alloc &) {
        if (why && n) snprintf(why, n, "out of memory writing %dx%dx%d CT series", vol->nx,
                               vol->ny, vol->nz);
        return CTG_ENOMEM;
    }
}

/* ---- shared with the other writers (dicom_int.h) ------------------------------------ */

int dcm__fail_why(DcmWhy &c, int err, const char *fmt, ...)
{
    if (c.err) return c.err;
    va_list ap;
    va_start(ap, fmt);
    if (c.why && c.n) vsnprintf(c.why, c.n, fmt, ap);
    va_end(ap);
    c.err = err;
    return err;
}

bool dcm__uid_ok(const char *u)
{
    if (!u) return false;
    size_t len = strlen(u);
    if (len == 0 || len > 64) return false;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || u[i] == '.') {
            if (i == start) return false;
            if (u[start] == '0' && i - start > 1) return false;
            start = i + 1;
        } else if (u[i] < '0' || u[i] > '9') {
            return false;
        }
    }
    return true;
}

/* Writes the meta header and the data set to path through DCMTK's file
 * stream.  DcmFileFormat::saveFile() would overwrite our implementation
 * UID, or warn on every file when told to keep it. */
static OFCondition write_stream(DcmFileFormat &ff, const char *path, E_TransferSyntax xfer)
{
    DcmOutputFileStream out(path);
    OFCondition r = out.status();
    if (r.bad()) return r;
    DcmMetaInfo *mi = ff.getMetaInfo();
    DcmDataset *ds = ff.getDataset();
    mi->transferInit();
    r = mi->write(out, META_HEADER_DEFAULT_TRANSFERSYNTAX, EET_ExplicitLength, nullptr);
    mi->transferEnd();
    if (r.good()) {
        ds->transferInit();
        r = ds->write(out, xfer, EET_ExplicitLength, nullptr, EGL_withoutGL, EPD_noChange);
        ds->transferEnd();
    }
    out.flush();
    if (r.good()) r = out.status();
    return r;
}

int dcm__write_durable(DcmFileFormat &ff, const char *tmp, const char *path, int xfer, char *why,
                       size_t n)
{
    /* Our own descriptor, opened before DCMTK writes, is the one fsync()
     * reports write-back errors to. */
    int err = 0, fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        err = ctg_errno(errno);
        snprintf(why, n, "cannot create %s: %s", tmp, strerror(errno));
        return err;
    }
    OFCondition r = write_stream(ff, tmp, (E_TransferSyntax)xfer);
    if (r.bad()) {
        err = CTG_EIO;
        snprintf(why, n, "cannot write %s: %s", tmp, r.text());
    } else if (fsync(fd) < 0) {
        err = ctg_errno(errno);
        snprintf(why, n, "cannot sync %s: %s", tmp, strerror(errno));
    }
    int cr = close(fd);
    if (!err && cr < 0) {
        err = ctg_errno(errno);
        snprintf(why, n, "cannot close %s: %s", tmp, strerror(errno));
    }
    if (!err && rename(tmp, path) < 0) {
        err = ctg_errno(errno);
        snprintf(why, n, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    }
    if (err) unlink(tmp);
    return err;
}
