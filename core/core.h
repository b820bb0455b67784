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
