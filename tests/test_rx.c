/*
 * test_rx.c - the C-STORE receive path below the network: the staging file
 * writer (ctg_fwriter) and the header parse of a just-written file from
 * what the receiver still holds in memory (dcm_parse_received), checked
 * against the plain file parse on the real fixture slices.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"
#include "dicom/dicom.h"
#include "tests.h"

/* Deterministic bytes: byte i of the test stream. */
static unsigned char pattern(uint64_t i) { return (unsigned char)((i * 2654435761u) >> 13); }

/* Writes n pattern bytes through a writer with a staging buffer of cap
 * bytes (0: write-through) in chunks of varying size, then checks the file,
 * the size and what the buffer holds afterwards. */
static int write_and_check(const char *path, size_t n, size_t cap)
{
    unsigned char *buf = cap ? malloc(cap) : NULL;
    unsigned char *src = malloc(n + 1);
    CHECK(src && (buf || !cap));
    for (size_t i = 0; i < n; i++) src[i] = pattern(i);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    ctg_fwriter w;
    ctg_fw_init(&w, fd, buf, cap);
    static const size_t steps[] = {1, 7, 130, 4096, 65535, 100001, 3};
    size_t at = 0, k = 0;
    while (at < n) {
        size_t c = steps[k++ % (sizeof steps / sizeof steps[0])];
        if (c > n - at) c = n - at;
        CHECK_EQ_INT(ctg_fw_write(&w, src + at, c), 0);
        at += c;
        CHECK_EQ_INT(ctg_fw_size(&w), at);
    }
    CHECK_EQ_INT(ctg_fw_finish(&w), 0);
    CHECK_EQ_INT(ctg_fw_size(&w), n);
    close(fd);

    size_t len = 0;
    char *back = tu_slurp(path, &len);
    CHECK(back != NULL);
    CHECK_EQ_INT(len, n);
    CHECK(memcmp(back, src, n) == 0);
    if (cap && n > 0) {
        /* The buffer still holds the file's last bytes. */
        CHECK(w.tail_len > 0 && w.tail_len <= cap);
        CHECK_EQ_INT(w.tail_off + w.tail_len, n);
        CHECK(memcmp(buf, src + w.tail_off, w.tail_len) == 0);
    }
    free(back);
    free(src);
    free(buf);
    return 0;
}

static int test_fwriter(void)
{
    /* Ends mid-buffer, exactly on a buffer boundary, smaller than one
     * buffer, empty; and without a buffer. */
    CHECK_EQ_INT(write_and_check("a.bin", 1000003, 65536), 0);
    CHECK_EQ_INT(write_and_check("b.bin", 4 * 65536, 65536), 0);
    CHECK_EQ_INT(write_and_check("c.bin", 777, 65536), 0);
    CHECK_EQ_INT(write_and_check("d.bin", 0, 65536), 0);
    CHECK_EQ_INT(write_and_check("e.bin", 300000, 0), 0);

    /* A failed write is returned and sticks; nothing after it is written. */
    int fd = open("ro.bin", O_RDONLY | O_CREAT, 0644);
    CHECK(fd >= 0);
    unsigned char stage[4096], data[5000];
    memset(data, 1, sizeof data);
    ctg_fwriter w;
    ctg_fw_init(&w, fd, stage, sizeof stage);
    int r = ctg_fw_write(&w, data, sizeof data); /* fills the buffer: flush fails */
    CHECK(r < 0);
    CHECK_EQ_INT(ctg_fw_write(&w, data, 10), r);
    CHECK_EQ_INT(ctg_fw_finish(&w), r);
    close(fd);
    struct stat sb;
    CHECK(stat("ro.bin", &sb) == 0 && sb.st_size == 0);
    return 0;
}

/* ---- dcm_parse_received ------------------------------------------------------ */

/* Offset of the data set in a Part 10 file: 128-byte preamble, "DICM", the
 * (0002,0000) UL group length (12 bytes) and the group it counts. */
static uint64_t data_offset_of(const unsigned char *f, size_t len)
{
    if (len < 144 || memcmp(f + 128, "DICM", 4) != 0) return 0;
    if (f[132] != 2 || f[133] != 0 || f[134] != 0 || f[135] != 0) return 0;
    uint32_t gl = (uint32_t)f[140] | (uint32_t)f[141] << 8 | (uint32_t)f[142] << 16 |
                  (uint32_t)f[143] << 24;
    return 144 + (uint64_t)gl;
}

static int same_instance(const ctg_instance *a, const ctg_instance *b)
{
    /* Both were zeroed before filling, so whole-struct equality is exact. */
    return memcmp(a, b, sizeof *a) == 0;
}

/* Parses path as the SCP would after writing it, holding head_len leading
 * and tail_len trailing bytes in memory (the rest comes from the file). */
static int parse_held(const char *path, const unsigned char *file, size_t len, const char *xfer,
                      size_t head_len, size_t tail_len, ctg_instance *out, char *why, size_t n)
{
    dcm_rx_file f = {.path = path, .size = len, .data_offset = data_offset_of(file, len),
                     .head = file, .head_len = head_len < len ? head_len : len, .xfer = xfer};
    if (tail_len) {
        if (tail_len > len) tail_len = len;
        f.tail = file + (len - tail_len);
        f.tail_off = len - tail_len;
        f.tail_len = tail_len;
    }
    return dcm_parse_received(&f, out, why, n);
}

