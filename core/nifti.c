/*
 * nifti.c - NIfTI-1 input and output for volumes (.nii and .nii.gz).
 *
 * Reading lets libniftiio parse the header (either byte order, Analyze
 * fallbacks, the qform quaternion); the header is checked against what
 * ctglip accepts (3-D, a numeric type, a sane size and affine) before any
 * voxel is read.  The voxels are then read here, through zlib, a chunk at a
 * time, byte-swapped when needed, scaled by scl_slope/scl_inter and
 * converted to the caller's element type (see read_data for why not with
 * libniftiio).  The file's world space (RAS, with its units) becomes LPS
 * millimetres at this boundary and nowhere else.
 *
 * Writing builds the header with libniftiio (nifti_make_new_header,
 * nifti_mat44_to_quatern) but writes the bytes itself: nifti_image_write
 * returns nothing, so a full disk or a failed rename would go unnoticed.
 * The file is written to a temporary name beside the target, fsynced and
 * renamed into place, so a reader never sees half a file.
 *
 * Threading: both functions may run on several threads at once; libniftiio
 * keeps only its option block global, which is set once (quiet) below.
 */
#include "core/vol.h"
#include "core/core.h"

#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <nifti1_io.h>

/* The largest volume read: 2^31 voxels, far beyond any CT, so that a
 * forged header cannot make us allocate without bound. */
#define NIFTI_MAX_VOXELS ((size_t)1 << 31)

static pthread_once_t quiet_once = PTHREAD_ONCE_INIT;

/* libniftiio prints diagnostics to stderr at its default level; the reasons
 * we report through `why` are enough. */
static void make_quiet(void) { nifti_set_debug_level(0); }

static void say(char *why, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *why, size_t n, const char *fmt, ...)
{
    if (!why || n == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
}

/* The raw value of element idx of a libniftiio data block as double, or
 * NAN for a type we do not read (checked before any call). */
static double raw_value(const void *data, int datatype, size_t idx)
{
    switch (datatype) {
    case DT_UINT8:
        return ((const uint8_t *)data)[idx];
    case DT_INT8:
        return ((const int8_t *)data)[idx];
    case DT_INT16:
        return ((const int16_t *)data)[idx];
    case DT_UINT16:
        return ((const uint16_t *)data)[idx];
    case DT_INT32:
        return ((const int32_t *)data)[idx];
    case DT_UINT32:
        return ((const uint32_t *)data)[idx];
    case DT_INT64:
        return (double)((const int64_t *)data)[idx];
    case DT_UINT64:
        return (double)((const uint64_t *)data)[idx];
    case DT_FLOAT32:
        return ((const float *)data)[idx];
    case DT_FLOAT64:
        return ((const double *)data)[idx];
    default:
        return NAN;
    }
}

static int datatype_supported(int dt)
{
    switch (dt) {
    case DT_UINT8:
    case DT_INT8:
    case DT_INT16:
    case DT_UINT16:
    case DT_INT32:
    case DT_UINT32:
    case DT_INT64:
    case DT_UINT64:
    case DT_FLOAT32:
    case DT_FLOAT64:
        return 1;
    default:
        return 0;
    }
}

/* Millimetres per unit of the file's space; 1 when the unit is unknown,
 * as most writers leave it unset and mean mm. */
static double unit_scale(int xyz_units)
{
    switch (xyz_units) {
    case NIFTI_UNITS_METER:
        return 1000.0;
    case NIFTI_UNITS_MICRON:
        return 0.001;
    default:
        return 1.0;
    }
}

/* Fills aff (LPS mm) from the image's sform, else qform, else pixdim; returns
 * 0 or CTG_EFORMAT when the result cannot map voxels to distinct places. */
static int header_affine(const nifti_image *nim, double aff[3][4], char *why, size_t n)
{
    double ras[3][4] = {{0}};
    if (nim->sform_code > 0) {
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 4; c++) ras[r][c] = nim->sto_xyz.m[r][c];
    } else if (nim->qform_code > 0) {
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 4; c++) ras[r][c] = nim->qto_xyz.m[r][c];
    } else {
        /* No orientation at all (Analyze style): only the spacing is known. */
        ras[0][0] = fabs(nim->dx);
        ras[1][1] = fabs(nim->dy);
        ras[2][2] = fabs(nim->dz);
    }
    double u = unit_scale(nim->xyz_units);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) {
            /* RAS -> LPS: x and y change sign. */
            aff[r][c] = (r < 2 ? -ras[r][c] : ras[r][c]) * u;
            if (!isfinite(aff[r][c])) {
                say(why, n, "affine has a non-finite entry");
                return CTG_EFORMAT;
            }
        }
    double det = aff[0][0] * (aff[1][1] * aff[2][2] - aff[1][2] * aff[2][1]) -
                 aff[0][1] * (aff[1][0] * aff[2][2] - aff[1][2] * aff[2][0]) +
                 aff[0][2] * (aff[1][0] * aff[2][1] - aff[1][1] * aff[2][0]);
    double len[3];
    for (int c = 0; c < 3; c++)
        len[c] = sqrt(aff[0][c] * aff[0][c] + aff[1][c] * aff[1][c] + aff[2][c] * aff[2][c]);
    if (!(len[0] > 0 && len[1] > 0 && len[2] > 0) ||
        !(fabs(det) > 1e-6 * len[0] * len[1] * len[2])) {
        say(why, n, "degenerate voxel-to-world transform (%s, spacing %g x %g x %g)",
            nim->sform_code > 0 ? "sform" : nim->qform_code > 0 ? "qform" : "pixdim", len[0],
            len[1], len[2]);
        return CTG_EFORMAT;
    }
    return 0;
}

