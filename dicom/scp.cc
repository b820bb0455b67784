/*
 * scp.cc - the C-ECHO / C-STORE service class provider.
 *
 * A few listener threads per port (plain, TLS) receive A-ASSOCIATE requests
 * with DCMTK's ASC_receiveAssociation and hand each to a new detached
 * association thread, which asks the caller's admit() hook, negotiates
 * presentation contexts and runs the DIMSE loop.  A C-STORE data set is
 * streamed byte for byte into the caller's file through SpoolStream (a
 * ctg_fwriter with a per-association staging buffer), which enforces the
 * size cap, so a stored file equals what the peer sent and at most 320 KiB
 * of it is held in memory.  Its header is then parsed from the first and
 * last bytes still in memory (dcm_parse_received), not read back.
 *
 * Threading: the dcm_scp struct is shared; counters are atomics or under
 * `mu`.  Hooks run on association threads.  Shutdown: stop_accepting() ends
 * the listener loops (they poll once a second), abort_all() makes the
 * association loops abort at the next poll, free() joins the listeners.
 */
#include "dicom.h"
#include "dicom_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include <atomic>
#include <string>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcostrma.h"
#include "dcmtk/dcmdata/dctk.h"
#include "dcmtk/dcmnet/assoc.h"
#include "dcmtk/dcmnet/dcmtrans.h"
#include "dcmtk/dcmnet/dimse.h"
#include "dcmtk/dcmnet/diutil.h"
#include "dcmtk/dcmnet/dulstruc.h"
#include "dcmtk/dcmtls/tlslayer.h"

#define LISTENERS_PER_PORT 4

struct dcm_scp {
    dcm_scp_config cfg;
    dcm_scp_hooks hooks;
    char ae_title[17];
    T_ASC_Network *net[2];       /* [0] plain, [1] TLS */
    DcmTLSTransportLayer *tls;   /* owned, used by net[1] */
    /* DCMTK reads the A-ASSOCIATE-RQ (and does the TLS handshake) in the
     * thread that accepted the connection, so one silent peer holds its
     * listener for acse_timeout.  Several listeners share each
     * (non-blocking) listen socket, so one such peer does not stop the port. */
    pthread_t listener[2][LISTENERS_PER_PORT];
    int have_listener[2][LISTENERS_PER_PORT];
    std::atomic<int> stop;
    std::atomic<int> abort_all;
    std::atomic<int> active;
    std::atomic<unsigned> next_id;
    std::atomic<int> acse_timeout, dimse_timeout, idle_timeout;
    /* Sockets of running associations, so abort_all() can cut them. */
    pthread_mutex_t fd_lock;
    int fds[1024];
    int nfds;
};

/* ---- the data-set sink -------------------------------------------------- */

/* Per-association memory of the sink, allocated once: the writer's
 * staging buffer and a copy of each file's first bytes. */
#define STAGE_BYTES (256u * 1024u)
#define HEAD_BYTES (64u * 1024u)
struct RxBuffers {
    unsigned char *stage = nullptr;
    unsigned char *head = nullptr;
    RxBuffers()
    {
        stage = (unsigned char *)malloc(STAGE_BYTES);
        head = (unsigned char *)malloc(HEAD_BYTES);
    }
    ~RxBuffers()
    {
        free(stage);
        free(head);
    }
    RxBuffers(const RxBuffers &) = delete;
    RxBuffers &operator=(const RxBuffers &) = delete;
};

/* Writes the file through a ctg_fwriter, keeps its first bytes for the
 * header parse, notes where the data set starts (after the meta header) and
 * refuses to grow past a cap.  A failed write makes the stream bad, which
 * makes DIMSE_receiveDataSetInFile drain the rest of the data set and
 * return an error, leaving the association usable for the response. */
class SpoolConsumer : public DcmConsumer {
  public:
    SpoolConsumer(int fd, uint64_t cap, RxBuffers *rx) : cap_(cap), rx_(rx)
    {
        ctg_fw_init(&w_, fd, rx->stage, rx->stage ? STAGE_BYTES : 0);
    }
    OFBool good() const override { return err_ == 0; }
    OFCondition status() const override
    {
        return err_ ? makeOFCondition(0, 1, OF_error, "spool write failed")
                    : EC_Normal;
    }
    OFBool isFlushed() const override { return OFTrue; }
    offile_off_t avail() const override { return err_ ? 0 : 1 << 30; }
    offile_off_t write(const void *buf, offile_off_t len) override
    {
        if (err_) return 0;
        uint64_t at = ctg_fw_size(&w_);
        if (at + (uint64_t)len > cap_) {
            err_ = CTG_ETOOBIG;
            return 0;
        }
        if (rx_->head && at < HEAD_BYTES) {
            size_t k = HEAD_BYTES - at < (uint64_t)len ? (size_t)(HEAD_BYTES - at) : (size_t)len;
            memcpy(rx_->head + at, buf, k);
        }
        int r = ctg_fw_write(&w_, buf, (size_t)len);
        if (r < 0) {
            err_ = r;
            return 0;
        }
        return len;
    }
    void flush() override {}

