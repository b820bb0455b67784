/*
 * test_report.c - the radiology report parser (core/report.h): hand-written
 * sentences and short reports in real radiology style with the per-organ
 * states and keys they must give, the error paths, and a measurement on
 * phantom reports (train and held-out phrasings) against the phantom's
 * findings.json, with precision and recall printed and held to floors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "tests.h"
#include "core/core.h"
#include "core/organs.h"
#include "core/report.h"
#include "core/zeroshot.h"
#include "tools/train.h"

/* ---- hand-written cases -------------------------------------------------------- */

/* A report and what it must give: space-separated "organ=S[:key,!key...]",
 * S one of U (unknown), N (normal), Q (uncertain), A (abnormal); "key" must
 * be among the organ's keys, "!key" must not.  all: parse with all 117
 * classes instead of the trainer's default organs. */
typedef struct rcase {
    const char *text;
    const char *expect;
    int all;
} rcase;

static const rcase cases[] = {
    /* 1: negation scope ends at "but"; the side word picks the kidney. */
    {"No hydronephrosis but a 4 mm stone in the left kidney.",
     "kidney_left=A:kidney_stone,!hydronephrosis", 0},
    /* 2: post uncertainty cue. */
    {"A liver metastasis cannot be excluded.", "liver=Q:hepatic_mass spleen=U", 0},
    /* 3: pre uncertainty cue, side, key restricts the lobes. */
    {"Possible small left pleural effusion.",
     "lung_lower_lobe_left=Q:pleural_effusion lung_upper_lobe_left=U lung_lower_lobe_right=U", 0},
    /* 4: the mass is asserted, only its nature is hedged. */
    {"A 25 mm mass in the pancreatic tail, suspicious for neoplasm.", "pancreas=A:pancreatic_mass", 0},
    /* 5: "kidneys" names both. */
    {"The kidneys are normal in size without hydronephrosis.", "kidney_left=N kidney_right=N", 0},
    /* 6: organ header; "3.5 cm" does not end the sentence. */
    {"Liver: A 3.5 cm simple cyst in segment 7.", "liver=A:hepatic_cyst,!hepatic_mass", 0},
    /* 7: a clinical question is never a finding. */
    {"HISTORY: Rule out kidney stone.\n\nFINDINGS:\nThe kidneys are unremarkable.",
     "kidney_left=N:!kidney_stone kidney_right=N", 0},
    /* 8: a descriptive sentence says nothing about normality. */
    {"The liver measures 15 cm in craniocaudal extent.", "liver=U", 0},
    /* 9: an absent organ is not a normal one. */
    {"The gallbladder is surgically absent.", "gallbladder=A", 0},
    /* 10: list numbering; an organless impression line takes its key's organs. */
    {"IMPRESSION:\n1. Right upper lobe nodule, 6 mm.\n2. Moderate emphysema.",
     "lung_upper_lobe_right=A:lung_nodule lung_lower_lobe_left=A:emphysema,!lung_nodule", 0},
    /* 11: "Lungs:" header with a pleural effusion -> the lower lobe of that side. */
    {"Lungs: Right pleural effusion.",
     "lung_lower_lobe_right=A:pleural_effusion lung_upper_lobe_right=U lung_middle_lobe_right=U "
     "lung_lower_lobe_left=U",
     0},
    /* 12: an organ named as a point of reference is no mention. */
    {"Hepatic steatosis, with liver attenuation decreased relative to the spleen.",
     "liver=A:fatty_liver spleen=U", 0},
    /* 13: abbreviations do not end sentences. */
    {"Dr. Smith was informed. The spleen is enlarged, measuring approx. 16 cm.",
     "spleen=A:splenomegaly", 0},
    /* 14: asserted finding, negated second one. */
    {"Cardiomegaly without pericardial effusion.", "heart=A:cardiomegaly lung_lower_lobe_left=U", 0},
    /* 15: normal cue and negated finding. */
    {"Normal heart size without pericardial effusion.", "heart=N", 0},
    /* 16: two negated sentences. */
    {"No focal liver lesion. No splenomegaly.", "liver=N spleen=N", 0},
    /* 17: a second organ header in mid-line. */
    {"Left kidney: 12 mm simple cortical cyst. Right kidney: Normal.",
     "kidney_left=A:renal_cyst kidney_right=N", 0},
    /* 18: a header alone on its line holds until the blank line. */
    {"Right kidney:\nSmall non-obstructing calculus in the lower pole.\nNo hydronephrosis.\n\n"
     "The adrenal glands are unremarkable.",
     "kidney_right=A:kidney_stone,!hydronephrosis kidney_left=U adrenal_gland_left=N "
     "adrenal_gland_right=N",
     0},
    /* 19: merging keeps the abnormal statement. */
    {"The aorta is of normal caliber. Mild atherosclerotic calcification of the abdominal aorta.",
     "aorta=A:aortic_calcification,!aortic_aneurysm", 0},
    /* 20: "infrarenal" is not "renal". */
    {"Infrarenal abdominal aortic aneurysm measuring 4.2 cm.",
     "aorta=A:aortic_aneurysm kidney_left=U kidney_right=U", 0},
    /* 21: "pulmonary embolism" names no lung lobe. */
    {"No pulmonary embolism.", "lung_upper_lobe_left=U lung_lower_lobe_right=U", 0},
    /* 22: "otherwise clear lungs" after a nodule keeps that lobe abnormal. */
    {"A 5 mm nodule in the right upper lobe. The lungs are otherwise clear.",
     "lung_upper_lobe_right=A:lung_nodule lung_lower_lobe_left=N lung_lower_lobe_right=N", 0},
    /* 23: a hard-wrapped line continues the sentence. */
    {"Hepatomegaly. The liver is\nenlarged to 19 cm with diffuse fatty infiltration.",
     "liver=A:hepatomegaly,fatty_liver", 0},
    /* 24: hedged nature, asserted nodule; laterality. */
    {"Left adrenal nodule, likely an adenoma.",
     "adrenal_gland_left=A:adrenal_nodule adrenal_gland_right=U", 0},
    /* 25: technique and comparison are skipped. */
    {"TECHNIQUE: Contrast-enhanced CT of the abdomen in the portal venous phase.\n"
     "COMPARISON: CT from 2019 showing a liver cyst.\nFINDINGS: The liver is unremarkable.",
     "liver=N:!hepatic_cyst", 0},
    /* 26: gallbladder header, "cholecystitis" negated. */
    {"Gallbladder: Cholelithiasis without cholecystitis.", "gallbladder=A:gallstone", 0},
    /* 27: plural organ finding words. */
    {"No gallstones. Normal pancreas.", "gallbladder=N pancreas=N", 0},
    /* 28: uncertain, sided. */
    {"Questionable 3 mm calculus in the right kidney.",
     "kidney_right=Q:kidney_stone kidney_left=U", 0},
    /* 29: both sides named. */
    {"The right and left kidneys demonstrate simple cysts.",
     "kidney_left=A:renal_cyst kidney_right=A:renal_cyst", 0},
    /* 30: dash and star list markers. */
    {"- Fatty liver.\n- Splenomegaly (15 cm).\n* Bilateral renal cysts.",
     "liver=A:fatty_liver spleen=A:splenomegaly kidney_left=A:renal_cyst kidney_right=A:renal_cyst", 0},
    /* 31: "not" and "no" in two clauses. */
    {"The pancreas is not enlarged; no pancreatic mass.", "pancreas=N", 0},
    /* 32: "no change" is no negation. */
    {"No change in the 6 mm left lower lobe nodule.", "lung_lower_lobe_left=A:lung_nodule", 0},
    /* 33: an abnormality with no key of the list. */
    {"Mild bibasilar atelectasis.",
     "lung_lower_lobe_left=A:!pleural_effusion lung_lower_lobe_right=A lung_upper_lobe_left=U", 0},
    /* 34: all classes: a vertebra code. */
    {"Compression fracture of T12. The remaining osseous structures are intact.",
     "vertebrae_T12=A vertebrae_L1=N", 1},
    /* 35: "non-obstructing" negates only its own word. */
    {"A 4 mm non-obstructing calculus in the upper pole of the left kidney.",
     "kidney_left=A:kidney_stone,!hydronephrosis kidney_right=U", 0},
    /* 36: general "pulmonary" gives way to the lobe; coordination keeps both. */
    {"Solid pulmonary nodule in the left upper lobe. The aorta and great vessels are normal in caliber.",
     "lung_upper_lobe_left=A:lung_nodule lung_lower_lobe_left=U aorta=N inferior_vena_cava=N", 0},
};

