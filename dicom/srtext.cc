/*
 * srtext.cc - the text of a received report SR (dcm_sr_text, dicom.h): the
 * radiologist's final report as plain text for the nightly retrain, read
 * through DCMTK's DSRDocument.
 *
 * The content tree is walked in document order (depth first, as a reader
 * sees it).  Containers give the headings; TEXT values, CODE meanings and
 * NUM values give the lines.  A typical TID 2000 Basic Diagnostic Imaging
 * Report
 *
 *   CONTAINER "Radiology Report"
 *     CONTAINER "Findings"     TEXT "Finding" = "Liver: 12 mm cyst ..."
 *     CONTAINER "Impressions"  TEXT "Impression" = "Benign cyst."
 *
 * becomes
 *
 *   Radiology Report
 *
 *   Findings:
 *   Liver: 12 mm cyst ...
 *
 *   Impressions:
 *   Benign cyst.
 *
 * The data set is converted to UTF-8 first (DCMTK's character set support)
 * where its Specific Character Set says otherwise; whatever still is not
 * valid UTF-8 is replaced, so the store never holds bytes that are not text.
 *
 * dcmsr's reader warns on stderr about every deviation of a received SR
 * from its IOD, and about every Specific Character Set its VR checker does
 * not know (UTF-8 among them), i.e. on nearly every report from another
 * system.  Its logger is therefore set to errors only, once per process;
 * our own log line says what became of each SR.
 *
 * Threading: reentrant; nothing here is shared between calls.
 */
#include "dicom.h"
#include "dicom_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <new>
#include <string>
#include <vector>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dctk.h"
#include "dcmtk/dcmsr/dsrdoc.h"
#include "dcmtk/oflog/oflog.h"

/* SR files larger than this are not read for text: reports are a few KiB,
 * and the whole data set is loaded into memory. */
#define SR_FILE_MAX (64ull << 20)

/* Appends s to out as clean UTF-8: valid multi-byte sequences are kept,
 * invalid bytes become '?', CR LF and lone CR become LF, tabs stay, other
 * C0 controls and DEL are dropped. */
static void append_clean(std::string &out, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        if (c < 0x80) {
            if (c == '\r') {
                out += '\n';
                i += (i + 1 < len && p[i + 1] == '\n') ? 2 : 1;
                continue;
            }
            if (c == '\n' || c == '\t' || (c >= 0x20 && c != 0x7f)) out += (char)c;
            i++;
            continue;
        }
        /* Length and lower bound of a well-formed sequence (RFC 3629: no
         * overlongs, no surrogates, nothing above U+10FFFF). */
        size_t k = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
                 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        int ok = k > 0 && i + k <= len;
        for (size_t j = 1; ok && j < k; j++) ok = (p[i + j] & 0xc0) == 0x80;
        if (ok && k == 3) {
            if (c == 0xe0 && p[i + 1] < 0xa0) ok = 0;
            if (c == 0xed && p[i + 1] >= 0xa0) ok = 0;
        }
        if (ok && k == 4) {
            if (c == 0xf0 && p[i + 1] < 0x90) ok = 0;
            if (c == 0xf4 && p[i + 1] >= 0x90) ok = 0;
        }
        if (!ok) {
            out += '?';
            i++;
            continue;
        }
        out.append((const char *)p + i, k);
        i += k;
    }
}

static std::string clean(const OFString &s)
{
    std::string out;
    append_clean(out, s.c_str(), s.length());
    /* Trailing blanks and line ends would only make ragged output. */
    while (!out.empty() && (out.back() == ' ' || out.back() == '\n' || out.back() == '\t'))
        out.pop_back();
    size_t b = 0;
    while (b < out.size() && (out[b] == ' ' || out[b] == '\n' || out[b] == '\t')) b++;
    return out.substr(b);
}

static void copy_field(char *dst, size_t cap, const OFString &v)
{
    std::string c = clean(v);
    /* Cut at a character boundary so a cut field is still UTF-8. */
    size_t len = c.size();
    if (len >= cap) {
        len = cap - 1;
        while (len > 0 && ((unsigned char)c[len] & 0xc0) == 0x80) len--;
    }
    memcpy(dst, c.data(), len);
    dst[len] = 0;
}

/* 1 when a value's concept name only repeats its heading: equal, or the
 * heading is the plural ("Finding" under "Findings"), case ignored. */