    /* What follows is the data set. */
    void start_data() { data_offset_ = ctg_fw_size(&w_); }
    /* Ends the stream: what is staged goes to the file. */
    void finish()
    {
        if (err_) return;
        int r = ctg_fw_finish(&w_);
        if (r < 0) err_ = r;
    }
    /* The finished file as memory still holds it, for the header parse. */
    void describe(dcm_rx_file *f, const char *path, const char *xfer) const
    {
        memset(f, 0, sizeof *f);
        f->path = path;
        f->size = ctg_fw_size(&w_);
        f->data_offset = data_offset_;
        f->head = rx_->head;
        f->head_len = rx_->head ? (size_t)(f->size < HEAD_BYTES ? f->size : HEAD_BYTES) : 0;
        if (w_.buf) {
            f->tail = w_.buf;
            f->tail_off = w_.tail_off;
            f->tail_len = w_.tail_len;
        }
        f->xfer = xfer;
    }
    uint64_t data_offset() const { return data_offset_; }
    int error() const { return err_; }
    uint64_t written() const { return ctg_fw_size(&w_); }

  private:
    ctg_fwriter w_;
    uint64_t cap_;
    RxBuffers *rx_;
    int err_ = 0; /* negative CTG code */
    uint64_t data_offset_ = 0;
};

class SpoolStream : public DcmOutputStream {
  public:
    explicit SpoolStream(SpoolConsumer *c) : DcmOutputStream(c) {}
};

/* The file meta information for a received data set, as DCMTK's own
 * bit-preserving storescp writes it. */
static OFCondition write_meta(SpoolStream &out, const char *sop_class,
                              const char *sop_uid, const char *xfer,
                              const char *calling_ae)
{
    DcmMetaInfo meta;
    Uint8 version[2] = {0, 1};
    meta.putAndInsertUint32(DCM_FileMetaInformationGroupLength, 0);
    meta.putAndInsertUint8Array(DCM_FileMetaInformationVersion, version, 2);
    meta.putAndInsertString(DCM_MediaStorageSOPClassUID, sop_class);
    meta.putAndInsertString(DCM_MediaStorageSOPInstanceUID, sop_uid);
    meta.putAndInsertString(DCM_TransferSyntaxUID, xfer);
    meta.putAndInsertString(DCM_ImplementationClassUID, CTG_IMPLEMENTATION_UID);
    meta.putAndInsertString(DCM_ImplementationVersionName, CTG_IMPLEMENTATION_NAME);
    if (calling_ae && calling_ae[0])
        meta.putAndInsertString(DCM_SourceApplicationEntityTitle, calling_ae);
    OFCondition c = meta.computeGroupLengthAndPadding(
        EGL_withGL, EPD_noChange, META_HEADER_DEFAULT_TRANSFERSYNTAX,
        EET_UndefinedLength);
    if (c.bad()) return c;
    meta.transferInit();
    c = meta.write(out, META_HEADER_DEFAULT_TRANSFERSYNTAX, EET_ExplicitLength, NULL);
    meta.transferEnd();
    return c;
}

/* ---- negotiation ---------------------------------------------------------- */

static const char *const storage_classes[] = {
    UID_CTImageStorage,
    UID_EnhancedCTImageStorage,
    UID_BasicTextSRStorage,
    UID_EnhancedSRStorage,
    UID_ComprehensiveSRStorage,
    UID_Comprehensive3DSRStorage,
    UID_ExtensibleSRStorage,
};

/* The transfer syntaxes we store (see negotiate() for the choice). */
static const char *const storage_xfers[] = {
    UID_LittleEndianExplicitTransferSyntax,
    UID_LittleEndianImplicitTransferSyntax,
    UID_BigEndianExplicitTransferSyntax,
    UID_JPEGProcess14SV1TransferSyntax,
    UID_JPEGProcess14TransferSyntax,
    UID_JPEGLSLosslessTransferSyntax,
    UID_RLELosslessTransferSyntax,
};

static const char *const echo_xfers[] = {
    UID_LittleEndianExplicitTransferSyntax,
    UID_LittleEndianImplicitTransferSyntax,
    UID_BigEndianExplicitTransferSyntax,
};

