/*
 * fuzz_series.c - libFuzzer target for series-to-volume (dcm_series_volume:
 * DCMTK's parser over several files, the series grouping, the geometry
 * checks, DCMTK's decoders and our HU conversion).
 *
 * Input layout, chosen so that mutations mostly change one file at a time:
 *
 *   byte 0            option bits: 1 fill missing slices, 2 max_fill 1,
 *                     4 spacing tolerance 0.2
 *   then up to FUZZ_MAX_FILES chunks separated by FUZZ_SEP (8 bytes);
 *   each chunk is   1 byte transfer syntax selector (enum dcm_ts, modulo 5)
 *                   followed by the data set of one file.
 *
 * Each chunk becomes a Part-10 file (preamble, a meta header naming the
 * selected transfer syntax, the data set) in a fresh temp folder.  A result
 * that claims success must be self-consistent, or the target aborts.
 *
 *   make fuzz builds build/fuzz/fuzz_series like fuzz_instance (see Makefile)
 *   build/fuzz/fuzz_series -max_total_time=60 CORPUS_DIR
 *
 * The same entry point runs in `make test` over a deterministic set of
 * mutations of small valid series (tests/test_volume.c).
 *
 * Threading: none (one temp folder per call).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dicom/dicom.h"

#define FUZZ_MAX_FILES 4
#define FUZZ_SEP "\xff\xfe" "CTGNX\x01"
#define FUZZ_SEP_LEN 8

int ctg_fuzz_series(const uint8_t *data, size_t size);

static const char *const ts_uid[5] = {
    "1.2.840.10008.1.2.1",    /* DCM_TS_EXPLICIT_LE */
    "1.2.840.10008.1.2",      /* DCM_TS_IMPLICIT_LE */
    "1.2.840.10008.1.2.4.70", /* DCM_TS_JPEG_LOSSLESS */
    "1.2.840.10008.1.2.4.80", /* DCM_TS_JPEGLS_LOSSLESS */
    "1.2.840.10008.1.2.5",    /* DCM_TS_RLE */
};

/* Appends one explicit-VR meta element with a short (16-bit) length. */
static size_t put_elem(uint8_t *p, uint16_t elem, const char *vr, const void *val, uint16_t len)
{
    size_t o = 0;
    p[o++] = 0x02;
    p[o++] = 0x00;
    p[o++] = (uint8_t)(elem & 0xff);
    p[o++] = (uint8_t)(elem >> 8);
    p[o++] = (uint8_t)vr[0];
    p[o++] = (uint8_t)vr[1];
    if (!strcmp(vr, "OB")) {
        p[o++] = 0;
        p[o++] = 0;
        p[o++] = (uint8_t)(len & 0xff);
        p[o++] = (uint8_t)(len >> 8);
        p[o++] = 0;
        p[o++] = 0;
    } else {
        p[o++] = (uint8_t)(len & 0xff);
        p[o++] = (uint8_t)(len >> 8);
    }
    memcpy(p + o, val, len);
    return o + len;
}

/* Preamble and a meta header for CT Image Storage in transfer syntax ts;
 * returns the byte count (at most 256). */
static size_t make_header(uint8_t *h, const char *ts)
{
    uint8_t body[200];
    char uid[66];
    size_t b = 0, len;
    static const uint8_t version[2] = {0, 1};
    b += put_elem(body + b, 0x0001, "OB", version, 2);
    b += put_elem(body + b, 0x0002, "UI", "1.2.840.10008.5.1.4.1.1.2", 26);
    b += put_elem(body + b, 0x0003, "UI", "1.2\0", 4);
    len = strlen(ts);
    memcpy(uid, ts, len + 1);
    if (len & 1) uid[len++] = 0; /* UIDs are padded to even length with NUL */
    b += put_elem(body + b, 0x0010, "UI", uid, (uint16_t)len);

    memset(h, 0, 128);
    memcpy(h + 128, "DICM", 4);
    uint32_t glen = (uint32_t)b;
    uint8_t gl[4] = {(uint8_t)glen, (uint8_t)(glen >> 8), (uint8_t)(glen >> 16),
                     (uint8_t)(glen >> 24)};
    size_t o = 132;
    o += put_elem(h + o, 0x0000, "UL", gl, 4);
    memcpy(h + o, body, b);
    return o + b;
}

