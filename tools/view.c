/*
 * view.c - `ctglip view`: one PNG with the axial, coronal and sagittal
 * slices of a CT through one point, with an optional label map blended in
 * TotalSegmentator's colours.  It is how an admin checks by eye that a
 * volume and its labels line up and are the right way round.
 *
 * Both volumes are first put into the canonical orientation (i towards the
 * patient's left, j posterior, k head), so the panels come out the same way
 * whatever the files' voxel order: radiological convention, the patient's
 * right on the image's left in the axial and coronal panels, anterior up in
 * the axial panel, anterior on the left of the sagittal panel and the head
 * up in both of the others.  Each panel is scaled by the voxel spacing, so
 * anisotropic volumes keep their true proportions.
 *
 * Single-threaded command-line code.
 */
#include <errno.h>
#include <math.h>
#include <png.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "core/organs.h"
#include "core/vol.h"
#include "tools/tools.h"

#define GAP 4              /* black pixels between panels */
#define MAX_SIZE 8192      /* largest --size */
#define MAX_PIXELS (1L << 26) /* cap on the whole image, 64 Mpixel */

typedef struct view_opts {
    int point[3];  /* canonical voxel indices of the slices */
    double centre; /* window centre, HU */
    double width;  /* window width, HU */
    double alpha;  /* label opacity 0..1 */
    int size;      /* height of the tallest panel, pixels */
} view_opts;

/* One panel: voxel axis u runs left to right, axis v top to bottom (flipped
 * when flip_v, i.e. k with the head up), axis `fixed` is held at `at`. */
typedef struct panel {
    int u, v, fixed, at, flip_v;
    int w, h; /* pixels */
    int x0;   /* left edge in the output image */
} panel;

/* HU -> grey level under the window. */
static inline double grey(double hu, const view_opts *o)
{
    double g = (hu - (o->centre - 0.5 * o->width)) / o->width * 255.0;
    return g < 0 ? 0 : g > 255 ? 255 : g;
}

/* Bilinear sample of a float volume at continuous voxel coordinates,
 * clamped to the outermost voxel centres. */
static double sample_linear(const ctg_vol *v, const double c[3])
{
    const int n[3] = {v->nx, v->ny, v->nz};
    int lo[3], hi[3];
    double w[3];
    for (int a = 0; a < 3; a++) {
        double x = c[a] < 0 ? 0 : c[a] > n[a] - 1 ? n[a] - 1 : c[a];
        lo[a] = (int)floor(x);
        hi[a] = lo[a] + 1 < n[a] ? lo[a] + 1 : lo[a];
        w[a] = x - lo[a];
    }
    double acc = 0;
    for (int q = 0; q < 8; q++) {
        double wt = ((q & 1) ? w[0] : 1 - w[0]) * ((q & 2) ? w[1] : 1 - w[1]) *
                    ((q & 4) ? w[2] : 1 - w[2]);
        if (wt == 0) continue;
        acc += wt * ctg_vol_get(v, (q & 1) ? hi[0] : lo[0], (q & 2) ? hi[1] : lo[1],
                                (q & 4) ? hi[2] : lo[2]);
    }
    return acc;
}

static int nearest_index(double x, int n)
{
    int i = (int)floor(x + 0.5);
    return i < 0 ? 0 : i >= n ? n - 1 : i;
}

/* Draws panel p of the canonical CT (and labels, on the same grid, or
 * NULL) into the RGB image of width `stride` pixels. */