static void reject(T_ASC_Association *assoc, int kind)
{
    T_ASC_RejectParameters rej;
    rej.result = ASC_RESULT_REJECTEDPERMANENT;
    rej.source = ASC_SOURCE_SERVICEUSER;
    switch (kind) {
    case DCM_REJECT_CALLED_AE:
        rej.reason = ASC_REASON_SU_CALLEDAETITLENOTRECOGNIZED;
        break;
    case DCM_REJECT_CALLING_AE:
        rej.reason = ASC_REASON_SU_CALLINGAETITLENOTRECOGNIZED;
        break;
    case DCM_REJECT_BUSY:
        rej.result = ASC_RESULT_REJECTEDTRANSIENT;
        rej.source = ASC_SOURCE_SERVICEPROVIDER_PRESENTATION_RELATED;
        rej.reason = ASC_REASON_SP_PRES_LOCALLIMITEXCEEDED;
        break;
    default:
        rej.reason = ASC_REASON_SU_NOREASON;
        break;
    }
    ASC_rejectAssociation(assoc, &rej);
}

static int in_list(const char *uid, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(uid, list[i]) == 0) return 1;
    return 0;
}

/* Accepts each supported presentation context with the first of the
 * peer's proposed transfer syntaxes that we support: the peer lists its
 * preference (usually the file's own syntax first), and honouring it keeps
 * the data set as the sender holds it, with no conversion on its side. */
static int negotiate(T_ASC_Association *assoc, const dcm_assoc_info *ai)
{
    T_ASC_Parameters *p = assoc->params;
    int n = ASC_countPresentationContexts(p);
    for (int i = 0; i < n; i++) {
        T_ASC_PresentationContext pc;
        if (ASC_getPresentationContext(p, i, &pc).bad()) continue;
        const char *const *xfers;
        size_t nx;
        if (!strcmp(pc.abstractSyntax, UID_VerificationSOPClass)) {
            xfers = echo_xfers;
            nx = DIM_OF(echo_xfers);
        } else if (in_list(pc.abstractSyntax, storage_classes, DIM_OF(storage_classes))) {
            xfers = storage_xfers;
            nx = DIM_OF(storage_xfers);
        } else {
            ASC_refusePresentationContext(p, pc.presentationContextID,
                                          ASC_P_ABSTRACTSYNTAXNOTSUPPORTED);
            continue;
        }
        const char *chosen = NULL;
        for (int t = 0; t < pc.transferSyntaxCount && !chosen; t++)
            if (in_list(pc.proposedTransferSyntaxes[t], xfers, nx))
                chosen = pc.proposedTransferSyntaxes[t];
        OFCondition c = chosen ? ASC_acceptPresentationContext(p, pc.presentationContextID, chosen)
                               : ASC_refusePresentationContext(p, pc.presentationContextID,
                                                               ASC_P_TRANSFERSYNTAXESNOTSUPPORTED);
        if (c.bad()) {
            OFString s;
            log_error("scp[%u]: negotiation failed: %s", ai->id,
                      DimseCondition::dump(s, c).c_str());
            return -1;
        }
    }
    /* Say what was refused, so a PACS engineer can see why a class failed;
     * a peer that offers every storage class gets one line, not a hundred. */
    int accepted = 0, refused = 0;
    for (int i = 0; i < n; i++) {
        T_ASC_PresentationContext pc;
        if (ASC_getPresentationContext(p, i, &pc).bad()) continue;
        if (pc.resultReason == ASC_P_ACCEPTANCE) {
            accepted++;
            continue;
        }
        refused++;
        log_debug("scp[%u]: refused presentation context %d (%s, %s)", ai->id,
                  pc.presentationContextID,
                  dcmFindNameOfUID(pc.abstractSyntax, pc.abstractSyntax),
                  pc.resultReason == ASC_P_ABSTRACTSYNTAXNOTSUPPORTED
                      ? "SOP class not supported"
                      : "transfer syntax not supported");
    }
    if (accepted == 0)
        log_warn("scp[%u]: none of the %d presentation contexts from %s is supported "
                 "(CT, Enhanced CT and SR storage, verification)",
                 ai->id, refused, ai->calling_ae);
    else if (refused)
        log_info("scp[%u]: accepted %d, refused %d presentation context(s) from %s", ai->id,
                 accepted, refused, ai->calling_ae);
    return 0;
}

/* ---- C-STORE ---------------------------------------------------------------- */