static const uint8_t *find_sep(const uint8_t *p, const uint8_t *end)
{
    for (; p + FUZZ_SEP_LEN <= end; p++)
        if (p[0] == 0xff && !memcmp(p, FUZZ_SEP, FUZZ_SEP_LEN)) return p;
    return NULL;
}

int ctg_fuzz_series(const uint8_t *data, size_t size)
{
    char dir[] = "/tmp/ctglip-fuzzs-XXXXXX";
    char paths[FUZZ_MAX_FILES][64];
    const char *pp[FUZZ_MAX_FILES];
    int nfiles = 0, r = -1;
    if (size < 1 || !mkdtemp(dir)) return -1;
    uint8_t flags = data[0];
    const uint8_t *p = data + 1, *end = data + size;

    while (p < end && nfiles < FUZZ_MAX_FILES) {
        const uint8_t *sep = find_sep(p, end);
        const uint8_t *ce = sep ? sep : end;
        if (ce > p) {
            uint8_t head[256];
            size_t hl = make_header(head, ts_uid[p[0] % 5]);
            snprintf(paths[nfiles], sizeof paths[nfiles], "%s/%d.dcm", dir, nfiles);
            FILE *f = fopen(paths[nfiles], "wb");
            if (!f) break;
            size_t body = (size_t)(ce - p - 1);
            int ok = fwrite(head, 1, hl, f) == hl && fwrite(p + 1, 1, body, f) == body;
            if (fclose(f) != 0) ok = 0;
            pp[nfiles] = paths[nfiles];
            nfiles++;
            if (!ok) goto done;
        }
        if (!sep) break;
        p = sep + FUZZ_SEP_LEN;
    }

    {
        dcm_vol_opts opts;
        memset(&opts, 0, sizeof opts);
        opts.fill_missing = flags & 1;
        opts.max_fill = flags & 2 ? 1 : 0;
        opts.spacing_tolerance = flags & 4 ? 0.2 : 0;
        /* Keeps a mutated Rows/Columns from asking for gigabytes. */
        opts.max_voxels = (uint64_t)1 << 22;
        dcm_vol_info info;
        ctg_vol *vol = NULL;
        char why[512];
        r = dcm_series_volume(pp, (size_t)nfiles, &opts, &vol, &info, why, sizeof why);
        if (r == 0) {
            /* A success must be a real volume with one record per slice. */
            if (!vol || vol->dtype != CTG_F32 || !vol->data || info.nslices < 3 ||
                (size_t)vol->nx * vol->ny * vol->nz > opts.max_voxels || !info.slice_sop ||
                !info.slice_frame || info.filled < 0 || info.filled >= info.nslices)
                abort();
            if (vol->nx != info.nslices && vol->ny != info.nslices && vol->nz != info.nslices)
                abort();
            for (int k = 0; k < info.nslices; k++)
                if (strlen(info.slice_sop[k]) > 64) abort();
        } else if (vol || info.slice_sop || info.slice_frame || !why[0] ||
                   strlen(why) >= sizeof why) {
            abort();
        }
        if (memchr(info.skipped, 0, sizeof info.skipped) == NULL) abort();
        ctg_vol_free(vol);
        dcm_vol_info_free(&info);
    }
done:
    for (int i = 0; i < nfiles; i++) unlink(paths[i]);
    rmdir(dir);
    return r;
}

#ifdef CTG_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once++) {
        dcm_quiet();
        /* Filled slices are logged at info level; thousands a second
         * would bury any finding. */
        ctg_log_set_level(CTG_LOG_ERROR);
    }
    ctg_fuzz_series(data, size);
    return 0;
}
#endif