/* Converts cnt raw elements (already in host byte order) into v's data
 * from element `first` on, applying the scaling.  Label maps must hold
 * whole numbers 0..255 and I16 values must fit; F32 takes anything. */
static int convert_chunk(const void *raw, int dt, double slope, double inter, ctg_vol *v,
                         size_t first, size_t cnt, char *why, size_t n)
{
    if (v->dtype == CTG_F32) {
        float *d = (float *)v->data + first;
        for (size_t i = 0; i < cnt; i++) d[i] = (float)(raw_value(raw, dt, i) * slope + inter);
        return 0;
    }
    double lo = v->dtype == CTG_U8 ? 0 : -32768, hi = v->dtype == CTG_U8 ? 255 : 32767;
    for (size_t i = 0; i < cnt; i++) {
        double x = raw_value(raw, dt, i) * slope + inter;
        double r = round(x);
        /* Labels stored as float may carry rounding noise from scaling;
         * anything further from a whole number is not a label. */
        int bad = !isfinite(x) || r < lo || r > hi ||
                  (v->dtype == CTG_U8 && fabs(x - r) > 1e-3);
        if (bad) {
            size_t at = first + i, nx = (size_t)v->nx, ny = (size_t)v->ny;
            say(why, n, "value %g at voxel (%zu,%zu,%zu) does not fit %s", x, at % nx,
                (at / nx) % ny, at / (nx * ny),
                v->dtype == CTG_U8 ? "a label map (whole numbers 0..255)" : "int16");
            return CTG_EFORMAT;
        }
        if (v->dtype == CTG_U8)
            ((uint8_t *)v->data)[first + i] = (uint8_t)r;
        else
            ((int16_t *)v->data)[first + i] = (int16_t)r;
    }
    return 0;
}

/* Reads the voxel data of nim from its file into v, a chunk at a time so
 * that the raw data (up to 8 bytes a voxel) is never held whole.
 *
 * libniftiio's own loader is not used: asked for "x.nii.gz" it looks for
 * the data in "x.nii" first when such a file exists, and would silently
 * read another volume's voxels.  A single-file NIfTI keeps its data in the
 * header's own file; only two-file pairs use the image name. */