static void send_store_rsp(T_ASC_Association *assoc,
                           T_ASC_PresentationContextID pid,
                           T_DIMSE_C_StoreRQ *req, unsigned status,
                           const char *why, const dcm_assoc_info *ai)
{
    T_DIMSE_C_StoreRSP rsp;
    memset(&rsp, 0, sizeof rsp);
    rsp.MessageIDBeingRespondedTo = req->MessageID;
    rsp.DimseStatus = (DIC_US)status;
    rsp.DataSetType = DIMSE_DATASET_NULL;
    OFStandard::strlcpy(rsp.AffectedSOPClassUID, req->AffectedSOPClassUID,
                        sizeof rsp.AffectedSOPClassUID);
    OFStandard::strlcpy(rsp.AffectedSOPInstanceUID, req->AffectedSOPInstanceUID,
                        sizeof rsp.AffectedSOPInstanceUID);
    rsp.opts = O_STORE_AFFECTEDSOPCLASSUID | O_STORE_AFFECTEDSOPINSTANCEUID;

    DcmDataset *detail = NULL;
    if (status != 0 && why && why[0]) {
        /* Error Comment is LO: at most 64 characters. */
        char comment[65];
        OFStandard::strlcpy(comment, why, sizeof comment);
        detail = new DcmDataset;
        detail->putAndInsertString(DCM_ErrorComment, comment);
    }
    OFCondition c = DIMSE_sendStoreResponse(assoc, pid, req, &rsp, detail);
    delete detail;
    if (c.bad()) {
        OFString s;
        log_warn("scp[%u]: sending C-STORE response failed: %s", ai->id,
                 DimseCondition::dump(s, c).c_str());
    }
}

/* Handles one C-STORE; returns a bad condition when the association is
 * broken and must be aborted. */
static OFCondition handle_store(dcm_scp *scp, T_ASC_Association *assoc,
                                T_ASC_PresentationContextID pid,
                                T_DIMSE_C_StoreRQ *req, const dcm_assoc_info *ai,
                                RxBuffers *rx)
{
    char why[256] = "";
    char path[PATH_MAX] = "";
    int fd = -1;
    unsigned status;
    int dimse_to = scp->dimse_timeout.load();

    T_ASC_PresentationContext pc;
    OFCondition c = ASC_findAcceptedPresentationContext(assoc->params, pid, &pc);
    if (c.bad() || strcmp(pc.abstractSyntax, req->AffectedSOPClassUID) != 0) {
        snprintf(why, sizeof why, "SOP class %s not negotiated for context %d",
                 req->AffectedSOPClassUID, pid);
        status = DCM_STATUS_SOP_CLASS_NOT_SUPPORTED;
        goto refuse;
    }
    status = scp->hooks.store_begin(scp->hooks.ud, ai, req->AffectedSOPClassUID,
                                    req->AffectedSOPInstanceUID, path, &fd, why,
                                    sizeof why);
    if (status != 0) goto refuse;

    {
        SpoolConsumer sink(fd, scp->cfg.max_instance_bytes, rx);
        SpoolStream out(&sink);
        c = write_meta(out, req->AffectedSOPClassUID, req->AffectedSOPInstanceUID,
                       pc.acceptedTransferSyntax, ai->calling_ae);
        if (c.bad() || !sink.good()) {
            snprintf(why, sizeof why, "cannot write spool file: %s",
                     ctg_strerror(sink.error() ? sink.error() : CTG_EIO));
            scp->hooks.store_abort(scp->hooks.ud, path, fd);
            log_error("scp[%u]: %s", ai->id, why);
            status = DCM_STATUS_OUT_OF_RESOURCES;
            goto refuse;
        }
        sink.start_data();
        T_ASC_PresentationContextID data_pid = 0;
        c = DIMSE_receiveDataSetInFile(assoc, DIMSE_NONBLOCKING, dimse_to,
                                       &data_pid, &out, NULL, NULL);
        if (c.bad()) {
            scp->hooks.store_abort(scp->hooks.ud, path, fd);
            if (c == DIMSE_OUTOFRESOURCES || sink.error()) {
                /* The rest of the data set was drained: we can answer. */
                if (sink.error() == CTG_ETOOBIG)
                    snprintf(why, sizeof why, "data set larger than %llu bytes",
                             (unsigned long long)scp->cfg.max_instance_bytes);
                else
                    snprintf(why, sizeof why, "cannot write spool file: %s",
                             ctg_strerror(sink.error()));
                log_error("scp[%u]: C-STORE %s from %s refused: %s", ai->id,
                          req->AffectedSOPInstanceUID, ai->calling_ae, why);
                send_store_rsp(assoc, pid, req, DCM_STATUS_OUT_OF_RESOURCES,
                               why, ai);
                return EC_Normal;
            }
            return c;
        }
        sink.finish();
        if (sink.error()) {
            scp->hooks.store_abort(scp->hooks.ud, path, fd);
            snprintf(why, sizeof why, "cannot write spool file: %s", ctg_strerror(sink.error()));
            status = DCM_STATUS_OUT_OF_RESOURCES;
            goto failed;
        }
        uint64_t size = sink.written();

        ctg_instance inst;
        dcm_rx_file rxf;
        sink.describe(&rxf, path, pc.acceptedTransferSyntax);
        if (dcm_parse_received(&rxf, &inst, why, sizeof why) < 0) {
            scp->hooks.store_abort(scp->hooks.ud, path, fd);
            status = DCM_STATUS_CANNOT_UNDERSTAND;
            goto failed;
        }
        if (strcmp(inst.sop_class, req->AffectedSOPClassUID) != 0) {
            snprintf(why, sizeof why, "SOP Class UID in data set (%s) differs from command",
                     inst.sop_class);
            scp->hooks.store_abort(scp->hooks.ud, path, fd);
            status = DCM_STATUS_DATASET_MISMATCH;
            goto failed;
        }
        if (strcmp(inst.sop_uid, req->AffectedSOPInstanceUID) != 0) {
            snprintf(why, sizeof why, "SOP Instance UID in data set differs from command");
            scp->hooks.store_abort(scp->hooks.ud, path, fd);
            status = DCM_STATUS_CANNOT_UNDERSTAND;
            goto failed;
        }
        status = scp->hooks.store_end(scp->hooks.ud, ai, &inst, path, fd,
                                      sink.data_offset(), size, why, sizeof why);
        send_store_rsp(assoc, pid, req, status, why, ai);
        return EC_Normal;
    }

failed:
    log_warn("scp[%u]: C-STORE %s from %s failed (0x%04x): %s", ai->id,
             req->AffectedSOPInstanceUID, ai->calling_ae, status, why);
    send_store_rsp(assoc, pid, req, status, why, ai);
    return EC_Normal;

refuse:
    log_warn("scp[%u]: C-STORE %s from %s refused (0x%04x): %s", ai->id,
             req->AffectedSOPInstanceUID, ai->calling_ae, status, why);
    if (req->DataSetType != DIMSE_DATASET_NULL) {
        DIC_UL bytes = 0, pdvs = 0;
        c = DIMSE_ignoreDataSet(assoc, DIMSE_NONBLOCKING, dimse_to, &bytes, &pdvs);
        if (c.bad()) return c;
    }
    send_store_rsp(assoc, pid, req, status, why, ai);
    return EC_Normal;
}