static void draw_panel(const ctg_vol *ct, const ctg_vol *lab, const panel *p, const view_opts *o,
                       uint8_t *rgb, int stride)
{
    const int n[3] = {ct->nx, ct->ny, ct->nz};
    for (int py = 0; py < p->h; py++) {
        for (int px = 0; px < p->w; px++) {
            double c[3];
            c[p->fixed] = p->at;
            /* The pixel centre's place along each axis, in voxels. */
            c[p->u] = (px + 0.5) * n[p->u] / p->w - 0.5;
            double cv = (py + 0.5) * n[p->v] / p->h - 0.5;
            c[p->v] = p->flip_v ? n[p->v] - 1 - cv : cv;
            double g = grey(sample_linear(ct, c), o);
            double r = g, gg = g, b = g;
            if (lab) {
                int id = (int)ctg_vol_get(lab, nearest_index(c[0], n[0]), nearest_index(c[1], n[1]),
                                          nearest_index(c[2], n[2]));
                if (id > 0) {
                    const ctg_organ *org = ctg_organ_get(id);
                    /* An id beyond the v2 table still shows, in magenta. */
                    static const uint8_t other[3] = {255, 0, 255};
                    const uint8_t *col = org ? org->rgb : other;
                    r = (1 - o->alpha) * g + o->alpha * col[0];
                    gg = (1 - o->alpha) * g + o->alpha * col[1];
                    b = (1 - o->alpha) * g + o->alpha * col[2];
                }
            }
            uint8_t *q = rgb + 3 * ((size_t)py * (size_t)stride + (size_t)(p->x0 + px));
            q[0] = (uint8_t)lround(r);
            q[1] = (uint8_t)lround(gg);
            q[2] = (uint8_t)lround(b);
        }
    }
}

/* Renders the three panels of a canonical CT (with labels on its grid, or
 * NULL) through o->point.  *rgb (8-bit RGB rows, caller frees) is w x h.
 * Returns 0, CTG_EINVAL (bad point or options), CTG_ETOOBIG or
 * CTG_ENOMEM. */
static int render_views(const ctg_vol *ct, const ctg_vol *lab, const view_opts *o, uint8_t **rgb,
                        int *w, int *h)
{
    *rgb = NULL;
    const int n[3] = {ct->nx, ct->ny, ct->nz};
    for (int a = 0; a < 3; a++)
        if (o->point[a] < 0 || o->point[a] >= n[a]) return CTG_EINVAL;
    if (lab && (lab->nx != ct->nx || lab->ny != ct->ny || lab->nz != ct->nz)) return CTG_EINVAL;
    if (!(o->width > 0) || o->size < 1 || o->size > MAX_SIZE) return CTG_EINVAL;

    double sp[3], mm[3];
    ctg_vol_spacing(ct, sp);
    for (int a = 0; a < 3; a++) mm[a] = n[a] * sp[a];
    /* Axial: i across, j down.  Coronal: i across, k up.  Sagittal: j
     * across, k up. */
    panel pn[3] = {
        {.u = 0, .v = 1, .fixed = 2, .at = o->point[2], .flip_v = 0},
        {.u = 0, .v = 2, .fixed = 1, .at = o->point[1], .flip_v = 1},
        {.u = 1, .v = 2, .fixed = 0, .at = o->point[0], .flip_v = 1},
    };
    double tallest = fmax(mm[1], mm[2]);
    double mmpp = tallest / o->size; /* millimetres per output pixel */
    long width = 0, height = 0;
    for (int q = 0; q < 3; q++) {
        double pw = round(mm[pn[q].u] / mmpp), ph = round(mm[pn[q].v] / mmpp);
        if (!(pw <= MAX_PIXELS) || !(ph <= MAX_PIXELS)) return CTG_ETOOBIG;
        pn[q].w = pw < 1 ? 1 : (int)pw;
        pn[q].h = ph < 1 ? 1 : (int)ph;
        pn[q].x0 = (int)width;
        width += pn[q].w + (q < 2 ? GAP : 0);
        if (pn[q].h > height) height = pn[q].h;
    }
    if (width * height > MAX_PIXELS) return CTG_ETOOBIG;

    uint8_t *img = calloc((size_t)width * (size_t)height, 3);
    if (!img) return CTG_ENOMEM;
    for (int q = 0; q < 3; q++) draw_panel(ct, lab, &pn[q], o, img, (int)width);
    *rgb = img;
    *w = (int)width;
    *h = (int)height;
    return 0;
}

