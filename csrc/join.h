/* Joining the node's shared container (join.c): shared by the cffi core and the native front-end. */
#ifndef SHIM_JOIN_H
#define SHIM_JOIN_H

#include <stddef.h>

#include "gen/codes.h"

/* execve argv[0], looked up in envp's PATH when it has no slash (default PATH otherwise), the
 * way execvpe does; on failure, err names it and *code is 127 (not found), 126 (not executable)
 * or 71. Returns -1 (only on failure). */
int shim_exec_search(char *const *argv, char *const *envp, char *err, size_t errlen, int *code);

/* Enter the namespaces (unless already in them), chdir, no_new_privs, exec argv with envp
 * (argv[0] without a slash is looked up in envp's PATH). Returns -1 with err and *code set. */
int shim_join_exec(int userns, int mntns, const char *cwd, char *const *argv, char *const *envp, char *err,
                   size_t errlen, int *code);

#endif