static int read_data(const nifti_image *nim, ctg_vol *v, char *why, size_t n)
{
    const char *file = nim->nifti_type == NIFTI_FTYPE_NIFTI1_1 ? nim->fname : nim->iname;
    if (!file || nim->iname_offset < 0) {
        say(why, n, "no image data file");
        return CTG_EFORMAT;
    }
    double slope = 1, inter = 0;
    if (nim->scl_slope != 0 && isfinite(nim->scl_slope)) {
        slope = nim->scl_slope;
        inter = isfinite(nim->scl_inter) ? nim->scl_inter : 0;
    }
    const size_t chunk = (size_t)1 << 20; /* elements */
    size_t es = (size_t)nim->nbyper, total = ctg_vol_count(v);
    int swap = nim->byteorder != nifti_short_order() && nim->swapsize > 1;
    int rc = 0;
    unsigned char *buf = malloc(chunk * es);
    /* gzopen reads uncompressed files as they are, so one path serves both. */
    gzFile gz = buf ? gzopen(file, "rb") : NULL;
    if (!buf) {
        say(why, n, "out of memory");
        rc = CTG_ENOMEM;
        goto fail;
    }
    if (!gz) {
        say(why, n, "cannot open image data %s: %s", file, strerror(errno));
        rc = CTG_EIO;
        goto fail;
    }
    gzbuffer(gz, 1 << 17);
    if (gzseek(gz, (z_off_t)nim->iname_offset, SEEK_SET) != (z_off_t)nim->iname_offset) {
        say(why, n, "image data missing (file shorter than its header's offset)");
        rc = CTG_EFORMAT;
        goto fail;
    }
    for (size_t done = 0; done < total;) {
        size_t cnt = total - done < chunk ? total - done : chunk;
        int got = gzread(gz, buf, (unsigned)(cnt * es));
        if (got < 0 || (size_t)got != cnt * es) {
            int zerr = 0;
            const char *msg = gzerror(gz, &zerr);
            say(why, n, "image data truncated or corrupt after %zu of %zu voxels%s%s", done,
                total, zerr && zerr != Z_BUF_ERROR ? ": " : "",
                zerr && zerr != Z_BUF_ERROR ? msg : "");
            rc = CTG_EFORMAT;
            goto fail;
        }
        if (swap) nifti_swap_Nbytes(cnt, nim->swapsize, buf);
        rc = convert_chunk(buf, nim->datatype, slope, inter, v, done, cnt, why, n);
        if (rc < 0) goto fail;
        done += cnt;
    }

fail:
    if (gz) gzclose(gz);
    free(buf);
    return rc;
}

/* A first look at the header bytes, so that files which are plainly not
 * NIfTI-1 or Analyze are refused here: libniftiio prints its complaints
 * about such headers to stderr whatever its debug level. */
static int header_plausible(const char *path, char *why, size_t n)
{
    gzFile gz = gzopen(path, "rb");
    if (!gz) {
        say(why, n, "%s: %s", path, strerror(errno));
        return CTG_EIO;
    }
    nifti_1_header h;
    int got = gzread(gz, &h, sizeof h);
    gzclose(gz);
    if (got != (int)sizeof h) {
        say(why, n, "%s: too short for a NIfTI-1 header (%d bytes)", path, got < 0 ? 0 : got);
        return CTG_EFORMAT;
    }
    int sz = h.sizeof_hdr;
    short d0 = h.dim[0];
    if (sz != 348) {
        nifti_swap_4bytes(1, &sz);
        nifti_swap_2bytes(1, &d0);
    }
    if (sz != 348) {
        say(why, n, "%s: not a NIfTI-1 file (header size field %d)", path, h.sizeof_hdr);
        return CTG_EFORMAT;
    }
    if (d0 < 1 || d0 > 7) {
        say(why, n, "%s: bad number of dimensions %d", path, d0);
        return CTG_EFORMAT;
    }
    return 0;
}