static int state_of(char c)
{
    return c == 'N' ? RP_NORMAL : c == 'Q' ? RP_UNCERTAIN : c == 'A' ? RP_ABNORMAL : RP_UNKNOWN;
}

static void dump(const rp_result *r)
{
    for (int i = 0; i < r->nitems; i++)
        fprintf(stderr, "    item %-24s %-9s %-20s%s | %s\n", ctg_organ_get(r->items[i].organ)->name,
                rp_state_name(r->items[i].state), r->items[i].key, r->items[i].implicit ? " (implicit)" : "",
                r->items[i].text);
}

/* 0 when r matches the expectation string; prints what differs. */
static int expect(const rp_result *r, const char *spec, const char *text)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", spec);
    int bad = 0;
    for (char *save = NULL, *e = strtok_r(buf, " ", &save); e; e = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(e, '=');
        if (!eq) return 1;
        *eq = 0;
        int id = ctg_organ_id(e);
        if (id < 1) {
            fprintf(stderr, "  bad organ %s in expectation\n", e);
            return 1;
        }
        int want = state_of(eq[1]), got = rp_state(r, id);
        if (want != got) {
            fprintf(stderr, "  \"%s\": %s is %s, expected %s\n", text, e, rp_state_name(got),
                    rp_state_name(want));
            bad = 1;
        }
        if (eq[2] != ':') continue;
        for (char *s2 = NULL, *k = strtok_r(eq + 3, ",", &s2); k; k = strtok_r(NULL, ",", &s2)) {
            int neg = k[0] == '!';
            if (rp_has_key(r, id, k + neg) == neg) {
                fprintf(stderr, "  \"%s\": %s %s key %s\n", text, e, neg ? "has" : "lacks", k + neg);
                bad = 1;
            }
        }
    }
    if (bad) dump(r);
    return bad;
}

