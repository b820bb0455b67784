/*
 * parse.cc - process set-up of DCMTK and reading the header of a stored
 * instance into a ctg_instance for the index.
 *
 * Reading stops short of loading large values (pixel data stays on disk),
 * but the whole file is parsed, so a truncated or malformed data set is
 * caught here, before it is acknowledged.
 *
 * Threading: dcm_read_instance() is reentrant.
 */
#include "dicom.h"
#include "dicom_int.h"

#include <stdio.h>
#include <string.h>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcrledrg.h"
#include "dcmtk/dcmdata/dctk.h"
#include "dcmtk/dcmjpeg/djdecode.h"
#include "dcmtk/dcmjpls/djdecode.h"
#include "dcmtk/dcmnet/dul.h"
#include "dcmtk/dcmtls/tlslayer.h"
#include "dcmtk/oflog/oflog.h"

void dcm__init_once(void)
{
    /* Peer addresses stay numeric: no DNS lookups on the accept path. */
    dcmDisableGethostbyaddr.set(OFTrue);
    DJDecoderRegistration::registerCodecs();
    DJLSDecoderRegistration::registerCodecs();
    DcmRLEDecoderRegistration::registerCodecs();
    DcmTLSTransportLayer::initializeOpenSSL();
    /* DCMTK's own chatter below warnings would drown ours. */
    OFLog::configure(OFLogger::WARN_LOG_LEVEL);
}

void dcm_quiet(void)
{
    dcm_global_init();
    OFLog::configure(OFLogger::FATAL_LOG_LEVEL);
}

static void get_str(DcmItem *ds, const DcmTagKey &tag, char *dst, size_t n)
{
    OFString v;
    dst[0] = 0;
    if (ds->findAndGetOFStringArray(tag, v).good()) {
        /* Values are trimmed of the padding DICOM allows. */
        size_t b = 0, e = v.length();
        while (b < e && (v[b] == ' ' || v[b] == 0)) b++;
        while (e > b && (v[e - 1] == ' ' || v[e - 1] == 0)) e--;
        OFStandard::strlcpy(dst, v.substr(b, e - b).c_str(), n);
    }
}

static int get_int(DcmItem *ds, const DcmTagKey &tag, int dflt)
{
    Sint32 si;
    Uint16 us;
    if (ds->findAndGetSint32(tag, si).good()) return (int)si;
    if (ds->findAndGetUint16(tag, us).good()) return (int)us;
    return dflt;
}

/* Reads n doubles of a multi-valued DS; looks into sequences when the
 * attribute is not at the top level (Enhanced CT functional groups). */
static int get_ds(DcmItem *ds, const DcmTagKey &tag, double *v, int n)
{
    for (int deep = 0; deep < 2; deep++) {
        int ok = 1;
        for (int i = 0; i < n && ok; i++) {
            Float64 f;
            if (ds->findAndGetFloat64(tag, f, (unsigned long)i, deep ? OFTrue : OFFalse).good())
                v[i] = f;
            else
                ok = 0;
        }
        if (ok) return 1;
    }
    return 0;
}

int dcm_read_instance(const char *path, ctg_instance *out, char *why, size_t n)
{
    dcm_global_init();
    memset(out, 0, sizeof *out);
    DcmFileFormat ff;
    OFCondition c = ff.loadFile(path, EXS_Unknown, EGL_noChange, 4096, ERM_fileOnly);
    if (c.bad()) {
        snprintf(why, n, "cannot parse data set: %s", c.text());
        return CTG_EDICOM;
    }
    DcmDataset *ds = ff.getDataset();
    DcmMetaInfo *meta = ff.getMetaInfo();

    static const struct {
        DcmTagKey tag;
        const char *name;
        size_t off;
    } required[] = {
        {DCM_SOPClassUID, "SOP Class UID (0008,0016)", offsetof(ctg_instance, sop_class)},
        {DCM_SOPInstanceUID, "SOP Instance UID (0008,0018)", offsetof(ctg_instance, sop_uid)},
        {DCM_StudyInstanceUID, "Study Instance UID (0020,000D)", offsetof(ctg_instance, study_uid)},
        {DCM_SeriesInstanceUID, "Series Instance UID (0020,000E)", offsetof(ctg_instance, series_uid)},
    };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        char *dst = (char *)out + required[i].off;
        get_str(ds, required[i].tag, dst, 65);
        if (!dst[0]) {
            snprintf(why, n, "missing %s", required[i].name);
            return CTG_EDICOM;
        }
    }
    get_str(meta, DCM_TransferSyntaxUID, out->transfer_syntax, sizeof out->transfer_syntax);
    get_str(ds, DCM_FrameOfReferenceUID, out->frame_of_ref_uid, sizeof out->frame_of_ref_uid);
    get_str(ds, DCM_PatientID, out->patient_id, sizeof out->patient_id);
    get_str(ds, DCM_PatientName, out->patient_name, sizeof out->patient_name);
    get_str(ds, DCM_PatientBirthDate, out->patient_birth_date, sizeof out->patient_birth_date);
    get_str(ds, DCM_PatientSex, out->patient_sex, sizeof out->patient_sex);
    get_str(ds, DCM_StudyDate, out->study_date, sizeof out->study_date);
    get_str(ds, DCM_StudyTime, out->study_time, sizeof out->study_time);
    get_str(ds, DCM_AccessionNumber, out->accession, sizeof out->accession);
    get_str(ds, DCM_StudyDescription, out->study_desc, sizeof out->study_desc);
    get_str(ds, DCM_Modality, out->modality, sizeof out->modality);
    get_str(ds, DCM_SeriesDescription, out->series_desc, sizeof out->series_desc);
    get_str(ds, DCM_BodyPartExamined, out->body_part, sizeof out->body_part);
    get_str(ds, DCM_ImageType, out->image_type, sizeof out->image_type);
    out->series_number = get_int(ds, DCM_SeriesNumber, 0);
    out->instance_number = get_int(ds, DCM_InstanceNumber, 0);
    out->rows = get_int(ds, DCM_Rows, 0);
    out->cols = get_int(ds, DCM_Columns, 0);
    out->frames = get_int(ds, DCM_NumberOfFrames, ds->tagExists(DCM_PixelData) ? 1 : 0);
    out->has_orientation = get_ds(ds, DCM_ImageOrientationPatient, out->orientation, 6);
    out->has_position = get_ds(ds, DCM_ImagePositionPatient, out->position, 3);
    out->has_spacing = get_ds(ds, DCM_PixelSpacing, out->pixel_spacing, 2);
    double t;
    out->slice_thickness = get_ds(ds, DCM_SliceThickness, &t, 1) ? t : 0;
    return 0;
}
