/*
 * vol.h - 3-D volumes (CT in Hounsfield units, label maps, masks), their
 * geometry, resampling and NIfTI input/output.  Part of core/'s public
 * interface (core.h holds the rest).
 *
 * Geometry convention, used everywhere in ctglip:
 *   - data is x fastest: element (i,j,k) is at i + nx*(j + ny*k);
 *   - aff maps a voxel index (i,j,k,1) to the centre of that voxel in DICOM
 *     patient coordinates (LPS: +x towards the patient's left, +y towards
 *     posterior, +z towards head), in millimetres.  NIfTI files use RAS
 *     world coordinates; ctg_nifti_read/write convert at the boundary (the
 *     first two rows change sign) and nowhere else;
 *   - the canonical orientation (ctg_vol_canonical) permutes and flips the
 *     voxel axes so that i runs towards the patient's left, j towards
 *     posterior and k towards head as closely as the acquisition allows
 *     (ITK's "LPS"; for a head-first supine axial series that is the DICOM
 *     pixel order with slices sorted foot to head).  Oblique acquisitions
 *     keep their rotation in aff; only axis order and sign change.
 *
 * Threading: none; a volume belongs to one thread at a time.
 */
#ifndef CTGLIP_VOL_H
#define CTGLIP_VOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum ctg_dtype {
    CTG_F32 = 1, /* float: images (HU) */
    CTG_U8 = 2,  /* uint8_t: label maps (TotalSegmentator ids), masks */
    CTG_I16 = 3, /* int16_t: stored CT values */
};

enum ctg_interp {
    CTG_NEAREST = 0, /* label maps */
    CTG_LINEAR = 1,  /* images: trilinear */
};

typedef struct ctg_vol {
    int nx, ny, nz;
    int dtype;        /* enum ctg_dtype */
    void *data;       /* nx*ny*nz elements, owned by the volume */
    double aff[3][4]; /* voxel index -> LPS mm (see above) */
} ctg_vol;

/* Bytes per element of a dtype; 0 for an unknown one. */
size_t ctg_dtype_size(int dtype);
/* A new zero-filled volume with the identity affine, or NULL (no memory,
 * bad sizes).  Free with ctg_vol_free. */
ctg_vol *ctg_vol_new(int nx, int ny, int nz, int dtype);
void ctg_vol_free(ctg_vol *v); /* NULL: no-op */
size_t ctg_vol_count(const ctg_vol *v);
/* A deep copy, or NULL. */
ctg_vol *ctg_vol_clone(const ctg_vol *v);
/* A copy converted to dtype (values rounded and clamped for integer
 * types), or NULL. */
ctg_vol *ctg_vol_convert(const ctg_vol *v, int dtype);

/* Voxel spacing along i, j, k (lengths of the affine's columns). */
void ctg_vol_spacing(const ctg_vol *v, double sp[3]);
/* World (LPS mm) position of a possibly fractional voxel index. */
void ctg_vol_world(const ctg_vol *v, const double ijk[3], double xyz[3]);
/* Voxel index of a world position; CTG_EINVAL when aff is singular. */
int ctg_vol_index(const ctg_vol *v, const double xyz[3], double ijk[3]);
/* Value at integer (i,j,k) as double; no bounds check. */
double ctg_vol_get(const ctg_vol *v, int i, int j, int k);
/* Sets the value at (i,j,k), converting from double. */
void ctg_vol_set(ctg_vol *v, int i, int j, int k, double val);

/* Permutes/flips the voxel axes in place into the canonical orientation
 * (see above), updating aff so that every voxel keeps its world position.
 * Returns 0 or CTG_ENOMEM. */
int ctg_vol_canonical(ctg_vol *v);
/* 1 when two volumes have the same dimensions and affines within tol mm
 * (each affine entry compared, translation included). */
int ctg_vol_same_grid(const ctg_vol *a, const ctg_vol *b, double tol);

/* Resamples to a new voxel spacing (mm along i, j, k) covering the same
 * extent: the new grid has the same directions and the same first voxel
 * corner, n' = round(n * sp / sp').  CTG_LINEAR is trilinear (images),
 * CTG_NEAREST for labels.  Outside the source, `fill` is used.  *out is a
 * new volume of the source's dtype.  Returns 0 or a CTG_E* code. */
int ctg_vol_resample(const ctg_vol *src, const double spacing[3], int interp,
                     double fill, ctg_vol **out);
/* Resamples src onto the grid (dims + affine) of `grid`, in world space.
 * *out has src's dtype. */
int ctg_vol_resample_to(const ctg_vol *src, const ctg_vol *grid, int interp,
                        double fill, ctg_vol **out);

/* Reads a NIfTI-1 file (.nii or .nii.gz) through libniftiio, honouring the
 * sform (preferred when its code is set) or else the qform, and applying
 * scl_slope/scl_inter.  The result is converted to `dtype` (CTG_F32 for CT,
 * CTG_U8 for label maps: values outside 0..255 are an error) and left in
 * the file's voxel order (call ctg_vol_canonical to reorient).  Returns 0,
 * or CTG_EIO / CTG_EFORMAT / CTG_EINVAL / CTG_ENOMEM with the reason in
 * why. */
int ctg_nifti_read(const char *path, int dtype, ctg_vol **out, char *why,
                   size_t n);
/* Writes v as NIfTI-1 (.nii.gz compresses), sform and qform both set from
 * aff (code 1, scanner anatomical), in v's dtype.  Returns 0 or CTG_EIO with
 * the reason in why. */
int ctg_nifti_write(const char *path, const ctg_vol *v, char *why, size_t n);

#ifdef __cplusplus
}
#endif
#endif