/* ---- association thread -------------------------------------------------- */

struct assoc_job {
    dcm_scp *scp;
    T_ASC_Association *assoc;
    int tls;
};

/* DCMTK as Debian builds it leaves Nagle's algorithm on.  A C-STORE
 * response is a small write after the data set's last PDV, so Nagle plus the
 * peer's delayed ACK would add ~40 ms to every instance. */
struct SocketOf : DcmTransportConnection {
    /* getSocket() is protected; naming it through a derived class yields a
     * member pointer that any DcmTransportConnection can be called with. */
    static DcmNativeSocketType get(DcmTransportConnection *c)
    {
        return (c->*(&SocketOf::getSocket))();
    }
};

static int socket_of(T_ASC_Association *assoc)
{
    PRIVATE_ASSOCIATIONKEY *key = (PRIVATE_ASSOCIATIONKEY *)assoc->DULassociation;
    if (!key || !key->connection) return -1;
    return SocketOf::get(key->connection);
}

/* Sends an A-ABORT and closes.  DCMTK then waits for the peer to close
 * the connection (reading and discarding what it still sends), which a hung
 * peer never does: the association, and its slot in the per-AE and global
 * limits, would stay for another socket timeout.  Every abort here gives up
 * on the peer, so the read side is shut first: the wait ends at the end of
 * what is already buffered. */
static void abort_assoc(T_ASC_Association *assoc)
{
    int fd = socket_of(assoc);
    if (fd >= 0) shutdown(fd, SHUT_RD);
    ASC_abortAssociation(assoc);
}

