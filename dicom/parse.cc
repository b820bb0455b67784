/*
 * parse.cc - process set-up of DCMTK and reading the header of a stored
 * instance into a ctg_instance for the index.
 *
 * Reading stops short of loading large values (pixel data stays on disk),
 * but the whole file is parsed, so a truncated or malformed data set is
 * caught here, before it is acknowledged.
 *
 * dcm_parse_received() parses a file the SCP has just written in the same
 * way, from what the receiver still holds in memory (its first and last
 * bytes): large values are skipped, not read back.
 *
 * Threading: dcm_read_instance() and dcm_parse_received() are reentrant.
 */
#include "dicom.h"
#include "dicom_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcrledrg.h"
#include "dcmtk/dcmdata/dcistrma.h"
#include "dcmtk/dcmdata/dcistrmf.h"
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

/* The top-level attributes fill_instance() reads, found in one pass over
 * the data set (a findAndGet per attribute would walk the list each time). */
enum {
    A_SOP_CLASS, A_SOP_UID, A_STUDY_UID, A_SERIES_UID, A_FOR_UID, A_PATIENT_ID,
    A_PATIENT_NAME, A_BIRTH_DATE, A_SEX, A_STUDY_DATE, A_STUDY_TIME, A_ACCESSION,
    A_STUDY_DESC, A_MODALITY, A_SERIES_DESC, A_BODY_PART, A_IMAGE_TYPE, A_SERIES_NUMBER,
    A_INSTANCE_NUMBER, A_ROWS, A_COLS, A_FRAMES, A_ORIENTATION, A_POSITION, A_SPACING,
    A_THICKNESS, A_PIXEL_DATA, A_COUNT
};
static const DcmTagKey attr_tags[A_COUNT] = {
    DCM_SOPClassUID, DCM_SOPInstanceUID, DCM_StudyInstanceUID, DCM_SeriesInstanceUID,
    DCM_FrameOfReferenceUID, DCM_PatientID, DCM_PatientName, DCM_PatientBirthDate,
    DCM_PatientSex, DCM_StudyDate, DCM_StudyTime, DCM_AccessionNumber, DCM_StudyDescription,
    DCM_Modality, DCM_SeriesDescription, DCM_BodyPartExamined, DCM_ImageType,
    DCM_SeriesNumber, DCM_InstanceNumber, DCM_Rows, DCM_Columns, DCM_NumberOfFrames,
    DCM_ImageOrientationPatient, DCM_ImagePositionPatient, DCM_PixelSpacing,
    DCM_SliceThickness, DCM_PixelData,
};

static void index_attrs(DcmItem *ds, DcmElement *at[A_COUNT])
{
    for (int i = 0; i < A_COUNT; i++) at[i] = NULL;
    for (DcmObject *o = ds->nextInContainer(NULL); o; o = ds->nextInContainer(o)) {
        const DcmTagKey &t = o->getTag();
        for (int i = 0; i < A_COUNT; i++) {
            if (t == attr_tags[i]) {
                if (o->isLeaf()) at[i] = (DcmElement *)o;
                break;
            }
        }
    }
}

static void get_str(DcmElement *e, char *dst, size_t n)
{
    OFString v;
    dst[0] = 0;
    if (e && e->getOFStringArray(v).good()) {
        /* Values are trimmed of the padding DICOM allows. */
        size_t b = 0, end = v.length();
        while (b < end && (v[b] == ' ' || v[b] == 0)) b++;
        while (end > b && (v[end - 1] == ' ' || v[end - 1] == 0)) end--;
        size_t k = end - b < n - 1 ? end - b : n - 1;
        memcpy(dst, v.data() + b, k);
        dst[k] = 0;
    }
}

static int get_int(DcmElement *e, int dflt)
{
    Sint32 si;
    Uint16 us;
    if (!e) return dflt;
    if (e->getSint32(si).good()) return (int)si;
    if (e->getUint16(us).good()) return (int)us;
    return dflt;
}

/* Reads n doubles of a multi-valued DS; looks into sequences when the
 * attribute is not at the top level (Enhanced CT functional groups). */
static int get_ds(DcmItem *ds, DcmElement *e, const DcmTagKey &tag, double *v, int n)
{
    int ok = e != NULL;
    for (int i = 0; i < n && ok; i++) {
        Float64 f;
        if (e->getFloat64(f, (unsigned long)i).good())
            v[i] = f;
        else
            ok = 0;
    }
    if (ok) return 1;
    for (int i = 0; i < n; i++) {
        Float64 f;
        if (ds->findAndGetFloat64(tag, f, (unsigned long)i, OFTrue).bad()) return 0;
        v[i] = f;
    }
    return 1;
}