static int repeats_heading(const std::string &concept, const std::string &heading)
{
    if (concept.empty()) return 1;
    if (heading.empty()) return 0;
    if (!strcasecmp(concept.c_str(), heading.c_str())) return 1;
    return heading.size() == concept.size() + 1 &&
           (heading.back() == 's' || heading.back() == 'S') &&
           !strncasecmp(concept.c_str(), heading.c_str(), concept.size());
}

struct Walk {
    std::string text;
    std::vector<std::string> headings; /* by level: headings[l-1] */
    int nitems = 0;
    int truncated = 0;
    std::string person_observer;

    /* Adds one line (or heading) unless the cap is reached; a report cut
     * there ends at a whole line. */
    void line(const std::string &s, int blank_before)
    {
        if (truncated) return;
        size_t need = s.size() + 2 + (blank_before ? 1 : 0);
        if (text.size() + need > DCM_SR_TEXT_MAX) {
            truncated = 1;
            return;
        }
        if (blank_before && !text.empty()) text += '\n';
        text += s;
        text += '\n';
    }

    /* The heading in force at a level: the nearest container above. */
    std::string heading_for(size_t level) const
    {
        for (size_t l = level - 1; l >= 1 && l <= headings.size(); l--)
            if (!headings[l - 1].empty()) return headings[l - 1];
        return std::string();
    }

    void value(size_t level, const std::string &concept, const std::string &v)
    {
        if (v.empty()) return;
        nitems++;
        if (repeats_heading(concept, heading_for(level)))
            line(v, 0);
        else
            line(concept + ": " + v, 0);
    }
};

static void walk_tree(DSRDocumentTree &tree, Walk &w)
{
    if (!tree.gotoRoot()) return;
    do {
        size_t level = tree.getLevel();
        if (level == 0) continue;
        DSRContentItem &ci = tree.getCurrentContentItem();
        std::string concept = clean(ci.getConceptName().getCodeMeaning());
        /* Headings deeper than this item no longer apply. */
        if (w.headings.size() >= level) w.headings.resize(level - 1);
        while (w.headings.size() < level - 1) w.headings.push_back(std::string());
        switch (ci.getValueType()) {
        case DSRTypes::VT_Container:
            w.headings.push_back(concept);
            if (!concept.empty()) w.line(level == 1 ? concept : concept + ":", level > 1);
            break;
        case DSRTypes::VT_Text:
            w.headings.push_back(std::string());
            w.value(level, concept, clean(ci.getStringValue()));
            break;
        case DSRTypes::VT_Code:
            w.headings.push_back(std::string());
            w.value(level, concept, clean(ci.getCodeValue().getCodeMeaning()));
            break;
        case DSRTypes::VT_Num: {
            w.headings.push_back(std::string());
            const DSRNumericMeasurementValue &nv = ci.getNumericValue();
            std::string v = clean(nv.getNumericValue());
            std::string unit = clean(nv.getMeasurementUnit().getCodeValue());
            /* UCUM's "1" means "no unit". */
            if (!v.empty() && !unit.empty() && unit != "1") v += " " + unit;
            w.value(level, concept, v);
            break;
        }
        case DSRTypes::VT_PName:
            w.headings.push_back(std::string());
            /* Person Observer Name (TID 1003): the author when no
             * verifying observer is named. */
            if (w.person_observer.empty() && ci.getConceptName().getCodeValue() == "121008" &&
                ci.getConceptName().getCodingSchemeDesignator() == "DCM")
                w.person_observer = clean(ci.getStringValue());
            break;
        default:
            w.headings.push_back(std::string());
            break;
        }
    } while (tree.iterate());
}