int ctg_nifti_read(const char *path, int dtype, ctg_vol **out, char *why, size_t n)
{
    *out = NULL;
    if (ctg_dtype_size(dtype) == 0) {
        say(why, n, "unknown element type %d", dtype);
        return CTG_EINVAL;
    }
    pthread_once(&quiet_once, make_quiet);

    struct stat st;
    if (stat(path, &st) != 0) {
        int err = ctg_errno(errno);
        say(why, n, "%s: %s", path, ctg_strerror(err));
        return CTG_EIO;
    }
    if (!S_ISREG(st.st_mode)) {
        say(why, n, "%s: not a regular file", path);
        return CTG_EIO;
    }

    int rc = header_plausible(path, why, n);
    if (rc < 0) return rc;
    ctg_vol *v = NULL;
    /* Header only: sizes are checked before any data is read. */
    nifti_image *nim = nifti_image_read(path, 0);
    if (!nim) {
        say(why, n, "%s: not a NIfTI-1 file, or its header is damaged", path);
        return CTG_EFORMAT;
    }
    if (nim->ndim < 2 || nim->ndim > 7) {
        say(why, n, "%s: %d dimensions, expected 3", path, nim->ndim);
        rc = CTG_EFORMAT;
        goto fail;
    }
    for (int d = 4; d <= nim->ndim; d++) {
        if (nim->dim[d] != 1) {
            say(why, n, "%s: dimension %d has size %d; only 3-D volumes are read", path, d,
                nim->dim[d]);
            rc = CTG_EFORMAT;
            goto fail;
        }
    }
    int nx = nim->nx, ny = nim->ny, nz = nim->ndim >= 3 ? nim->nz : 1;
    if (nx < 1 || ny < 1 || nz < 1 ||
        (size_t)nx * (size_t)ny > NIFTI_MAX_VOXELS / (size_t)nz) {
        say(why, n, "%s: unsupported size %d x %d x %d", path, nx, ny, nz);
        rc = CTG_EFORMAT;
        goto fail;
    }
    if (!datatype_supported(nim->datatype)) {
        say(why, n, "%s: unsupported NIfTI datatype %d", path, nim->datatype);
        rc = CTG_EFORMAT;
        goto fail;
    }
    double aff[3][4];
    rc = header_affine(nim, aff, why, n);
    if (rc < 0) goto fail;

    if (nim->nifti_type == NIFTI_FTYPE_ASCII) {
        say(why, n, "%s: ASCII NIfTI is not read", path);
        rc = CTG_EFORMAT;
        goto fail;
    }
    v = ctg_vol_new(nx, ny, nz, dtype);
    if (!v) {
        say(why, n, "%s: out of memory for %d x %d x %d", path, nx, ny, nz);
        rc = CTG_ENOMEM;
        goto fail;
    }
    memcpy(v->aff, aff, sizeof aff);
    char inner[512] = "";
    rc = read_data(nim, v, inner, sizeof inner);
    if (rc < 0) {
        say(why, n, "%s: %s", path, inner);
        goto fail;
    }
    nifti_image_free(nim);
    *out = v;
    return 0;

fail:
    ctg_vol_free(v);
    nifti_image_free(nim);
    return rc;
}

/* ---- writing --------------------------------------------------------------- */

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* Fills hdr for v: type, dimensions, spacing, sform and qform (RAS, code
 * scanner-anatomical), units mm. */
static int make_header(const ctg_vol *v, nifti_1_header *hdr, char *why, size_t n)
{
    int dt;
    switch (v->dtype) {
    case CTG_F32:
        dt = DT_FLOAT32;
        break;
    case CTG_U8:
        dt = DT_UINT8;
        break;
    case CTG_I16:
        dt = DT_INT16;
        break;
    default:
        say(why, n, "unknown element type %d", v->dtype);
        return CTG_EINVAL;
    }
    /* NIfTI-1 keeps dimensions in 16-bit fields. */
    if (v->nx > 32767 || v->ny > 32767 || v->nz > 32767) {
        say(why, n, "size %d x %d x %d does not fit NIfTI-1", v->nx, v->ny, v->nz);
        return CTG_EINVAL;
    }
    int dims[8] = {3, v->nx, v->ny, v->nz, 1, 1, 1, 1};
    nifti_1_header *h = nifti_make_new_header(dims, dt);
    if (!h) {
        say(why, n, "out of memory");
        return CTG_ENOMEM;
    }
    *hdr = *h;
    free(h);

    mat44 m;
    memset(&m, 0, sizeof m);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) m.m[r][c] = (float)(r < 2 ? -v->aff[r][c] : v->aff[r][c]);
    m.m[3][3] = 1.0f;
    for (int c = 0; c < 4; c++) {
        hdr->srow_x[c] = m.m[0][c];
        hdr->srow_y[c] = m.m[1][c];
        hdr->srow_z[c] = m.m[2][c];
    }
    float qb, qc, qd, qx, qy, qz, dx, dy, dz, qfac;
    nifti_mat44_to_quatern(m, &qb, &qc, &qd, &qx, &qy, &qz, &dx, &dy, &dz, &qfac);
    double sp[3];
    ctg_vol_spacing(v, sp);
    hdr->quatern_b = qb;
    hdr->quatern_c = qc;
    hdr->quatern_d = qd;
    hdr->qoffset_x = qx;
    hdr->qoffset_y = qy;
    hdr->qoffset_z = qz;
    hdr->pixdim[0] = qfac < 0 ? -1.0f : 1.0f;
    for (int c = 0; c < 3; c++) hdr->pixdim[c + 1] = (float)sp[c];
    hdr->qform_code = NIFTI_XFORM_SCANNER_ANAT;
    hdr->sform_code = NIFTI_XFORM_SCANNER_ANAT;
    hdr->xyzt_units = NIFTI_UNITS_MM;
    hdr->scl_slope = 1.0f;
    hdr->scl_inter = 0.0f;
    hdr->vox_offset = 352.0f;
    memcpy(hdr->magic, "n+1", 4);
    snprintf(hdr->descrip, sizeof hdr->descrip, "ctglip");
    return 0;
}