/* Fills out from a parsed data set; xfer is the transfer syntax UID. */
static int fill_instance(DcmItem *ds, const char *xfer, ctg_instance *out, char *why, size_t n)
{
    DcmElement *at[A_COUNT];
    index_attrs(ds, at);
    static const struct {
        int attr;
        const char *name;
        size_t off;
    } required[] = {
        {A_SOP_CLASS, "SOP Class UID (0008,0016)", offsetof(ctg_instance, sop_class)},
        {A_SOP_UID, "SOP Instance UID (0008,0018)", offsetof(ctg_instance, sop_uid)},
        {A_STUDY_UID, "Study Instance UID (0020,000D)", offsetof(ctg_instance, study_uid)},
        {A_SERIES_UID, "Series Instance UID (0020,000E)", offsetof(ctg_instance, series_uid)},
    };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        char *dst = (char *)out + required[i].off;
        get_str(at[required[i].attr], dst, 65);
        if (!dst[0]) {
            snprintf(why, n, "missing %s", required[i].name);
            return CTG_EDICOM;
        }
    }
    OFStandard::strlcpy(out->transfer_syntax, xfer ? xfer : "", sizeof out->transfer_syntax);
    get_str(at[A_FOR_UID], out->frame_of_ref_uid, sizeof out->frame_of_ref_uid);
    get_str(at[A_PATIENT_ID], out->patient_id, sizeof out->patient_id);
    get_str(at[A_PATIENT_NAME], out->patient_name, sizeof out->patient_name);
    get_str(at[A_BIRTH_DATE], out->patient_birth_date, sizeof out->patient_birth_date);
    get_str(at[A_SEX], out->patient_sex, sizeof out->patient_sex);
    get_str(at[A_STUDY_DATE], out->study_date, sizeof out->study_date);
    get_str(at[A_STUDY_TIME], out->study_time, sizeof out->study_time);
    get_str(at[A_ACCESSION], out->accession, sizeof out->accession);
    get_str(at[A_STUDY_DESC], out->study_desc, sizeof out->study_desc);
    get_str(at[A_MODALITY], out->modality, sizeof out->modality);
    get_str(at[A_SERIES_DESC], out->series_desc, sizeof out->series_desc);
    get_str(at[A_BODY_PART], out->body_part, sizeof out->body_part);
    get_str(at[A_IMAGE_TYPE], out->image_type, sizeof out->image_type);
    out->series_number = get_int(at[A_SERIES_NUMBER], 0);
    out->instance_number = get_int(at[A_INSTANCE_NUMBER], 0);
    out->rows = get_int(at[A_ROWS], 0);
    out->cols = get_int(at[A_COLS], 0);
    out->frames = get_int(at[A_FRAMES], at[A_PIXEL_DATA] ? 1 : 0);
    out->has_orientation =
        get_ds(ds, at[A_ORIENTATION], DCM_ImageOrientationPatient, out->orientation, 6);
    out->has_position = get_ds(ds, at[A_POSITION], DCM_ImagePositionPatient, out->position, 3);
    out->has_spacing = get_ds(ds, at[A_SPACING], DCM_PixelSpacing, out->pixel_spacing, 2);
    double t;
    out->slice_thickness = get_ds(ds, at[A_THICKNESS], DCM_SliceThickness, &t, 1) ? t : 0;
    return 0;
}

/* Values longer than this stay unread (pixel data): only the structure
 * around them is checked. */
#define MAX_READ 4096

int dcm_read_instance(const char *path, ctg_instance *out, char *why, size_t n)
{
    dcm_global_init();
    memset(out, 0, sizeof *out);
    DcmFileFormat ff;
    OFCondition c = ff.loadFile(path, EXS_Unknown, EGL_noChange, MAX_READ, ERM_fileOnly);
    if (c.bad()) {
        snprintf(why, n, "cannot parse data set: %s", c.text());
        return CTG_EDICOM;
    }
    char xfer[65];
    DcmElement *ts = NULL;
    ff.getMetaInfo()->findAndGetElement(DCM_TransferSyntaxUID, ts);
    get_str(ts, xfer, sizeof xfer);
    return fill_instance(ff.getDataset(), xfer, out, why, n);
}

/* ---- parsing a file the SCP has just written ------------------------------------- */