static int sr_text(const char *path, char **text, dcm_sr_info *info, char *why, size_t n)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        int e = errno;
        snprintf(why, n, "cannot read %s: %s", path, strerror(e));
        return ctg_errno(e);
    }
    if ((unsigned long long)sb.st_size > SR_FILE_MAX) {
        snprintf(why, n, "SR file of %llu bytes is larger than the %llu MiB read for text",
                 (unsigned long long)sb.st_size, SR_FILE_MAX >> 20);
        return CTG_ETOOBIG;
    }
    DcmFileFormat ff;
    OFCondition c = ff.loadFile(path);
    if (c.bad()) {
        snprintf(why, n, "cannot parse data set: %s", c.text());
        return CTG_EDICOM;
    }
    DcmDataset *ds = ff.getDataset();
    /* Text in another character set is converted up front; where the
     * conversion fails (an unknown or broken set) the bytes are read as
     * they are and cleaned below. */
    OFString charset;
    if (ds->findAndGetOFStringArray(DCM_SpecificCharacterSet, charset).good() &&
        !charset.empty() && charset != "ISO_IR 192") {
        OFCondition cc = ff.convertToUTF8();
        if (cc.bad())
            log_warn("sr text: %s: cannot convert '%s' to UTF-8 (%s); invalid bytes replaced",
                     path, charset.c_str(), cc.text());
    }

    DSRDocument doc;
    const size_t flags = DSRTypes::RF_acceptUnknownRelationshipType |
                         DSRTypes::RF_acceptInvalidContentItemValue |
                         DSRTypes::RF_ignoreRelationshipConstraints |
                         DSRTypes::RF_ignoreContentItemErrors |
                         DSRTypes::RF_skipInvalidContentItems;
    c = doc.read(*ds, flags);
    if (c.bad()) {
        snprintf(why, n, "not a readable Structured Report: %s", c.text());
        return CTG_EDICOM;
    }

    Walk w;
    walk_tree(doc.getTree(), w);

    if (info) {
        OFString v;
        memset(info, 0, sizeof *info);
        if (ds->findAndGetOFString(DCM_SOPClassUID, v).good())
            copy_field(info->sop_class, sizeof info->sop_class, v);
        doc.getSOPInstanceUID(v);
        copy_field(info->sop_uid, sizeof info->sop_uid, v);
        doc.getStudyInstanceUID(v);
        copy_field(info->study_uid, sizeof info->study_uid, v);
        doc.getAccessionNumber(v);
        copy_field(info->accession, sizeof info->accession, v);
        doc.getManufacturer(v);
        copy_field(info->manufacturer, sizeof info->manufacturer, v);
        DSRDocumentTree &tree = doc.getTree();
        if (tree.gotoRoot()) {
            DSRContentItem &root = tree.getCurrentContentItem();
            copy_field(info->title, sizeof info->title, root.getConceptName().getCodeMeaning());
            copy_field(info->observed, sizeof info->observed, root.getObservationDateTime());
        }
        const char *cf = DSRTypes::completionFlagToEnumeratedValue(doc.getCompletionFlag());
        const char *vf = DSRTypes::verificationFlagToEnumeratedValue(doc.getVerificationFlag());
        snprintf(info->completion, sizeof info->completion, "%s", cf ? cf : "");
        snprintf(info->verification, sizeof info->verification, "%s", vf ? vf : "");
        OFString date, time;
        doc.getContentDate(date);
        doc.getContentTime(time);
        copy_field(info->content_dt, sizeof info->content_dt, date + time);
        if (!info->observed[0])
            snprintf(info->observed, sizeof info->observed, "%s", info->content_dt);
        if (doc.getNumberOfVerifyingObservers() > 0) {
            OFString when, name, org;
            if (doc.getVerifyingObserver(1, when, name, org).good())
                copy_field(info->author, sizeof info->author, name);
        }
        if (!info->author[0])
            copy_field(info->author, sizeof info->author, OFString(w.person_observer.c_str()));
        info->nitems = w.nitems;
        info->truncated = w.truncated;
    }
    if (w.truncated)
        log_warn("sr text: %s: report text cut at %u bytes", path, DCM_SR_TEXT_MAX);

    char *out = (char *)malloc(w.text.size() + 1);
    if (!out) {
        snprintf(why, n, "out of memory");
        return CTG_ENOMEM;
    }
    memcpy(out, w.text.data(), w.text.size());
    out[w.text.size()] = 0;
    *text = out;
    return 0;
}

static pthread_once_t quiet_once = PTHREAD_ONCE_INIT;

static void quiet_dcmsr(void)
{
    OFLog::getLogger("dcmtk.dcmsr").setLogLevel(OFLogger::ERROR_LOG_LEVEL);
}

int dcm_sr_text(const char *path, char **text, dcm_sr_info *info, char *why, size_t n)
{
    dcm_global_init();
    pthread_once(&quiet_once, quiet_dcmsr);
    char dummy[8];
    if (!why || !n) {
        why = dummy;
        n = sizeof dummy;
    }
    why[0] = 0;
    *text = NULL;
    if (info) memset(info, 0, sizeof *info);
    try {
        return sr_text(path, text, info, why, n);
    } catch (const std::bad_alloc &) {
        snprintf(why, n, "out of memory reading the SR");
        return CTG_ENOMEM;
    } catch (...) {
        snprintf(why, n, "unexpected exception reading the SR");
        return CTG_EDICOM;
    }
}