/* Writes 8-bit RGB rows as a PNG, through a temporary file renamed into
 * place.  Returns 0, or -1 with the reason in why. */
static int write_png(const char *path, const uint8_t *rgb, int w, int h, char *why, size_t n)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        snprintf(why, n, "path too long");
        return -1;
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        snprintf(why, n, "%s: %s", path, strerror(errno));
        return -1;
    }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        snprintf(why, n, "out of memory");
        goto fail;
    }
    if (setjmp(png_jmpbuf(png))) {
        snprintf(why, n, "libpng failed writing %s", path);
        goto fail;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++) png_write_row(png, rgb + 3 * (size_t)w * (size_t)y);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    if (fflush(f) != 0 || ferror(f) || fclose(f) != 0) {
        f = NULL;
        snprintf(why, n, "%s: %s", path, strerror(errno));
        goto fail;
    }
    f = NULL;
    if (rename(tmp, path) != 0) {
        snprintf(why, n, "rename to %s: %s", path, strerror(errno));
        goto fail;
    }
    return 0;

fail:
    if (png) png_destroy_write_struct(&png, info ? &info : NULL);
    if (f) fclose(f);
    unlink(tmp);
    return -1;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: ctglip view [--slice X,Y,Z] [--window C,W] [--alpha A] [--size PX]\n"
            "                   --out FILE.png CT [LABELS]\n"
            "  CT and LABELS are NIfTI files; X,Y,Z are voxel indices after reorienting\n"
            "  to LPS (default: centre of the labelled region, else of the volume);\n"
            "  window default 40,400 HU; alpha default 0.45; size = height of the\n"
            "  tallest panel in pixels, default 512.\n");
    return 2;
}

/* Parses "a,b,..." into cnt doubles; 0 on success. */
static int parse_list(const char *s, double *out, int cnt)
{
    for (int q = 0; q < cnt; q++) {
        char *end;
        errno = 0;
        out[q] = strtod(s, &end);
        if (end == s || errno || !isfinite(out[q])) return -1;
        if (q < cnt - 1) {
            if (*end != ',') return -1;
            s = end + 1;
        } else if (*end) {
            return -1;
        }
    }
    return 0;
}

/* Centre of the bounding box of labelled voxels; 0 when there is one. */
static int label_centre(const ctg_vol *lab, int pt[3])
{
    int lo[3] = {lab->nx, lab->ny, lab->nz}, hi[3] = {-1, -1, -1};
    const uint8_t *d = lab->data;
    size_t o = 0;
    for (int k = 0; k < lab->nz; k++)
        for (int j = 0; j < lab->ny; j++)
            for (int i = 0; i < lab->nx; i++, o++) {
                if (!d[o]) continue;
                const int c[3] = {i, j, k};
                for (int a = 0; a < 3; a++) {
                    if (c[a] < lo[a]) lo[a] = c[a];
                    if (c[a] > hi[a]) hi[a] = c[a];
                }
            }
    if (hi[0] < 0) return -1;
    for (int a = 0; a < 3; a++) pt[a] = (lo[a] + hi[a]) / 2;
    return 0;
}

