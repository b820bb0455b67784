/*
 * core.h - the bottom layer of ctglip: error codes, logging, time and small
 * file-system helpers that every other subsystem uses.
 *
 * Everything here is thread-safe.  Functions return 0 or a negative CTG_E*
 * code; ctg_strerror() gives the text.  System errors are mapped once, at the
 * system call, through ctg_errno().
 */
#ifndef CTGLIP_CORE_H
#define CTGLIP_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <errno.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- error codes ------------------------------------------------------ */

/* X(name, value, message).  System errors keep their errno value (negated),
 * so CTG_ENOSPC == -ENOSPC; project errors live above 1000. */
#define CTG_ERRNO_MAP(X)                                                       \
    X(NOMEM, -ENOMEM, "out of memory")                                         \
    X(INVAL, -EINVAL, "invalid argument")                                      \
    X(NOENT, -ENOENT, "no such file or directory")                             \
    X(EXIST, -EEXIST, "already exists")                                        \
    X(NOSPC, -ENOSPC, "no space left on device")                               \
    X(IO, -EIO, "input/output error")                                          \
    X(ACCES, -EACCES, "permission denied")                                     \
    X(BADUID, -1001, "invalid DICOM UID")                                      \
    X(DB, -1002, "index database error")                                       \
    X(SCHEMA, -1003, "index schema is newer than this program")                \
    X(CONFIG, -1004, "configuration error")                                    \
    X(DICOM, -1005, "DICOM error")                                             \
    X(RESERVE, -1006, "free disk space below the configured reserve")          \
    X(NOTFOUND, -1007, "not found")                                            \
    X(LEASE, -1008, "job lease lost")                                          \
    X(TOOBIG, -1009, "size limit exceeded")                                    \
    X(STATE, -1010, "operation not allowed in this state")                     \
    X(FORMAT, -1011, "malformed or unsupported data")                          \
    X(REJECT, -1012, "input rejected")

enum {
#define CTG__ENUM(name, val, msg) CTG_E##name = (val),
    CTG_ERRNO_MAP(CTG__ENUM)
#undef CTG__ENUM
};

/* Text for an error code; never NULL.  Unknown negative values are treated
 * as negated errno values. */
const char *ctg_strerror(int err);

/* The negative error code for errno value e (e > 0). */
static inline int ctg_errno(int e) { return e > 0 ? -e : CTG_EIO; }

/* ---- logging ------------------------------------------------------------ */

enum { CTG_LOG_ERROR = 0, CTG_LOG_WARN, CTG_LOG_INFO, CTG_LOG_DEBUG };

/* The current level; read with a relaxed atomic load by every thread,
 * changed (on reload) only through ctg_log_set_level(). */
extern int ctg_log_level;
void ctg_log_set_level(int level);

