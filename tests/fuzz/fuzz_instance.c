/*
 * fuzz_instance.c - libFuzzer target for the parser every received data set
 * goes through (dcm_read_instance: DCMTK's file parser plus our attribute
 * extraction).  The input is the data set part; the target puts a valid
 * preamble and file meta header in front, as the SCP does.
 *
 *   make fuzz            builds build/fuzz/fuzz_instance (clang, libFuzzer, ASan)
 *   build/fuzz/fuzz_instance -max_total_time=60 CORPUS_DIR
 *
 * The same entry point runs in `make test` over a deterministic set of
 * mutations of a real CT slice (tests/test_fuzz.c).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dicom/dicom.h"

/* A Part-10 meta header for CT Image Storage, explicit VR little endian.
 * The group length 0x58 is the byte count of the four elements after it. */
static const unsigned char meta[] = {
    /* (0002,0000) UL 4 */
    0x02, 0x00, 0x00, 0x00, 'U', 'L', 4, 0, 0x58, 0, 0, 0,
    /* (0002,0001) OB 2 */
    0x02, 0x00, 0x01, 0x00, 'O', 'B', 0, 0, 2, 0, 0, 0, 0, 1,
    /* (0002,0002) UI 26 */
    0x02, 0x00, 0x02, 0x00, 'U', 'I', 26, 0, '1', '.', '2', '.', '8', '4', '0', '.', '1',
    '0', '0', '0', '8', '.', '5', '.', '1', '.', '4', '.', '1', '.', '1', '.', '2', 0,
    /* (0002,0003) UI 4 */
    0x02, 0x00, 0x03, 0x00, 'U', 'I', 4, 0, '1', '.', '2', 0,
    /* (0002,0010) UI 20 */
    0x02, 0x00, 0x10, 0x00, 'U', 'I', 20, 0, '1', '.', '2', '.', '8', '4', '0', '.', '1',
    '0', '0', '0', '8', '.', '1', '.', '2', '.', '1', 0,
};

int ctg_fuzz_instance(const uint8_t *data, size_t size);

int ctg_fuzz_instance(const uint8_t *data, size_t size)
{
    char path[] = "/tmp/ctglip-fuzz-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return 0;
    unsigned char pre[132] = {0};
    memcpy(pre + 128, "DICM", 4);
    int ok = write(fd, pre, sizeof pre) == (ssize_t)sizeof pre &&
             write(fd, meta, sizeof meta) == (ssize_t)sizeof meta &&
             write(fd, data, size) == (ssize_t)size;
    close(fd);
    int r = -1;
    if (ok) {
        ctg_instance inst;
        char why[256];
        r = dcm_read_instance(path, &inst, why, sizeof why);
        /* Whatever was accepted must be NUL-terminated and within bounds. */
        if (r == 0 && (strlen(inst.sop_uid) > 64 || strlen(inst.study_uid) > 64)) abort();
    }
    unlink(path);
    return r;
}

#ifdef CTG_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once++) dcm_quiet();
    ctg_fuzz_instance(data, size);
    return 0;
}
#endif
