/*
 * scu.cc - the service class user side: C-ECHO, and C-STORE of files sent
 * exactly as stored.
 *
 * dcm_send_files() does not re-encode: the command set is built here and the
 * bytes that follow the file meta header go on the wire in PDVs unchanged.
 * That keeps a forwarded instance bit-identical, and it is how the tests
 * deliver deliberately malformed data sets that a re-encoding sender (such
 * as storescu) would refuse to load.
 *
 * Threading: reentrant; each call owns its network and association.
 */
#include "dicom.h"
#include "dicom_int.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <map>
#include <string>
#include <vector>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcostrmb.h"
#include "dcmtk/dcmdata/dctk.h"
#include "dcmtk/dcmnet/assoc.h"
#include "dcmtk/dcmnet/dimse.h"
#include "dcmtk/dcmnet/diutil.h"
#include "dcmtk/dcmnet/dul.h"
#include "dcmtk/dcmtls/tlslayer.h"

namespace {

struct Session {
    T_ASC_Network *net = nullptr;
    T_ASC_Association *assoc = nullptr;
    DcmTLSTransportLayer *tls = nullptr;

    ~Session()
    {
        if (assoc) {
            ASC_releaseAssociation(assoc);
            ASC_destroyAssociation(&assoc);
        }
        if (net) ASC_dropNetwork(&net);
        delete tls;
    }
};

struct FileInfo {
    std::string sop_class, sop_uid, xfer;
    long offset = -1; /* where the data set starts */
};

struct Context {
    std::string sop_class, xfer;
};

/* Opens an association proposing the given contexts (one transfer syntax
 * each, ids 1, 3, 5, ...). */
int open_session(const dcm_peer *p, const std::vector<Context> &ctx, Session &s,
                 char *why, size_t n)
{
    dcm_global_init();
    OFString str;
    OFCondition c = ASC_initializeNetwork(NET_REQUESTOR, 0, p->timeout, &s.net);
    if (c.bad()) {
        snprintf(why, n, "network: %s", DimseCondition::dump(str, c).c_str());
        return CTG_EDICOM;
    }
    if (p->tls) {
        if (dcm__tls_layer(p->tls, 0, &s.tls) < 0) {
            snprintf(why, n, "TLS set-up failed");
            return CTG_ECONFIG;
        }
        ASC_setTransportLayer(s.net, s.tls, 0);
    }
    T_ASC_Parameters *params = nullptr;
    ASC_createAssociationParameters(&params, ASC_DEFAULTMAXPDU);
    ASC_setAPTitles(params, p->calling_ae, p->called_ae, NULL);
    ASC_setTransportLayerType(params, p->tls ? OFTrue : OFFalse);
    char peer[300];
    snprintf(peer, sizeof peer, "%s:%d", p->host, p->port);
    ASC_setPresentationAddresses(params, "localhost", peer);
    for (size_t i = 0; i < ctx.size() && i < 128; i++) {
        const char *xs[1] = {ctx[i].xfer.c_str()};
        c = ASC_addPresentationContext(params, (T_ASC_PresentationContextID)(2 * i + 1),
                                       ctx[i].sop_class.c_str(), xs, 1);
        if (c.bad()) break;
    }
    if (c.good()) c = ASC_requestAssociation(s.net, params, &s.assoc);
    if (c.bad()) {
        if (c == DUL_ASSOCIATIONREJECTED) {
            T_ASC_RejectParameters rej;
            ASC_getRejectParameters(params, &rej);
            OFString r;
            ASC_printRejectParameters(r, &rej);
            snprintf(why, n, "association rejected: %s", r.c_str());
        } else {
            snprintf(why, n, "association failed: %s", DimseCondition::dump(str, c).c_str());
        }
        if (s.assoc) {
            ASC_destroyAssociation(&s.assoc);
        } else {
            ASC_destroyAssociationParameters(&params);
        }
        s.assoc = nullptr;
        return CTG_EDICOM;
    }
    return 0;
}

int read_file_info(const char *path, FileInfo &fi, char *why, size_t n)
{
    DcmFileFormat ff;
    OFCondition c = ff.loadFile(path, EXS_Unknown, EGL_noChange, 0, ERM_metaOnly);
    if (c.bad()) {
        snprintf(why, n, "%s: cannot read meta header: %s", path, c.text());
        return -1;
    }
    DcmMetaInfo *m = ff.getMetaInfo();
    OFString a, b, x;
    Uint32 glen = 0;
    m->findAndGetOFString(DCM_MediaStorageSOPClassUID, a);
    m->findAndGetOFString(DCM_MediaStorageSOPInstanceUID, b);
    m->findAndGetOFString(DCM_TransferSyntaxUID, x);
    if (a.empty() || b.empty() || x.empty() ||
        m->findAndGetUint32(DCM_FileMetaInformationGroupLength, glen).bad()) {
        snprintf(why, n, "%s: incomplete file meta header", path);
        return -1;
    }
    fi.sop_class = a.c_str();
    fi.sop_uid = b.c_str();
    fi.xfer = x.c_str();
    /* preamble (128) + "DICM" + the group length element (12) + group */
    fi.offset = 132 + 12 + (long)glen;
    return 0;
}

OFCondition write_pdvs(T_ASC_Association *assoc, T_ASC_PresentationContextID pid,
                       DUL_DATAPDV type, const unsigned char *data, size_t len)
{
    size_t max = assoc->sendPDVLength & ~(size_t)1;
    size_t off = 0;
    do {
        size_t frag = len - off > max ? max : len - off;
        DUL_PDV pdv;
        pdv.fragmentLength = frag;
        pdv.presentationContextID = pid;
        pdv.pdvType = type;
        pdv.lastPDV = off + frag == len;
        pdv.data = (void *)(data + off);
        DUL_PDVLIST list;
        memset(&list, 0, sizeof list);
        list.count = 1;
        list.pdv = &pdv;
        OFCondition c = DUL_WritePDVs(&assoc->DULassociation, &list);
        if (c.bad()) return c;
        off += frag;
    } while (off < len);
    return EC_Normal;
}

/* The C-STORE-RQ command set, implicit VR little endian as DIMSE demands. */
OFCondition send_store_command(T_ASC_Association *assoc, T_ASC_PresentationContextID pid,
                               const FileInfo &fi, Uint16 msg_id)
{
    DcmDataset cmd;
    cmd.putAndInsertUint32(DCM_CommandGroupLength, 0);
    cmd.putAndInsertString(DCM_AffectedSOPClassUID, fi.sop_class.c_str());
    cmd.putAndInsertUint16(DCM_CommandField, 0x0001);
    cmd.putAndInsertUint16(DCM_MessageID, msg_id);
    cmd.putAndInsertUint16(DCM_Priority, 0);
    cmd.putAndInsertUint16(DCM_CommandDataSetType, 0x0000);
    cmd.putAndInsertString(DCM_AffectedSOPInstanceUID, fi.sop_uid.c_str());
    OFCondition c = cmd.computeGroupLengthAndPadding(EGL_recalcGL, EPD_noChange,
                                                     EXS_LittleEndianImplicit);
    if (c.bad()) return c;
    Uint32 len = cmd.calcElementLength(EXS_LittleEndianImplicit, EET_ExplicitLength);
    std::vector<unsigned char> buf(len + 16);
    DcmOutputBufferStream out(buf.data(), buf.size());
    cmd.transferInit();
    c = cmd.write(out, EXS_LittleEndianImplicit, EET_ExplicitLength, NULL);
    cmd.transferEnd();
    if (c.bad()) return c;
    void *p;
    offile_off_t plen;
    out.flushBuffer(p, plen);
    return write_pdvs(assoc, pid, DUL_COMMANDPDV, (unsigned char *)p, (size_t)plen);
}

OFCondition send_file_data(T_ASC_Association *assoc, T_ASC_PresentationContextID pid,
                           const char *path, long offset)
{
    FILE *f = fopen(path, "rb");
    if (!f) return DIMSE_SENDFAILED;
    std::vector<unsigned char> data;
    if (fseek(f, offset, SEEK_SET) == 0) {
        unsigned char chunk[65536];
        size_t got;
        while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
            data.insert(data.end(), chunk, chunk + got);
    }
    fclose(f);
    return write_pdvs(assoc, pid, DUL_DATASETPDV, data.data(), data.size());
}

} // namespace