static int test_parse_matches_file(void)
{
    char cmd[4096], why[512];
    snprintf(cmd, sizeof cmd, "sh '%s/tests/fixture.sh' slices >/dev/null", getenv("CTG_ROOT"));
    CHECK(system(cmd) == 0);
    dcm_global_init();

    FILE *ls = popen("ls slices/*.dcm | head -n 3", "r");
    CHECK(ls != NULL);
    char path[1024];
    int files = 0;
    while (fgets(path, sizeof path, ls)) {
        path[strcspn(path, "\n")] = 0;
        size_t len = 0;
        unsigned char *file = (unsigned char *)tu_slurp(path, &len);
        CHECK(file != NULL);
        CHECK(data_offset_of(file, len) > 144);
        ctg_instance ref, got;
        CHECK_EQ_INT(dcm_read_instance(path, &ref, why, sizeof why), 0);
        /* What the fixture holds (dcmdump): a 512x512 axial CT slice. */
        CHECK(ref.rows == 512 && ref.cols == 512 && ref.frames == 1);
        CHECK(!strcmp(ref.sop_class, "1.2.840.10008.5.1.4.1.1.2") && !strcmp(ref.modality, "CT"));
        CHECK(!strncmp(ref.study_uid, "2.25.", 5) && ref.patient_name[0] == 0);
        CHECK(ref.has_spacing && ref.pixel_spacing[0] == 0.9765625 && ref.pixel_spacing[1] == 0.9765625);
        CHECK(ref.has_orientation && ref.orientation[0] == 1 && ref.orientation[4] == 1 &&
              ref.orientation[1] == 0);
        CHECK(ref.has_position && ref.position[0] == -249.51171875 && ref.slice_thickness > 0);
        CHECK(!strcmp(ref.image_type, "ORIGINAL\\PRIMARY\\AXIAL\\CT_SOM5 SPI"));

        /* Everything in memory; only the start (so the pixel data and what
         * follows are read from the file, or skipped); start and end; the
         * meta header alone; nothing but the path. */
        static const size_t held[][2] = {
            {1u << 30, 0}, {4096, 0}, {65536, 1000}, {200, 0}, {0, 0}, {300, 600000}};
        for (size_t v = 0; v < sizeof held / sizeof held[0]; v++) {
            CHECK_EQ_INT(parse_held(path, file, len, ref.transfer_syntax, held[v][0], held[v][1],
                                    &got, why, sizeof why),
                         0);
            if (!same_instance(&ref, &got)) {
                fprintf(stderr, "%s: variant %zu differs from the file parse\n", path, v);
                return 1;
            }
        }
        free(file);
        files++;
    }
    pclose(ls);
    CHECK_EQ_INT(files, 3);
    return 0;
}

/* A damaged data set is refused from memory exactly as from the file: the
 * pixel data cut short, and an element after it declaring a length beyond
 * the end. */
static int test_parse_rejects_damage(void)
{
    char cmd[4096], why[512];
    snprintf(cmd, sizeof cmd, "sh '%s/tests/fixture.sh' slices >/dev/null", getenv("CTG_ROOT"));
    CHECK(system(cmd) == 0);
    dcm_global_init();
    dcm_quiet();
    FILE *ls = popen("ls slices/*.dcm | head -n 1", "r");
    CHECK(ls != NULL);
    char path[1024];
    CHECK(fgets(path, sizeof path, ls) != NULL);
    pclose(ls);
    path[strcspn(path, "\n")] = 0;
    size_t len = 0;
    unsigned char *file = (unsigned char *)tu_slurp(path, &len);
    CHECK(file != NULL && len > 300000);
    ctg_instance ref, got;
    CHECK_EQ_INT(dcm_read_instance(path, &ref, why, sizeof why), 0);

    /* (1) Cut in the middle of the pixel data. */
    size_t cut = (len - 100000) & ~(size_t)1;
    FILE *o = fopen("cut.dcm", "wb");
    CHECK(o && fwrite(file, 1, cut, o) == cut && fclose(o) == 0);
    CHECK(dcm_read_instance("cut.dcm", &got, why, sizeof why) < 0);
    CHECK(parse_held("cut.dcm", file, cut, ref.transfer_syntax, 65536, 4096, &got, why, sizeof why) <
          0);
    printf("cut pixel data: %s\n", why);
    CHECK(parse_held("cut.dcm", file, cut, ref.transfer_syntax, 4096, 0, &got, why, sizeof why) < 0);

    /* (2) An OB element after the pixel data declaring 0xFFFFFFF0 bytes. */
    static const unsigned char extra[] = {0xe1, 0x7f, 0x10, 0x00, 'O',  'B',  0,    0,
                                          0xf0, 0xff, 0xff, 0xff, 0x01, 0x02, 0x03, 0x04};
    unsigned char *big = malloc(len + sizeof extra);
    CHECK(big != NULL);
    memcpy(big, file, len);
    memcpy(big + len, extra, sizeof extra);
    o = fopen("huge.dcm", "wb");
    CHECK(o && fwrite(big, 1, len + sizeof extra, o) == len + sizeof extra && fclose(o) == 0);
    CHECK(dcm_read_instance("huge.dcm", &got, why, sizeof why) < 0);
    CHECK(parse_held("huge.dcm", big, len + sizeof extra, ref.transfer_syntax, 65536, 4096, &got,
                     why, sizeof why) < 0);
    printf("huge length: %s\n", why);
    /* The trailing element only in the file, not in memory: still refused. */
    CHECK(parse_held("huge.dcm", big, len + sizeof extra, ref.transfer_syntax, 65536, 0, &got, why,
                     sizeof why) < 0);

    /* (3) An unknown transfer syntax. */
    CHECK(parse_held(path, file, len, "1.2.3.4", 65536, 0, &got, why, sizeof why) < 0);
    free(big);
    free(file);
    return 0;
}

const test_case rx_tests[] = {
    {"rx_fwriter", test_fwriter},
    {"rx_parse_matches_file", test_parse_matches_file},
    {"rx_parse_rejects_damage", test_parse_rejects_damage},
    {NULL, NULL},
};