static void run_association(dcm_scp *scp, T_ASC_Association *assoc,
                            dcm_assoc_info *ai)
{
    OFCondition c;
    OFString s;
    double idle = 0;
    RxBuffers rx;

    for (;;) {
        T_DIMSE_Message msg;
        T_ASC_PresentationContextID pid = 0;
        if (scp->abort_all.load()) {
            log_warn("scp[%u]: aborting association with %s (shutdown)", ai->id,
                     ai->calling_ae);
            abort_assoc(assoc);
            return;
        }
        /* Poll once a second so shutdown and the idle limit are noticed. */
        c = DIMSE_receiveCommand(assoc, DIMSE_NONBLOCKING, 1, &pid, &msg, NULL);
        if (c == DIMSE_NODATAAVAILABLE) {
            idle += 1;
            if (idle >= scp->idle_timeout.load()) {
                log_warn("scp[%u]: %s idle for %.0f s, aborting", ai->id,
                         ai->calling_ae, idle);
                abort_assoc(assoc);
                return;
            }
            continue;
        }
        idle = 0;
        if (c.bad() && scp->abort_all.load()) {
            log_warn("scp[%u]: association with %s cut (shutdown)", ai->id, ai->calling_ae);
            return;
        }
        if (c == DUL_PEERREQUESTEDRELEASE) {
            ASC_acknowledgeRelease(assoc);
            log_debug("scp[%u]: released by %s", ai->id, ai->calling_ae);
            return;
        }
        if (c == DUL_PEERABORTEDASSOCIATION) {
            log_info("scp[%u]: aborted by %s", ai->id, ai->calling_ae);
            return;
        }
        if (c.bad()) {
            log_warn("scp[%u]: receiving command from %s failed, aborting: %s",
                     ai->id, ai->calling_ae, DimseCondition::dump(s, c).c_str());
            abort_assoc(assoc);
            return;
        }
        switch (msg.CommandField) {
        case DIMSE_C_ECHO_RQ:
            c = DIMSE_sendEchoResponse(assoc, pid, &msg.msg.CEchoRQ,
                                       STATUS_Success, NULL);
            log_debug("scp[%u]: C-ECHO from %s", ai->id, ai->calling_ae);
            break;
        case DIMSE_C_STORE_RQ:
            c = handle_store(scp, assoc, pid, &msg.msg.CStoreRQ, ai, &rx);
            break;
        default:
            log_warn("scp[%u]: unsupported DIMSE command 0x%04x from %s, aborting",
                     ai->id, (unsigned)msg.CommandField, ai->calling_ae);
            c = DIMSE_BADCOMMANDTYPE;
            break;
        }
        if (c.bad()) {
            log_warn("scp[%u]: DIMSE failure with %s, aborting: %s", ai->id,
                     ai->calling_ae, DimseCondition::dump(s, c).c_str());
            abort_assoc(assoc);
            return;
        }
    }
}

/* Registers a running association's socket; with shutdown already under
 * way the socket is cut at once. */
static void track_fd(dcm_scp *scp, int fd)
{
    if (fd < 0) return;
    pthread_mutex_lock(&scp->fd_lock);
    if (scp->nfds < (int)(sizeof scp->fds / sizeof scp->fds[0])) scp->fds[scp->nfds++] = fd;
    if (scp->abort_all.load()) shutdown(fd, SHUT_RDWR);
    pthread_mutex_unlock(&scp->fd_lock);
}

/* Must run before the socket is closed, so abort_all() never touches a
 * descriptor number that was reused. */
static void untrack_fd(dcm_scp *scp, int fd)
{
    if (fd < 0) return;
    pthread_mutex_lock(&scp->fd_lock);
    for (int i = 0; i < scp->nfds; i++) {
        if (scp->fds[i] == fd) {
            scp->fds[i] = scp->fds[--scp->nfds];
            break;
        }
    }
    pthread_mutex_unlock(&scp->fd_lock);
}

static void *association_main(void *arg)
{
    assoc_job *job = (assoc_job *)arg;
    dcm_scp *scp = job->scp;
    T_ASC_Association *assoc = job->assoc;
    dcm_assoc_info ai;
    memset(&ai, 0, sizeof ai);
    ai.id = ++scp->next_id;
    ai.tls = job->tls;
    delete job;

    int fd = socket_of(assoc), one = 1;
    if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    track_fd(scp, fd);
    T_ASC_Parameters *p = assoc->params;
    OFStandard::strlcpy(ai.calling_ae, p->DULparams.callingAPTitle, sizeof ai.calling_ae);
    OFStandard::strlcpy(ai.called_ae, p->DULparams.calledAPTitle, sizeof ai.called_ae);
    OFStandard::strlcpy(ai.peer, p->DULparams.callingPresentationAddress, sizeof ai.peer);

    char why[200] = "";
    int verdict = scp->hooks.admit(scp->hooks.ud, &ai, why, sizeof why);
    if (verdict != DCM_ADMIT) {
        log_warn("scp[%u]: association from %s (%s) to %s%s rejected: %s", ai.id,
                 ai.calling_ae, ai.peer, ai.called_ae, ai.tls ? " over TLS" : "", why);
        reject(assoc, verdict);
    } else if (negotiate(assoc, &ai) < 0) {
        reject(assoc, DCM_REJECT_NO_REASON);
        scp->hooks.closed(scp->hooks.ud, &ai);
    } else if (ASC_acknowledgeAssociation(assoc).bad()) {
        log_warn("scp[%u]: acknowledging association from %s failed", ai.id,
                 ai.calling_ae);
        scp->hooks.closed(scp->hooks.ud, &ai);
    } else {
        log_info("scp[%u]: association from %s (%s)%s accepted", ai.id, ai.calling_ae,
                 ai.peer, ai.tls ? " over TLS" : "");
        run_association(scp, assoc, &ai);
        scp->hooks.closed(scp->hooks.ud, &ai);
    }
    untrack_fd(scp, fd);
    ASC_dropSCPAssociation(assoc);
    ASC_destroyAssociation(&assoc);
    scp->active--;
    return NULL;
}