int ctg_nifti_write(const char *path, const ctg_vol *v, char *why, size_t n)
{
    _Static_assert(sizeof(nifti_1_header) == 348, "NIfTI-1 header is 348 bytes");
    nifti_1_header hdr;
    int rc = make_header(v, &hdr, why, n);
    if (rc < 0) return CTG_EIO;

    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmpXXXXXX", path) >= (int)sizeof tmp) {
        say(why, n, "%s: path too long", path);
        return CTG_EIO;
    }
    int fd = mkstemp(tmp);
    if (fd < 0) {
        say(why, n, "%s: cannot create a temporary file beside it: %s", path, strerror(errno));
        return CTG_EIO;
    }
    /* mkstemp makes the file 0600; a NIfTI file is ordinary data. */
    (void)fchmod(fd, 0644);

    const unsigned char ext[4] = {0, 0, 0, 0}; /* no header extensions */
    const unsigned char *data = v->data;
    size_t len = ctg_vol_count(v) * ctg_dtype_size(v->dtype);
    const char *stage = "write";
    if (has_suffix(path, ".gz")) {
        int gfd = dup(fd);
        gzFile gz = gfd >= 0 ? gzdopen(gfd, "wb1") : NULL;
        if (!gz) {
            if (gfd >= 0) close(gfd);
            rc = CTG_ENOMEM;
            goto fail;
        }
        /* Level 1 as nibabel uses: CT compresses little better at higher
         * levels and takes several times longer. */
        int ok = gzwrite(gz, &hdr, sizeof hdr) == (int)sizeof hdr &&
                 gzwrite(gz, ext, sizeof ext) == (int)sizeof ext;
        for (size_t off = 0; ok && off < len;) {
            unsigned chunk = len - off > (1u << 30) ? (1u << 30) : (unsigned)(len - off);
            ok = gzwrite(gz, data + off, chunk) == (int)chunk;
            off += chunk;
        }
        int zc = gzclose(gz);
        if (!ok || zc != Z_OK) {
            rc = CTG_EIO;
            goto fail;
        }
    } else {
        rc = ctg_write_all(fd, &hdr, sizeof hdr);
        if (rc == 0) rc = ctg_write_all(fd, ext, sizeof ext);
        if (rc == 0) rc = ctg_write_all(fd, data, len);
        if (rc < 0) goto fail;
    }
    stage = "fsync";
    if (fsync(fd) != 0) {
        rc = ctg_errno(errno);
        goto fail;
    }
    stage = "close";
    if (close(fd) != 0) {
        fd = -1;
        rc = ctg_errno(errno);
        goto fail;
    }
    fd = -1;
    stage = "rename";
    if (rename(tmp, path) != 0) {
        rc = ctg_errno(errno);
        goto fail;
    }
    /* The directory entry is made durable as well; its failure does not
     * undo a write that is already in place. */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    (void)ctg_fsync_dir(dir);
    return 0;

fail:
    say(why, n, "%s: %s failed: %s", path, stage, ctg_strerror(rc));
    if (fd >= 0) close(fd);
    unlink(tmp);
    return CTG_EIO;
}