static zs_list *load_list(void)
{
    zs_list *l = NULL;
    char why[256] = "";
    if (zs_list_load(tu_root_path("etc/findings.conf"), &l, why, sizeof why) != 0)
        fprintf(stderr, "findings list: %s\n", why);
    return l;
}

static int test_report_cases(void)
{
    zs_list *l = load_list();
    CHECK(l);
    int ids[64];
    int n = trn_default_organs(ids, 64);
    CHECK(n > 20);
    int failed = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rp_opts o = {cases[i].all ? NULL : ids, cases[i].all ? 0 : n, l, 0};
        rp_result *r = NULL;
        char why[256] = "";
        CHECK_EQ_INT(rp_parse(cases[i].text, strlen(cases[i].text), &o, &r, why, sizeof why), 0);
        if (expect(r, cases[i].expect, cases[i].text)) {
            fprintf(stderr, "  case %zu failed\n", i + 1);
            failed++;
        }
        rp_result_free(r);
    }
    fprintf(stderr, "report cases: %zu, %d failed\n", sizeof cases / sizeof cases[0], failed);
    zs_list_free(l);
    CHECK_EQ_INT(failed, 0);
    return 0;
}

/* Sentences, items, offsets and texts of one small report. */
static int test_report_structure(void)
{
    zs_list *l = load_list();
    CHECK(l);
    const char *t = "CLINICAL HISTORY: Flank pain. ?stone\n\nFINDINGS:\nLiver: Normal.   The spleen is\n"
                    "enlarged (approx. 15.5 cm).\nIMPRESSION: Splenomegaly.";
    rp_opts o = {NULL, 0, l, 0};
    rp_result *r = NULL;
    CHECK_EQ_INT(rp_parse(t, strlen(t), &o, &r, NULL, 0), 0);
    CHECK_EQ_INT(r->nsentences, 3);
    CHECK_EQ_INT(rp_state(r, ctg_organ_id("liver")), RP_NORMAL);
    CHECK_EQ_INT(rp_state(r, ctg_organ_id("kidney_left")), RP_UNKNOWN);
    const rp_organ *sp = rp_organ_find(r, ctg_organ_id("spleen"));
    CHECK(sp);
    CHECK_EQ_INT(sp->state, RP_ABNORMAL);
    CHECK_EQ_INT(sp->nkeys, 1);
    CHECK(!strcmp(sp->keys[0].key, "splenomegaly"));
    const rp_item *it = &r->items[sp->item];
    CHECK(!strcmp(it->text, "The spleen is enlarged (approx. 15.5 cm)."));
    CHECK(it->end > it->start && it->end <= strlen(t));
    CHECK(!strncmp(t + it->start, "The spleen", 10));
    for (int i = 0; i < r->nitems; i++) {
        CHECK(r->items[i].state != RP_NORMAL || r->items[i].key[0] == 0);
        if (i) CHECK(r->items[i].start >= r->items[i - 1].start);
    }
    for (int i = 1; i < r->norgans; i++) CHECK(r->organs[i].organ > r->organs[i - 1].organ);
    rp_result_free(r);

    /* all_sections reads the history too. */
    const char *h = "HISTORY: Known hepatic cyst.\nFINDINGS: Normal spleen.";
    o.all_sections = 1;
    CHECK_EQ_INT(rp_parse(h, strlen(h), &o, &r, NULL, 0), 0);
    CHECK_EQ_INT(rp_state(r, ctg_organ_id("liver")), RP_ABNORMAL);
    CHECK(rp_has_key(r, ctg_organ_id("liver"), "hepatic_cyst"));
    rp_result_free(r);
    o.all_sections = 0;
    CHECK_EQ_INT(rp_parse(h, strlen(h), &o, &r, NULL, 0), 0);
    CHECK_EQ_INT(rp_state(r, ctg_organ_id("liver")), RP_UNKNOWN);
    CHECK_EQ_INT(rp_state(r, ctg_organ_id("spleen")), RP_NORMAL);
    rp_result_free(r);

    /* Without a list every abnormal item has key "". */
    const char *k = "Left renal cyst.";
    CHECK_EQ_INT(rp_parse(k, strlen(k), NULL, &r, NULL, 0), 0);
    CHECK_EQ_INT(r->nitems, 1);
    CHECK_EQ_INT(r->items[0].organ, ctg_organ_id("kidney_left"));
    CHECK_EQ_INT(r->items[0].key[0], 0);
    rp_result_free(r);
    zs_list_free(l);
    return 0;
}