/* ---- listeners -------------------------------------------------------------- */

struct listener_arg {
    dcm_scp *scp;
    int tls;
};

static void *listener_main(void *arg)
{
    listener_arg *la = (listener_arg *)arg;
    dcm_scp *scp = la->scp;
    int tls = la->tls;
    delete la;
    T_ASC_Network *net = scp->net[tls];

    while (!scp->stop.load()) {
        T_ASC_Association *assoc = NULL;
        OFCondition c = ASC_receiveAssociation(net, &assoc, scp->cfg.max_pdu, NULL,
                                               NULL, tls ? OFTrue : OFFalse,
                                               DUL_NOBLOCK, 1);
        if (c.bad()) {
            OFString s;
            if (c.code() == DULC_TCPINITERROR)
                /* Another listener accepted the connection first. */
                log_debug("scp: %s", DimseCondition::dump(s, c).c_str());
            else if (c != DUL_NOASSOCIATIONREQUEST)
                log_warn("scp: receiving association on %s port failed: %s",
                         tls ? "TLS" : "plain", DimseCondition::dump(s, c).c_str());
            if (assoc) {
                ASC_dropSCPAssociation(assoc);
                ASC_destroyAssociation(&assoc);
            }
            continue;
        }
        assoc_job *job = new assoc_job{scp, assoc, tls};
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_t th;
        scp->active++;
        if (pthread_create(&th, &attr, association_main, job) != 0) {
            scp->active--;
            log_error("scp: pthread_create failed; dropping association");
            reject(assoc, DCM_REJECT_BUSY);
            ASC_dropSCPAssociation(assoc);
            ASC_destroyAssociation(&assoc);
            delete job;
        }
        pthread_attr_destroy(&attr);
    }
    return NULL;
}

static DcmTLSSecurityProfile tls_profile(const char *name)
{
    if (!name || !name[0] || !strcasecmp(name, "bcp195")) return TSP_Profile_BCP195;
    if (!strcasecmp(name, "bcp195-nd")) return TSP_Profile_BCP195_ND;
    if (!strcasecmp(name, "bcp195-ex")) return TSP_Profile_BCP195_Extended;
    return TSP_Profile_None;
}

int dcm__tls_layer(const dcm_tls_config *t, int acceptor, DcmTLSTransportLayer **out)
{
    DcmTLSSecurityProfile prof = tls_profile(t->profile);
    if (prof == TSP_Profile_None) {
        log_error("tls: unknown profile '%s' (use bcp195, bcp195-nd, bcp195-ex)",
                  t->profile);
        return CTG_ECONFIG;
    }
    DcmTLSTransportLayer *tl =
        new DcmTLSTransportLayer(acceptor ? NET_ACCEPTOR : NET_REQUESTOR, NULL, OFFalse);
    OFCondition c;
    if (t->certificate && t->certificate[0]) {
        if ((c = tl->setPrivateKeyFile(t->private_key, DCF_Filetype_PEM)).bad()) {
            log_error("tls: cannot load private key %s: %s", t->private_key, c.text());
            goto fail;
        }
        if ((c = tl->setCertificateFile(t->certificate, DCF_Filetype_PEM)).bad()) {
            log_error("tls: cannot load certificate %s: %s", t->certificate, c.text());
            goto fail;
        }
        if (!tl->checkPrivateKeyMatchesCertificate()) {
            log_error("tls: private key %s does not match certificate %s",
                      t->private_key, t->certificate);
            goto fail;
        }
    } else if (acceptor) {
        log_error("tls: a TLS listener needs a certificate and private key");
        goto fail;
    }
    if (t->ca_file && t->ca_file[0] &&
        (c = tl->addTrustedCertificateFile(t->ca_file, DCF_Filetype_PEM)).bad()) {
        log_error("tls: cannot load CA file %s: %s", t->ca_file, c.text());
        goto fail;
    }
    if ((c = tl->setTLSProfile(prof)).bad() || (c = tl->activateCipherSuites()).bad()) {
        log_error("tls: cannot set up the cipher suites: %s", c.text());
        goto fail;
    }
    tl->setCertificateVerification(t->verify_peer ? DCV_requireCertificate
                                                  : DCV_ignoreCertificate);
    *out = tl;
    return 0;
fail:
    delete tl;
    return CTG_ECONFIG;
}

