/*
 * tools.h - the subcommands of `ctglip` that live in their own files.  Each
 * takes the arguments after its name (argv[0] is the subcommand) and
 * returns the process exit status: 0 success, 1 failure, 2 usage.
 */
#ifndef CTGLIP_TOOLS_H
#define CTGLIP_TOOLS_H

/* ctglip phantom --seed S --count N --out DIR [options]  (tools/phantom.c) */
int ctg_phantom_main(int argc, char **argv);
/* ctglip view [options] CT [LABELS] --out FILE.png  (tools/view.c) */
int ctg_view_main(int argc, char **argv);
/* ctglip volume [options] --out FILE.nii.gz PATH...  (tools/volume.c) */
int ctg_volume_main(int argc, char **argv);

/* ctglip infer [options] PATH  (tools/infer.c) */
int ctg_infer_main(int argc, char **argv);

/* Model files in service (tools/publish.c).  Publish: src must load; it is
 * installed at path by an atomic rename, the model it replaces is kept as
 * path.prev.  Rollback swaps path and path.prev.  id gets the identity of
 * the model now in service.  0 or CTG_E* with the reason. */
int ctg_model_publish(const char *src, const char *path, char id[65], char *why, size_t n);
int ctg_model_rollback(const char *path, char id[65], char *why, size_t n);
/* ctglip [-c CONF] model [status|rollback]  (tools/model_cmd.c) */
int ctg_model_cmd(const char *model_path, int argc, char **argv);

/* A list of file paths (tools/files.c). */
typedef struct ctg_file_list {
    char **v;
    size_t n, cap;
} ctg_file_list;
/* Adds path, or every regular file under it (recursively, hidden entries
 * skipped) when it is a folder, then keeps the list sorted.  0, or CTG_E*
 * (unreadable path, CTG_ETOOBIG past 200,000 files). */
int ctg_collect_files(ctg_file_list *l, const char *path, int depth);
void ctg_file_list_free(ctg_file_list *l);

#endif