/* Serves the data set's bytes from the receiver's memory (head and tail)
 * and, for anything in between that the parse really reads, from the file.
 * Skipped values (pixel data) cost nothing. */
class RxProducer : public DcmProducer {
  public:
    explicit RxProducer(const dcm_rx_file *f) : f_(f), pos_(f->data_offset) {}
    ~RxProducer() override
    {
        if (fd_ >= 0) close(fd_);
    }
    OFBool good() const override { return status_.good(); }
    OFCondition status() const override { return status_; }
    OFBool eos() override { return pos_ >= f_->size; }
    offile_off_t avail() override
    {
        return status_.good() ? (offile_off_t)(f_->size - pos_) : 0;
    }
    offile_off_t read(void *buf, offile_off_t len) override
    {
        if (status_.bad() || len <= 0) return 0;
        unsigned char *dst = (unsigned char *)buf;
        uint64_t want = (uint64_t)len < f_->size - pos_ ? (uint64_t)len : f_->size - pos_;
        uint64_t done = 0;
        while (done < want) {
            uint64_t p = pos_ + done, k;
            uint64_t tail_end = f_->tail_off + f_->tail_len;
            if (p < f_->head_len) {
                k = f_->head_len - p;
                if (k > want - done) k = want - done;
                memcpy(dst + done, f_->head + p, (size_t)k);
            } else if (f_->tail && p >= f_->tail_off && p < tail_end) {
                k = tail_end - p;
                if (k > want - done) k = want - done;
                memcpy(dst + done, f_->tail + (p - f_->tail_off), (size_t)k);
            } else {
                /* From the file, up to where memory takes over again. */
                k = want - done;
                if (f_->tail && p < f_->tail_off && f_->tail_off - p < k) k = f_->tail_off - p;
                if (fd_ < 0 && (fd_ = open(f_->path, O_RDONLY | O_CLOEXEC)) < 0) {
                    status_ = makeOFCondition(0, 2, OF_error, "cannot read back the received file");
                    break;
                }
                ssize_t r = pread(fd_, dst + done, (size_t)k, (off_t)p);
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) {
                    status_ = makeOFCondition(0, 2, OF_error, "cannot read back the received file");
                    break;
                }
                k = (uint64_t)r;
            }
            done += k;
        }
        pos_ += done;
        return (offile_off_t)done;
    }
    offile_off_t skip(offile_off_t len) override
    {
        if (status_.bad() || len <= 0) return 0;
        uint64_t k = (uint64_t)len < f_->size - pos_ ? (uint64_t)len : f_->size - pos_;
        pos_ += k;
        return (offile_off_t)k;
    }
    void putback(offile_off_t num) override
    {
        if (num < 0 || (uint64_t)num > pos_ - f_->data_offset)
            status_ = EC_PutbackFailed;
        else
            pos_ -= (uint64_t)num;
    }

  private:
    const dcm_rx_file *f_;
    uint64_t pos_;
    int fd_ = -1;
    OFCondition status_ = EC_Normal;
};

/* The stream over an RxProducer.  A value the parse leaves unread can be
 * loaded later from the file, at the data set's offset plus the position. */
class RxStream : public DcmInputStream {
  public:
    explicit RxStream(const dcm_rx_file *f)
        : DcmInputStream(&producer_), producer_(f), path_(f->path), base_(f->data_offset)
    {
    }
    DcmInputStreamFactory *newFactory() const override
    {
        return new DcmInputFileStreamFactory(path_, (offile_off_t)base_ + tell());
    }

  private:
    RxProducer producer_;
    OFFilename path_;
    uint64_t base_;
};

int dcm_parse_received(const dcm_rx_file *f, ctg_instance *out, char *why, size_t n)
{
    memset(out, 0, sizeof *out);
    E_TransferSyntax xfer = DcmXfer(f->xfer).getXfer();
    if (xfer == EXS_Unknown || f->data_offset > f->size) {
        snprintf(why, n, "cannot parse data set: unknown transfer syntax %s", f->xfer);
        return CTG_EDICOM;
    }
    RxStream in(f);
    DcmDataset ds;
    ds.transferInit();
    OFCondition c = ds.read(in, xfer, EGL_noChange, MAX_READ);
    ds.transferEnd();
    if (c.good() && !in.eos()) c = EC_StreamNotifyClient;
    if (c.bad()) {
        snprintf(why, n, "cannot parse data set: %s", c.text());
        return CTG_EDICOM;
    }
    return fill_instance(&ds, f->xfer, out, why, n);
}