void dcm_global_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, dcm__init_once);
}

int dcm_scp_start(const dcm_scp_config *cfg, const dcm_scp_hooks *hooks,
                  dcm_scp **out)
{
    dcm_global_init();
    dcm_scp *scp = new dcm_scp();
    scp->cfg = *cfg;
    scp->hooks = *hooks;
    OFStandard::strlcpy(scp->ae_title, cfg->ae_title, sizeof scp->ae_title);
    scp->cfg.ae_title = scp->ae_title;
    scp->stop = 0;
    scp->abort_all = 0;
    scp->active = 0;
    scp->next_id = 0;
    pthread_mutex_init(&scp->fd_lock, NULL);
    scp->nfds = 0;
    dcm_scp_set_timeouts(scp, cfg->acse_timeout, cfg->dimse_timeout, cfg->idle_timeout);

    int ports[2] = {cfg->port, cfg->tls_port};
    for (int i = 0; i < 2; i++) {
        if (ports[i] <= 0) continue;
        OFCondition c = ASC_initializeNetwork(NET_ACCEPTOR, ports[i],
                                              cfg->acse_timeout, &scp->net[i]);
        if (c.bad()) {
            OFString s;
            log_error("scp: cannot listen on port %d: %s", ports[i],
                      DimseCondition::dump(s, c).c_str());
            goto fail;
        }
        if (i == 1) {
            if (dcm__tls_layer(&cfg->tls, 1, &scp->tls) < 0) goto fail;
            if (ASC_setTransportLayer(scp->net[1], scp->tls, 0).bad()) {
                log_error("scp: cannot install the TLS transport layer");
                goto fail;
            }
        }
    }
    for (int i = 0; i < 2; i++) {
        if (!scp->net[i]) continue;
        PRIVATE_NETWORKKEY *key = (PRIVATE_NETWORKKEY *)scp->net[i]->network;
        int lfd = key->networkSpecific.TCP.listenSocket;
        if (fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK) != 0) {
            log_error("scp: cannot make the listen socket non-blocking: %s", strerror(errno));
            goto fail;
        }
        for (int k = 0; k < LISTENERS_PER_PORT; k++) {
            listener_arg *la = new listener_arg{scp, i};
            if (pthread_create(&scp->listener[i][k], NULL, listener_main, la) != 0) {
                delete la;
                log_error("scp: cannot start listener thread");
                goto fail;
            }
            scp->have_listener[i][k] = 1;
        }
    }
    *out = scp;
    return 0;
fail:
    dcm_scp_stop_accepting(scp);
    dcm_scp_free(scp);
    return CTG_EDICOM;
}

void dcm_scp_set_timeouts(dcm_scp *scp, int acse, int dimse, int idle)
{
    scp->acse_timeout = acse > 0 ? acse : 30;
    scp->dimse_timeout = dimse > 0 ? dimse : 60;
    scp->idle_timeout = idle > 0 ? idle : 300;
    /* A TLS handshake and every read of an accepted socket are bounded by
     * the socket receive timeout. */
    dcmSocketReceiveTimeout.set(scp->dimse_timeout.load());
    dcmSocketSendTimeout.set(scp->dimse_timeout.load());
}

void dcm_scp_stop_accepting(dcm_scp *scp)
{
    if (!scp) return;
    scp->stop = 1;
    for (int i = 0; i < 2; i++) {
        for (int k = 0; k < LISTENERS_PER_PORT; k++) {
            if (scp->have_listener[i][k]) {
                pthread_join(scp->listener[i][k], NULL);
                scp->have_listener[i][k] = 0;
            }
        }
        if (scp->net[i]) ASC_dropNetwork(&scp->net[i]);
        scp->net[i] = NULL;
    }
}

int dcm_scp_active(dcm_scp *scp) { return scp ? scp->active.load() : 0; }

void dcm_scp_abort_all(dcm_scp *scp)
{
    if (!scp) return;
    /* Cutting the sockets wakes an association blocked in a read (a peer
     * that stopped mid data set) and keeps the A-ABORT from waiting for a
     * peer that no longer reads. */
    pthread_mutex_lock(&scp->fd_lock);
    scp->abort_all = 1;
    for (int i = 0; i < scp->nfds; i++) shutdown(scp->fds[i], SHUT_RDWR);
    pthread_mutex_unlock(&scp->fd_lock);
}

void dcm_scp_free(dcm_scp *scp)
{
    if (!scp) return;
    dcm_scp_stop_accepting(scp);
    /* Association threads hold no pointer into scp after active drops. */
    while (scp->active.load() > 0) usleep(10000);
    pthread_mutex_destroy(&scp->fd_lock);
    delete scp->tls;
    delete scp;
}
