/* Internals shared by the C core's files. */
#ifndef SHIM_CORE_INTERNAL_H
#define SHIM_CORE_INTERNAL_H

#include <errno.h>
#include "shim_core.h"

/* Record a failure (step, path, errno text) and unwind to shim_launch(). Never returns. */
__attribute__((noreturn, format(printf, 3, 4)))
void shim_fail(int code, int err, const char *fmt, ...);

/* Check a syscall result: on -1 (or NULL) fail with the step's description and errno. The
 * happy path then reads as a list of steps. */
#define Z(expr, ...) do { if ((expr) == -1) shim_fail(SHIM_E_LAUNCH, errno, __VA_ARGS__); } while (0)

/* The same for reading the image's own content: EIO there is a corrupt image (squashfuse
 * cannot decompress a block), which is the image's fault, not the launch's. */
#define ZIMG(expr, ...) do { if ((expr) == -1) shim_fail_image(errno, __VA_ARGS__); } while (0)
__attribute__((noreturn, format(printf, 2, 3)))
void shim_fail_image(int err, const char *fmt, ...);

void shim_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern int shim_debug_on;

/* launch.c */
void shim_begin(const struct shim_config *cfg, struct shim_result *res);
int shim_setup_root(const struct shim_config *cfg, struct shim_result *res);
int shim_enter_and_exec(const struct shim_config *cfg, struct shim_result *res);

/* userns.c */
void enter_namespaces(int fakeroot);

/* fuse.c */
void mount_squashfs(const struct shim_config *cfg, const char *stage, const char *target);

/* mounts.c */
int open_in_root(int root_fd, const char *path, int flags);
void bind_into_root(const char *root, const struct shim_bind *b);
void make_private_tmpfs(const char *dir, const char *what);
void set_mount_attrs(int fd, int recursive, int readonly, int keepdev);
void seal_underlays(const char *root);
void append_to_image_file(const char *root, const struct shim_append *a, int n);
void set_stage(const char *stage);

#endif