int dcm_echo(const dcm_peer *p, char *why, size_t n)
{
    std::vector<Context> ctx{{UID_VerificationSOPClass, UID_LittleEndianImplicitTransferSyntax}};
    Session s;
    int r = open_session(p, ctx, s, why, n);
    if (r < 0) return r;
    if (ASC_countAcceptedPresentationContexts(s.assoc->params) == 0) {
        snprintf(why, n, "verification SOP class not accepted");
        return CTG_EDICOM;
    }
    DIC_US id = s.assoc->nextMsgID++, status = 0;
    DcmDataset *detail = NULL;
    OFCondition c = DIMSE_echoUser(s.assoc, id, DIMSE_BLOCKING, p->timeout, &status, &detail);
    delete detail;
    if (c.bad()) {
        OFString str;
        snprintf(why, n, "C-ECHO failed: %s", DimseCondition::dump(str, c).c_str());
        return CTG_EDICOM;
    }
    if (status != 0) {
        snprintf(why, n, "C-ECHO status 0x%04x", status);
        return CTG_EDICOM;
    }
    return 0;
}

int dcm_send_files(const dcm_peer *p, const char *const *files, int nfiles, int *status,
                   char *why, size_t n)
{
    std::vector<FileInfo> info(nfiles);
    std::vector<Context> ctx;
    std::map<std::string, int> seen;
    for (int i = 0; i < nfiles; i++) {
        status[i] = -1;
        char w[512];
        if (read_file_info(files[i], info[i], w, sizeof w) < 0) {
            log_warn("send: %s", w);
            continue;
        }
        std::string key = info[i].sop_class + "|" + info[i].xfer;
        if (!seen.count(key)) {
            seen[key] = 1;
            ctx.push_back({info[i].sop_class, info[i].xfer});
        }
    }
    if (ctx.empty()) {
        snprintf(why, n, "no sendable file");
        return CTG_EINVAL;
    }
    Session s;
    int r = open_session(p, ctx, s, why, n);
    if (r < 0) return r;

    for (int i = 0; i < nfiles; i++) {
        const FileInfo &fi = info[i];
        if (fi.offset < 0) continue;
        T_ASC_PresentationContextID pid = ASC_findAcceptedPresentationContextID(
            s.assoc, fi.sop_class.c_str(), fi.xfer.c_str());
        if (pid == 0) {
            log_warn("send: %s: no accepted presentation context for %s / %s", files[i],
                     dcmFindNameOfUID(fi.sop_class.c_str(), fi.sop_class.c_str()),
                     fi.xfer.c_str());
            continue;
        }
        Uint16 id = s.assoc->nextMsgID++;
        OFCondition c = send_store_command(s.assoc, pid, fi, id);
        if (c.good()) c = send_file_data(s.assoc, pid, files[i], fi.offset);
        T_DIMSE_Message rsp;
        T_ASC_PresentationContextID rpid;
        DcmDataset *detail = NULL;
        if (c.good())
            c = DIMSE_receiveCommand(s.assoc, DIMSE_BLOCKING, p->timeout, &rpid, &rsp, &detail);
        if (c.bad()) {
            OFString str;
            snprintf(why, n, "association broke while sending %s: %s", files[i],
                     DimseCondition::dump(str, c).c_str());
            delete detail;
            ASC_abortAssociation(s.assoc);
            ASC_destroyAssociation(&s.assoc);
            return CTG_EDICOM;
        }
        if (rsp.CommandField != DIMSE_C_STORE_RSP) {
            snprintf(why, n, "unexpected response 0x%04x", (unsigned)rsp.CommandField);
            delete detail;
            ASC_abortAssociation(s.assoc);
            ASC_destroyAssociation(&s.assoc);
            return CTG_EDICOM;
        }
        status[i] = rsp.msg.CStoreRSP.DimseStatus;
        OFString comment;
        if (detail) detail->findAndGetOFString(DCM_ErrorComment, comment);
        delete detail;
        if (status[i] != 0)
            log_info("send: %s: status 0x%04x%s%s", files[i], (unsigned)status[i],
                     comment.empty() ? "" : ": ", comment.c_str());
    }
    return 0;
}