/* Parses "error", "warn", "info", "debug"; returns the level or -1. */
int ctg_log_parse_level(const char *s);
void ctg_log_write(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The level check comes before any argument is evaluated or formatted. */
#define CTG_LOG(level, ...)                                                    \
    do {                                                                       \
        if ((level) <= __atomic_load_n(&ctg_log_level, __ATOMIC_RELAXED))    \
            ctg_log_write((level), __VA_ARGS__);                               \
    } while (0)
#define log_error(...) CTG_LOG(CTG_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) CTG_LOG(CTG_LOG_WARN, __VA_ARGS__)
#define log_info(...) CTG_LOG(CTG_LOG_INFO, __VA_ARGS__)
#define log_debug(...) CTG_LOG(CTG_LOG_DEBUG, __VA_ARGS__)
/* Names the failing system call and appends the text of err (negative). */
#define log_syserr(err, call, fmt, ...)                                        \
    CTG_LOG(CTG_LOG_ERROR, "%s: " fmt ": %s", (call), ##__VA_ARGS__,           \
            ctg_strerror(err))

/* ---- time and files ------------------------------------------------------ */

/* Wall-clock time in seconds since the epoch (used for persisted deadlines). */
double ctg_now(void);
/* Monotonic seconds, for measuring durations. */
double ctg_mono(void);

/* fsync() a directory by path. */
int ctg_fsync_dir(const char *dir);
/* mkdir -p with mode 0750; each directory it creates is made durable by an
 * fsync of its parent. */
int ctg_mkdirs(const char *path);
/* A file that ships with ctglip (e.g. "models/glove100.vocab",
 * "etc/findings.conf"), found from any working folder: under $CTGLIP_HOME
 * when set; else beside the program's folder (build/../REL in a checkout,
 * PREFIX/share/ctglip/REL once installed) when readable there; else REL
 * itself.  Writes the path into out (n bytes) and returns out. */
const char *ctg_data_path(const char *rel, char *out, size_t n);

/* The software version written into reports and logs. */
#define CTG_VERSION "0.5.0"

/* A new globally unique DICOM UID: "2.25." and the decimal value of 128
 * random bits (getrandom), at most 44 characters.  0 or CTG_EIO. */
int ctg_uid_random(char out[65]);
/* Writes len bytes, retrying on EINTR and short writes. */
int ctg_write_all(int fd, const void *buf, size_t len);

/* A sequential writer of a new file that is about to be made durable.
 *
 * The writer collects the many small writes of a DICOM stream (the meta
 * header element by element, then PDV by PDV) in a staging buffer and
 * writes the file in pieces of the buffer's size, and it starts write-back
 * of every full CTG_FW_KICK bytes (sync_file_range), so the disk works
 * while the rest arrives and the final fsync waits only for the tail.
 * Without a staging buffer it writes through.
 *
 * After ctg_fw_finish() the staging buffer still holds the file's last
 * bytes: [tail_off, tail_off + tail_len).  Errors stick: after one, writes
 * return it and write nothing. */
#define CTG_FW_KICK (256u * 1024u)
typedef struct ctg_fwriter {
    int fd;
    unsigned char *buf;  /* staging buffer, or NULL */
    size_t cap;          /* its size */
    size_t fill;         /* staged bytes not yet written */
    size_t last;         /* bytes of the last full buffer written */
    uint64_t off;        /* bytes already in the file */
    uint64_t kicked;     /* bytes handed to write-back */
    uint64_t tail_off;   /* after finish: file offset of buf[0] */
    size_t tail_len;     /* after finish: file bytes buf still holds */
    int err;             /* first error (negative CTG code), sticky */
} ctg_fwriter;

/* buf/cap: the staging buffer, or NULL/0 to write through. */
void ctg_fw_init(ctg_fwriter *w, int fd, unsigned char *buf, size_t cap);
int ctg_fw_write(ctg_fwriter *w, const void *data, size_t len);
/* Writes what is staged; 0 or the error. */
int ctg_fw_finish(ctg_fwriter *w);
/* Bytes accepted so far (the file's length after finish). */
static inline uint64_t ctg_fw_size(const ctg_fwriter *w) { return w->off + w->fill; }

/* ---- what later stages need to know about a received instance ---------- */

/* Filled by the dicom layer from a stored file, consumed by the store.  All
 * strings are NUL-terminated and trimmed; empty when absent. */
typedef struct ctg_instance {
    char sop_class[65];
    char sop_uid[65];
    char study_uid[65];
    char series_uid[65];
    char frame_of_ref_uid[65];
    char transfer_syntax[65];
    char patient_id[65];
    char patient_name[325];
    char patient_birth_date[9];
    char patient_sex[17];
    char study_date[9];
    char study_time[17];
    char accession[17];
    char study_desc[65];
    char modality[17];
    char series_desc[65];
    char body_part[17];
    char image_type[129];
    int series_number;
    int instance_number;
    int rows, cols, frames;
    int has_orientation, has_position, has_spacing;
    double orientation[6];
    double position[3];
    double pixel_spacing[2];
    double slice_thickness; /* 0 when absent */
} ctg_instance;

#ifdef __cplusplus
}
#endif
#endif
