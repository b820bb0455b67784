/*
 * report.h - a radiology report parser (prefix rp_): free text (a RIS
 * report, the text of an SR) in, organ-level findings out, in the model's
 * TotalSegmentator v2 ids and the findings list's keys.  The trainer uses
 * it to turn reports into the organ-level labels of CT-GLIP's
 * abnormality-text loss; tools use it to compare a radiologist's report
 * with what the model found.  Part of core/'s public interface.
 *
 * What it does, in order:
 *   1. Sections and sentences.  Lines are logical lines (a line that starts
 *      in lower case continues the one before, for hard-wrapped reports);
 *      list markers ("1.", "2)", "-", "*", a bullet) are dropped at the start
 *      of a line or sentence; a "WORDS:" header (one to five words, then ':'
 *      and white space) at the start of a line or sentence is a section when
 *      one of its words names one ("findings", "impression", "conclusion"
 *      ... are read; "history", "indication", "technique", "comparison",
 *      "examination", "clinical", "reason" ... are skipped, so a clinical
 *      question is never a finding; a skipped section also ends at a blank
 *      line that follows some of its text), an organ header ("Liver:",
 *      "Right kidney:", "Lungs and pleura:") that names the organs its
 *      sentences talk about, or another header ("Abdomen:") that only
 *      clears that context.  An organ header holds for the rest of its
 *      line, or, when it stands alone on its line, until the next header or
 *      blank line.  Sentences end at '.', '!' or '?' followed by white space
 *      and a capital or a digit, or by the end of the line, so "3.5 cm",
 *      "e.g. the spleen" do not end one; nor does a '.' after a single
 *      letter or one of a few abbreviations ("Dr. Smith", "approx. 4 mm").
 *      ';' splits a sentence into clauses, not into sentences.
 *   2. Organ mentions, from a lexicon built for the caller's classes: the
 *      class names in words without their side (core/text.h
 *      txt_organ_words: "kidney_left" -> "kidney"; "rib_left_3" -> "third
 *      rib"), vertebra codes ("T12"), plus the radiology terms of the table
 *      `lexicon` in report.c ("hepatic", "renal", "splenic", "pulmonary",
 *      "pleural", "gall bladder", "kidneys" (both), "lungs" (all five
 *      lobes), "upper lobe", "RLL", "lingula", "bibasilar", "osseous",
 *      "vasculature" ...).  Words match with a plural "s"/"es".  Longest
 *      match wins; phrases that contain an organ word but name something
 *      else ("renal artery", "pulmonary embolism", "portal venous phase")
 *      are in the table with no organ, so they mask it.  Vertebra ranges
 *      ("L1-L3") are not expanded.  An organ with sides takes the side
 *      words just before it ("right and left kidneys", "upper pole of the
 *      left kidney", "left simple renal cyst": up to two adjectives between
 *      them); a side named after the organ ("on the left") is not read.
 *      Without a side word it takes its organ header's side, or both.  A
 *      mention whose organs strictly contain another mention's in the same
 *      clause gives way to it ("nodule in the right upper lobe" drops
 *      "pulmonary"; "hydronephrosis of the left kidney" drops the general
 *      "hydronephrosis") unless the two are coordinated ("the aorta and
 *      great vessels").  An organ named only as a point of reference
 *      ("relative to the spleen", "adjacent to the liver") is not a mention.
 *   3. Negation and uncertainty, NegEx style: cue phrases before ("no",
 *      "not", "without", "negative for", "no evidence of", "free of") or
 *      after ("not seen", "absent", "has resolved") the words they govern;
 *      a scope ends at a terminator ("but", "however", "except"), at ';'
 *      and at the end of the clause, and spans at most RP_SCOPE words.
 *      "non-X" negates the word X only ("non-obstructing calculus").  "no
 *      change", "no interval increase" are not negations.  Uncertainty cues
 *      ("possible", "likely", "may represent", "suspicious for",
 *      "questionable", "cannot be excluded") work the same way.  Normal
 *      cues ("normal", "unremarkable", "within normal limits", "clear",
 *      "patent", "intact") mark a normal statement unless negated.
 *   4. A clause's state: ABNORMAL when it asserts an abnormality word (a
 *      vocabulary of findings: "cyst", "stone", "enlarged", "-megaly",
 *      "-itis", "-osis", "effusion" ... and every word of a key of the
 *      findings list) outside any negation or uncertainty scope; UNCERTAIN
 *      when its only abnormality words are hedged; NORMAL when it has
 *      negated abnormality words (or negated general words: "no other
 *      abnormality") or a normal cue and asserts nothing; no state
 *      otherwise (a merely descriptive sentence, "the liver measures 15
 *      cm", says nothing about normality).  So "A 25 mm mass, suspicious
 *      for neoplasm" is ABNORMAL (the mass is asserted; only its nature is
 *      hedged), "Possible small left effusion" is UNCERTAIN.  An organ
 *      that is itself what a "not seen"/"absent" denies is ABNORMAL (an
 *      absent gallbladder is not a normal one).
 *   5. Finding keys.  Each abnormal or uncertain clause is matched to the
 *      keys of the findings list (rp_opts.list) that apply to its organs,
 *      from the words of the clause outside negation scopes: strong cue
 *      words are the words of the key that are not organ words
 *      ("hepatic_cyst" -> "cyst") and the synonyms of table `hints` in
 *      report.c ("splenomegaly" -> "enlarged"); weak cue words come from
 *      the key's positive phrasings.  Every key with a strong cue is taken;
 *      failing that, the best key with at least two weak ones; failing that
 *      the key is "" and the organ is still reported abnormal with its
 *      sentence.  A clause with no organ of its own takes its organ
 *      header's organs, or the previous clause's in the same sentence, or
 *      the previous sentence's on the same logical line (not across list
 *      items); when it is abnormal and no key fits those organs (or there
 *      are none), it takes the organs of the keys it matches among all keys
 *      ("Moderate emphysema." -> the lung lobes).  Such "implicit"
 *      statements are dropped when the same key is already reported with
 *      an organ (an impression repeating a finding adds nothing).  When a
 *      clause's organs came from a word or header that names several
 *      organs ("Lungs:", "kidneys"), only those its keys apply to are
 *      abnormal ("Lungs: right pleural effusion" -> right lower lobe).
 *      A clause that names several organs gives each the keys that apply
 *      to it.
 *   6. Merging: every (organ, clause, key) becomes an rp_item; the organ
 *      summary takes the strongest state over its items (ABNORMAL >
 *      UNCERTAIN > NORMAL), so "otherwise clear lungs" after a nodule keeps
 *      that lobe abnormal.  Organs of the class set that the report never
 *      mentions are RP_UNKNOWN (absent from the summary), never normal.
 *
 * Uncertain statements: RP_UNCERTAIN means "abnormal, hedged".  rp_abnormal()
 * counts it as abnormal; callers that want only firm labels test for
 * RP_ABNORMAL.  Normal items never carry a key.
 *
 * Threading: no global mutable state; the tables are const and everything
 * else lives in the call.  rp_parse may run on any number of threads at
 * once; a result is read-only after it returns.
 */