static int test_report_errors(void)
{
    rp_result *r = (rp_result *)1;
    char why[128] = "";
    CHECK_EQ_INT(rp_parse(NULL, 0, NULL, &r, why, sizeof why), CTG_EINVAL);
    CHECK_EQ_INT(rp_parse("x", 1, NULL, NULL, why, sizeof why), CTG_EINVAL);
    int bad[] = {5, 118};
    rp_opts o = {bad, 2, NULL, 0};
    CHECK_EQ_INT(rp_parse("Normal liver.", 13, &o, &r, why, sizeof why), CTG_EINVAL);
    CHECK(strstr(why, "118"));
    char *big = malloc(RP_MAX_TEXT + 2);
    CHECK(big);
    memset(big, 'a', RP_MAX_TEXT + 1);
    CHECK_EQ_INT(rp_parse(big, RP_MAX_TEXT + 1, NULL, &r, why, sizeof why), CTG_ETOOBIG);
    free(big);
    /* Empty text, and NUL bytes counting as spaces. */
    CHECK_EQ_INT(rp_parse("", 0, NULL, &r, NULL, 0), 0);
    CHECK_EQ_INT(r->nitems, 0);
    CHECK_EQ_INT(r->norgans, 0);
    rp_result_free(r);
    const char nul[] = "Normal\0liver.";
    CHECK_EQ_INT(rp_parse(nul, sizeof nul - 1, NULL, &r, NULL, 0), 0);
    CHECK_EQ_INT(rp_state(r, ctg_organ_id("liver")), RP_NORMAL);
    CHECK(!strcmp(r->items[0].text, "Normal liver."));
    rp_result_free(r);
    /* A class set leaves out what it does not hold. */
    int liver_only[] = {ctg_organ_id("liver")};
    rp_opts lo = {liver_only, 1, NULL, 0};
    CHECK_EQ_INT(rp_parse("Normal liver and spleen.", 24, &lo, &r, NULL, 0), 0);
    CHECK_EQ_INT(r->norgans, 1);
    CHECK_EQ_INT(r->organs[0].organ, liver_only[0]);
    rp_result_free(r);
    rp_result_free(NULL);
    CHECK(!strcmp(rp_state_name(RP_UNCERTAIN), "uncertain"));
    return 0;
}

