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

#endif