#ifndef CTGLIP_REPORT_H
#define CTGLIP_REPORT_H

#include <stddef.h>

#include "core/zeroshot.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RP_MAX_TEXT (1 << 20)   /* bytes of report text rp_parse accepts */
#define RP_MAX_ITEMS (1 << 18)  /* statements one report may produce */
#define RP_MAX_KEYS 16          /* distinct keys kept per organ */
#define RP_KEY_MAX 64           /* bytes of a key, NUL included (zs_finding.key) */
#define RP_SCOPE 12             /* words a negation or uncertainty cue governs */

/* States, ordered: merging takes the largest. */
enum { RP_UNKNOWN = 0, RP_NORMAL = 1, RP_UNCERTAIN = 2, RP_ABNORMAL = 3 };

typedef struct rp_opts {
    /* The classes to map onto, as v2 label ids (e.g. a model's class list);
     * mentions of other structures are dropped.  NULL: all 117 v2 classes.
     * Not owned. */
    const int *classes;
    int nclasses;
    /* The findings list whose keys sentences are matched to; NULL: no
     * keys (every abnormal item has key "").  Not owned; need not outlive
     * the result. */
    const zs_list *list;
    /* 1: also read sections that are skipped by default (history,
     * indication, technique, comparison). */
    int all_sections;
} rp_opts;

/* One statement: an organ, its state in one sentence, one key. */
typedef struct rp_item {
    int organ;              /* v2 id */
    int state;              /* RP_NORMAL, RP_UNCERTAIN or RP_ABNORMAL */
    char key[RP_KEY_MAX];   /* finding key; "" when none matched (always for normal) */
    int implicit;           /* 1: no organ word or header; the organ came from the key */
    size_t start, end;      /* the sentence's bytes in the input, [start, end) */
    const char *text;       /* the sentence, white space collapsed; owned by the result */
} rp_item;

/* A key of one organ and the strongest state it was stated with. */
typedef struct rp_key {
    char key[RP_KEY_MAX];
    int state;              /* RP_UNCERTAIN or RP_ABNORMAL */
} rp_key;

/* The summary of one mentioned organ. */
typedef struct rp_organ {
    int organ;              /* v2 id */
    int state;              /* strongest over its items */
    int nkeys;
    rp_key keys[RP_MAX_KEYS]; /* distinct keys of its abnormal/uncertain items */
    int item;               /* index of the first item with that state */
} rp_organ;

typedef struct rp_result {
    int nitems;
    rp_item *items;         /* in text order */
    int norgans;
    rp_organ *organs;       /* ascending v2 id; only mentioned organs */
    int nsentences;         /* sentences read (skipped sections excluded) */
} rp_result;

/* Parses len bytes of report text (UTF-8 or ASCII; need not be
 * NUL-terminated; NUL bytes count as spaces).  o may be NULL (all classes,
 * no list).  *out is a new result the caller frees with rp_result_free,
 * even when the report states nothing.  Returns 0, CTG_EINVAL (NULL text
 * or out, bad class ids; reason in why), CTG_ETOOBIG (more than
 * RP_MAX_TEXT bytes or RP_MAX_ITEMS statements) or CTG_ENOMEM. */
int rp_parse(const char *text, size_t len, const rp_opts *o, rp_result **out, char *why,
             size_t n);
void rp_result_free(rp_result *r); /* NULL: no-op */

/* The summary of organ (v2 id), or NULL when the report does not mention
 * it. */
const rp_organ *rp_organ_find(const rp_result *r, int organ);
/* The organ's merged state; RP_UNKNOWN when not mentioned. */
int rp_state(const rp_result *r, int organ);
/* 1 when the organ was stated abnormal (or hedged) with this key. */
int rp_has_key(const rp_result *r, int organ, const char *key);
/* 1 for RP_ABNORMAL and RP_UNCERTAIN. */
static inline int rp_abnormal(int state) { return state >= RP_UNCERTAIN; }
/* "unknown", "normal", "uncertain", "abnormal". */
const char *rp_state_name(int state);

#ifdef __cplusplus
}
#endif
#endif