/* ---- phantom measurement ------------------------------------------------------- */

typedef struct counts {
    long tp, fp, fn;       /* (organ, abnormal) */
    long ktp, kfp, kfn;    /* (organ, key) */
    long mentioned, right; /* normal/abnormal accuracy over mentioned organs */
    long organs;
} counts;

static double ratio(long a, long b) { return b ? (double)a / (double)b : 1.0; }

/* Parses every case of dir/case_NNNN and counts against its findings.json. */
static int measure(const char *dir, int ncases, const zs_list *l, counts *c)
{
    int ids[64];
    int n = trn_default_organs(ids, 64);
    rp_opts o = {ids, n, l, 0};
    int verbose = getenv("RP_VERBOSE") != NULL;
    memset(c, 0, sizeof *c);
    for (int i = 0; i < ncases; i++) {
        char path[256];
        snprintf(path, sizeof path, "%s/case_%04d/report.txt", dir, i);
        size_t len;
        char *rep = tu_slurp(path, &len);
        snprintf(path, sizeof path, "%s/case_%04d/findings.json", dir, i);
        char *js = tu_slurp(path, NULL);
        if (!rep || !js) return 1;
        cJSON *root = cJSON_Parse(js);
        if (!root) return 1;
        rp_result *r = NULL;
        char why[256];
        if (rp_parse(rep, len, &o, &r, why, sizeof why) != 0) return 1;
        cJSON *organs = cJSON_GetObjectItem(root, "organs");
        for (int k = 0; k < n; k++) {
            int id = ids[k], truth = 0, present = 0;
            const char *tkeys[16];
            int ntk = 0;
            cJSON *e;
            cJSON_ArrayForEach(e, organs)
            {
                if (cJSON_GetObjectItem(e, "label")->valueint != id) continue;
                present = 1;
                truth = cJSON_IsTrue(cJSON_GetObjectItem(e, "abnormal"));
                cJSON *f;
                cJSON_ArrayForEach(f, cJSON_GetObjectItem(e, "findings"))
                {
                    const char *key = cJSON_GetObjectItem(f, "abnormality")->valuestring;
                    if (ntk < 16 && zs_list_find(l, key) >= 0) tkeys[ntk++] = key;
                }
            }
            int st = rp_state(r, id), pred = rp_abnormal(st);
            const char *name = ctg_organ_get(id)->name;
            c->organs += present;
            c->tp += pred && truth;
            c->fp += pred && !truth;
            c->fn += !pred && truth;
            if (st != RP_UNKNOWN && present) {
                c->mentioned++;
                c->right += pred == truth;
            }
            if (verbose && pred != truth)
                fprintf(stderr, "%s/case_%04d %s: %s, truth %s\n", dir, i, name, rp_state_name(st),
                        truth ? "abnormal" : "normal");
            for (int t = 0; t < ntk; t++) {
                int has = rp_has_key(r, id, tkeys[t]);
                c->ktp += has;
                c->kfn += !has;
                if (verbose && !has) fprintf(stderr, "%s/case_%04d %s: missing key %s\n", dir, i, name, tkeys[t]);
            }
            const rp_organ *ro = rp_organ_find(r, id);
            for (int q = 0; ro && q < ro->nkeys; q++) {
                int in = 0;
                for (int t = 0; t < ntk; t++) in |= !strcmp(tkeys[t], ro->keys[q].key);
                if (!in) {
                    c->kfp++;
                    if (verbose) fprintf(stderr, "%s/case_%04d %s: extra key %s\n", dir, i, name, ro->keys[q].key);
                }
            }
        }
        rp_result_free(r);
        cJSON_Delete(root);
        free(rep);
        free(js);
    }
    return 0;
}