int ctg_view_main(int argc, char **argv)
{
    view_opts o = {.point = {-1, -1, -1}, .centre = 40, .width = 400, .alpha = 0.45, .size = 512};
    const char *out = NULL, *ct_path = NULL, *lab_path = NULL;
    int have_point = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        double vals[3];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        }
        if (a[0] == '-' && a[1] == '-') {
            if (i + 1 >= argc) return usage();
            const char *val = argv[++i];
            if (!strcmp(a, "--out")) {
                out = val;
            } else if (!strcmp(a, "--slice")) {
                if (parse_list(val, vals, 3) < 0) return usage();
                for (int q = 0; q < 3; q++) {
                    if (vals[q] != floor(vals[q]) || fabs(vals[q]) > 1e6) return usage();
                    o.point[q] = (int)vals[q];
                }
                have_point = 1;
            } else if (!strcmp(a, "--window")) {
                if (parse_list(val, vals, 2) < 0 || !(vals[1] > 0)) return usage();
                o.centre = vals[0];
                o.width = vals[1];
            } else if (!strcmp(a, "--alpha")) {
                if (parse_list(val, vals, 1) < 0 || vals[0] < 0 || vals[0] > 1) return usage();
                o.alpha = vals[0];
            } else if (!strcmp(a, "--size")) {
                if (parse_list(val, vals, 1) < 0 || vals[0] != floor(vals[0]) || vals[0] < 16 ||
                    vals[0] > MAX_SIZE)
                    return usage();
                o.size = (int)vals[0];
            } else {
                fprintf(stderr, "ctglip view: unknown option %s\n", a);
                return usage();
            }
        } else if (!ct_path) {
            ct_path = a;
        } else if (!lab_path) {
            lab_path = a;
        } else {
            return usage();
        }
    }
    if (!out || !ct_path) return usage();

    int status = 1, rc;
    char why[1024] = "";
    ctg_vol *ct = NULL, *lab = NULL, *tmp = NULL;
    uint8_t *rgb = NULL;
    int w = 0, h = 0;

    if (ctg_nifti_read(ct_path, CTG_F32, &ct, why, sizeof why) < 0) {
        fprintf(stderr, "ctglip view: %s\n", why);
        goto done;
    }
    if ((rc = ctg_vol_canonical(ct)) < 0) {
        fprintf(stderr, "ctglip view: %s: %s\n", ct_path, ctg_strerror(rc));
        goto done;
    }
    if (lab_path) {
        if (ctg_nifti_read(lab_path, CTG_U8, &lab, why, sizeof why) < 0) {
            fprintf(stderr, "ctglip view: %s\n", why);
            goto done;
        }
        if ((rc = ctg_vol_canonical(lab)) < 0) {
            fprintf(stderr, "ctglip view: %s: %s\n", lab_path, ctg_strerror(rc));
            goto done;
        }
        /* Labels from another grid are brought onto the CT's, by world
         * position; nearest keeps them labels. */
        if (!ctg_vol_same_grid(ct, lab, 1e-3)) {
            if ((rc = ctg_vol_resample_to(lab, ct, CTG_NEAREST, 0, &tmp)) < 0) {
                fprintf(stderr, "ctglip view: %s: resampling onto the CT grid: %s\n", lab_path,
                        ctg_strerror(rc));
                goto done;
            }
            ctg_vol_free(lab);
            lab = tmp;
            tmp = NULL;
        }
    }
    if (!have_point && !(lab && label_centre(lab, o.point) == 0)) {
        o.point[0] = (ct->nx - 1) / 2;
        o.point[1] = (ct->ny - 1) / 2;
        o.point[2] = (ct->nz - 1) / 2;
    }
    if (o.point[0] < 0 || o.point[0] >= ct->nx || o.point[1] < 0 || o.point[1] >= ct->ny ||
        o.point[2] < 0 || o.point[2] >= ct->nz) {
        fprintf(stderr, "ctglip view: slice %d,%d,%d is outside the volume (%d x %d x %d)\n",
                o.point[0], o.point[1], o.point[2], ct->nx, ct->ny, ct->nz);
        goto done;
    }
    if ((rc = render_views(ct, lab, &o, &rgb, &w, &h)) < 0) {
        fprintf(stderr, "ctglip view: rendering: %s\n", ctg_strerror(rc));
        goto done;
    }
    if (write_png(out, rgb, w, h, why, sizeof why) < 0) {
        fprintf(stderr, "ctglip view: %s\n", why);
        goto done;
    }
    printf("%s: %d x %d, slices at %d,%d,%d\n", out, w, h, o.point[0], o.point[1], o.point[2]);
    status = 0;

done:
    free(rgb);
    ctg_vol_free(tmp);
    ctg_vol_free(lab);
    ctg_vol_free(ct);
    return status;
}