static int report_phantom(const char *text, double floor_p, double floor_r, double floor_kp,
                          double floor_kr, double floor_acc)
{
    zs_list *l = load_list();
    CHECK(l);
    CHECK_EQ_INT(tu_phantom("--seed", "5", "--count", "150", "--out", "ph", "--matrix", "32",
                            "--thickness", "10", "--no-dicom", "--abnormal-rate", "0.8", "--text", text,
                            "--threads", "1", NULL),
                 0);
    counts c;
    CHECK_EQ_INT(measure("ph", 150, l, &c), 0);
    double p = ratio(c.tp, c.tp + c.fp), r = ratio(c.tp, c.tp + c.fn);
    double kp = ratio(c.ktp, c.ktp + c.kfp), kr = ratio(c.ktp, c.ktp + c.kfn);
    double acc = ratio(c.right, c.mentioned);
    printf("report parser on phantom reports (%s phrasings, 150 cases, %ld organs):\n"
           "  (organ, abnormal): precision %.3f recall %.3f (tp %ld fp %ld fn %ld)\n"
           "  (organ, key):      precision %.3f recall %.3f (tp %ld fp %ld fn %ld)\n"
           "  normal/abnormal accuracy over mentioned organs: %.3f (%ld of %ld)\n",
           text, c.organs, p, r, c.tp, c.fp, c.fn, kp, kr, c.ktp, c.kfp, c.kfn, acc, c.right, c.mentioned);
    fflush(stdout);
    zs_list_free(l);
    CHECK(c.tp + c.fn > 20);
    CHECK(c.mentioned > 500);
    CHECK(p >= floor_p);
    CHECK(r >= floor_r);
    CHECK(kp >= floor_kp);
    CHECK(kr >= floor_kr);
    CHECK(acc >= floor_acc);
    return 0;
}

static int test_report_phantom_train(void) { return report_phantom("train", 0.97, 0.95, 0.97, 0.95, 0.99); }
static int test_report_phantom_heldout(void) { return report_phantom("heldout", 0.95, 0.95, 0.95, 0.95, 0.99); }

const test_case report_tests[] = {
    {"report_cases", test_report_cases, 0},
    {"report_structure", test_report_structure, 0},
    {"report_errors", test_report_errors, 0},
    {"report_phantom_train", test_report_phantom_train, 120},
    {"report_phantom_heldout", test_report_phantom_heldout, 120},
    {NULL, NULL, 0},
};
