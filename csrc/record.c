/* Reading a launch record (docs/launch-record.md): MAGIC, then fields of (u16 tag, u32 length,
 * payload), little-endian, strings NUL-terminated inside their payload. The bytes come from a
 * cache file or a pipe: every length is checked against the buffer before it is used, and an
 * unknown tag, a short payload or a string without its NUL makes the whole record malformed. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "rd.h"
#include "gen/build.h"

struct counts {
    int binds, appends, stage_files, ops, pass, notices, inputs, run_args, links, rules, injected;
};

/* One pass over the fields: check the framing and count what needs an array. */
static int frame(const unsigned char *p, const unsigned char *end, struct counts *c, char *why, size_t whylen)
{
    while (p < end) {
        unsigned tag;
        uint32_t len;
        if (end - p < 6) {
            snprintf(why, whylen, "truncated field header");
            return -1;
        }
        tag = (unsigned)(p[0] | p[1] << 8);
        len = (uint32_t)p[2] | (uint32_t)p[3] << 8 | (uint32_t)p[4] << 16 | (uint32_t)p[5] << 24;
        if ((size_t)(end - p - 6) < len) {
            snprintf(why, whylen, "field %u runs past the end", tag);
            return -1;
        }
        switch (tag) {
        case SHIM_R_BIND: c->binds++; break;
        case SHIM_R_APPEND: c->appends++; break;
        case SHIM_R_LINK: c->links++; break;
        case SHIM_R_STAGE_FILE: c->stage_files++; break;
        case SHIM_R_ENV_OP: c->ops++; break;
        case SHIM_R_ENV_PASS: c->pass++; break;
        case SHIM_R_NOTICE: c->notices++; break;
        case SHIM_R_RUN_ARG: c->run_args++; break;
        case SHIM_R_AUDIT_RULE: c->rules++; break;
        case SHIM_R_AUDIT_INJECTED: c->injected++; break;
        case SHIM_R_INPUT_FILE: case SHIM_R_INPUT_CONTENT: case SHIM_R_INPUT_GLOB: case SHIM_R_INPUT_ENV:
        case SHIM_R_INPUT_CPUS: c->inputs++; break;
        default: break;
        }
        p += 6 + len;
    }
    return 0;
}

static int field(struct shim_rec *r, int tag, const unsigned char *p, size_t len)
{
    struct rd d = {p, p + len, 0};
    struct shim_config *c = &r->cfg;

    switch (tag) {
    case SHIM_R_VERSION: r->version = rd_str(&d); return rd_done(&d);
    case SHIM_R_KEY: r->key = rd_str(&d); return rd_done(&d);
    case SHIM_R_INPUT_FILE: case SHIM_R_INPUT_CONTENT: case SHIM_R_INPUT_GLOB: case SHIM_R_INPUT_ENV:
    case SHIM_R_INPUT_CPUS:
        /* checked by inputs.c, which reads each payload with the same bounds */
        r->inputs[r->ninputs].tag = tag;
        r->inputs[r->ninputs].p = p;
        r->inputs[r->ninputs++].len = len;
        return 1;
    case SHIM_R_IMAGE_KIND:
        c->image_kind = (int)rd_int(&d, 4);
        return rd_done(&d) && (c->image_kind == SHIM_IMG_SQUASHFS || c->image_kind == SHIM_IMG_DIR
                               || c->image_kind == SHIM_IMG_KEPT);
    case SHIM_R_KEPT_IDLE: c->kept_idle = (unsigned)rd_int(&d, 4); return rd_done(&d);
    case SHIM_R_IMAGE_PATH: c->image_path = rd_str(&d); return rd_done(&d);
    case SHIM_R_IMAGE_FILE: {
        struct shim_image_file *f = &r->image_file;
        f->source = (int)rd_int(&d, 4);
        f->mode = (unsigned)rd_int(&d, 4);
        f->dev = rd_int(&d, 8);
        f->ino = rd_int(&d, 8);
        f->size = rd_int(&d, 8);
        f->mtime = (int64_t)rd_int(&d, 8);
        f->ctime = (int64_t)rd_int(&d, 8);
        f->present = 1;
        return rd_done(&d) && (f->source == SHIM_IMAGE_SOURCE_OPENED || f->source == SHIM_IMAGE_SOURCE_COPY);
    }
    case SHIM_R_ROOT_LOCK: r->root_lock = rd_str(&d); return rd_done(&d) && r->root_lock[0] == '/';
    case SHIM_R_IMAGE_OFFSET: c->offset = (long long)rd_int(&d, 8); return rd_done(&d) && c->offset >= 0;
    case SHIM_R_SQUASHFUSE: c->squashfuse = rd_str(&d); return rd_done(&d);
    case SHIM_R_STAGE: c->stage = rd_str(&d); return rd_done(&d);
    case SHIM_R_FAKEROOT: c->fakeroot = (int)rd_int(&d, 4); return rd_done(&d);
    case SHIM_R_NAMESPACES:
        c->namespaces = (int)rd_int(&d, 4);
        return rd_done(&d) && !(c->namespaces & ~(SHIM_NS_IPC | SHIM_NS_NET | SHIM_NS_PID));
    case SHIM_R_WRITABLE: c->writable = (int)rd_int(&d, 4); return rd_done(&d);
    case SHIM_R_LINK: {
        struct shim_link *l = (struct shim_link *)&c->links[c->nlinks++];
        l->target = rd_str(&d);
        l->path = rd_str(&d);
        return rd_done(&d) && l->target[0] && l->path[0] == '/';
    }
    case SHIM_R_BIND: {
        struct shim_bind *b = (struct shim_bind *)&c->binds[c->nbinds++];
        b->flags = (int)rd_int(&d, 4);
        b->src = rd_str(&d);
        b->dst = rd_str(&d);
        /* a fresh mount's src is its mount options, a bind's a host path */
        return rd_done(&d) && ((b->flags & SHIM_BIND_FRESH) || b->src[0] == '/') && b->dst[0] == '/';
    }
    case SHIM_R_APPEND: {
        struct shim_append *a = (struct shim_append *)&c->appends[c->nappends++];
        a->path = rd_str(&d);
        a->text = rd_str(&d);
        return rd_done(&d);
    }
    case SHIM_R_STAGE_FILE: {
        struct shim_stage_file *f = (struct shim_stage_file *)&c->stage_files[c->nstage_files++];
        f->name = rd_str(&d);
        f->data = (const char *)d.p;
        f->len = (size_t)(d.end - d.p);
        /* a plain name: it is created inside the stage directory and nowhere else */
        return !d.bad && f->name[0] && !strchr(f->name, '/') && strcmp(f->name, ".") && strcmp(f->name, "..");
    }
    case SHIM_R_CWD: c->cwd = rd_str(&d); return rd_done(&d);
    case SHIM_R_CWD_REQUIRED: c->cwd_required = (int)rd_int(&d, 4); return rd_done(&d);
    case SHIM_R_QUIET: c->quiet = (int)rd_int(&d, 4); return rd_done(&d);
    case SHIM_R_DEBUG: c->debug = (int)rd_int(&d, 4); return rd_done(&d);
    case SHIM_R_COMMAND: r->command = rd_str(&d); return rd_done(&d) && r->command[0];
    case SHIM_R_ENV_OP: {
        struct shim_env_op *o = &r->ops[r->nops++];
        o->target = (int)rd_int(&d, 1);
        o->op = (int)rd_int(&d, 1);
        o->name = rd_str(&d);
        o->value = rd_str(&d);
        return rd_done(&d) && o->target >= SHIM_ENV_HOST && o->target <= SHIM_ENV_BASE && o->op >= SHIM_OP_SET
               && o->op <= SHIM_OP_HOST_NAMES && (o->op == SHIM_OP_HOST || (o->name[0] && !strchr(o->name, '=')));
    }
    case SHIM_R_ENV_PASS: {
        struct shim_pass *s = &r->pass[r->npass++];
        s->rule = (int)rd_int(&d, 1);
        s->text = rd_str(&d);
        return rd_done(&d) && s->rule >= SHIM_PASS_ALWAYS_PREFIX && s->rule <= SHIM_PASS_SHELL_OWNED;
    }
    case SHIM_R_ACTION_SCRIPT: c->action_script = rd_str(&d); return rd_done(&d);
    case SHIM_R_ENV_DIR: c->env_dir = rd_str(&d); return rd_done(&d);
    case SHIM_R_ENV_DATA: c->env_data = rd_str(&d); return rd_done(&d) && c->env_data[0] && !strchr(c->env_data, '/');
    case SHIM_R_DIAGNOSTICS: r->diagnostics = rd_str(&d); return rd_done(&d);
    case SHIM_R_REFUSE:
        r->refuse_code = (int)rd_int(&d, 4);
        r->refuse = rd_str(&d);
        return rd_done(&d) && r->refuse_code > 0 && r->refuse_code < 256;
    case SHIM_R_NOTICE: r->notices[r->nnotices++] = rd_str(&d); return rd_done(&d);
    case SHIM_R_PROVENANCE:
        if (r->nprov == SHIM_PROV_MAX)
            return 0;
        r->prov[r->nprov].kind = (int)rd_int(&d, 4);
        r->prov[r->nprov].path = rd_str(&d);
        return rd_done(&d) && (r->prov[r->nprov].kind == SHIM_PROV_USER || r->prov[r->nprov].kind == SHIM_PROV_SITE)
               && r->prov[r->nprov++].path[0];
    case SHIM_R_PROVENANCE_FACTS: r->prov_facts = rd_str(&d); return rd_done(&d) && r->prov_facts[0] == '{';
    case SHIM_R_AUDIT:
        r->audit_flags = (int)rd_int(&d, 4);
        r->audit_library = rd_str(&d);
        c->audit = r->audit_library;
        return rd_done(&d) && !(r->audit_flags & ~(SHIM_AUDIT_STRICT | SHIM_AUDIT_PRINT)) && r->audit_library[0] == '/';
    case SHIM_R_AUDIT_RULE: {
        struct shim_audit_rule *a = &r->audit_rules[r->naudit_rules++];
        a->kind = (int)rd_int(&d, 1);
        a->severity = (int)rd_int(&d, 1);
        a->code = rd_str(&d);
        a->preconditions = rd_str(&d);
        a->patterns = rd_str(&d);
        a->message = rd_str(&d);
        a->hint = rd_str(&d);
        a->admin_hint = rd_str(&d);
        return rd_done(&d) && (a->kind == SHIM_AUDIT_KIND_ANY || a->kind == SHIM_AUDIT_KIND_NONE)
               && a->severity >= SHIM_AUDIT_SEVERITY_INFO && a->severity <= SHIM_AUDIT_SEVERITY_ERROR && a->code[0];
    }
    case SHIM_R_AUDIT_INJECTED: {
        struct shim_audit_injected *a = &r->audit_injected[r->naudit_injected++];
        a->path = rd_str(&d);
        a->host = rd_str(&d);
        a->sha256 = rd_str(&d);
        return rd_done(&d) && a->path[0] == '/' && a->host[0] == '/';
    }
    case SHIM_R_RUNSCRIPT: r->runscript = (int)rd_int(&d, 4); return rd_done(&d);
    case SHIM_R_RUN_ARG: {
        int kind = (int)rd_int(&d, 1);
        const char *word = rd_str(&d);
        if (kind == SHIM_RUN_ARG_FIXED)
            r->run_fixed[r->nfixed++] = word;
        else if (kind == SHIM_RUN_ARG_DEFAULT)
            r->run_default[r->ndefault++] = word;
        else
            return 0;
        return rd_done(&d);
    }
    default: return 0;
    }
}

int shim_rec_parse(const char *data, size_t len, struct shim_rec *r, char *why, size_t whylen)
{
    const unsigned char *p = (const unsigned char *)data, *end = p + len;
    size_t magic = strlen(SHIM_RECORD_MAGIC);
    struct counts n = {0};
    char *mem;

    memset(r, 0, sizeof *r);
    r->cfg.image_fd = -1; /* each launch gives it (shim_image_root_fd) */
    if (len < magic || memcmp(data, SHIM_RECORD_MAGIC, magic) || len > SHIM_RECORD_MAX) {
        snprintf(why, whylen, "not a launch record (no %s header)", SHIM_RECORD_MAGIC);
        return -1;
    }
    p += magic;
    if (frame(p, end, &n, why, whylen))
        return -1;
    if (ZRP(mem = calloc(1, sizeof(struct shim_bind) * (size_t)(n.binds + 1)
                                + sizeof(struct shim_append) * (size_t)(n.appends + 1)
                                + sizeof(struct shim_stage_file) * (size_t)(n.stage_files + 1)
                                + sizeof(struct shim_env_op) * (size_t)(n.ops + 1)
                                + sizeof(struct shim_pass) * (size_t)(n.pass + 1)
                                + sizeof(char *) * (size_t)(n.notices + 1)
                                + sizeof(struct shim_field) * (size_t)(n.inputs + 1)
                                + 2 * sizeof(char *) * (size_t)(n.run_args + 1)
                                + sizeof(struct shim_link) * (size_t)(n.links + 1)
                                + sizeof(struct shim_audit_rule) * (size_t)(n.rules + 1)
                                + sizeof(struct shim_audit_injected) * (size_t)(n.injected + 1)),
            why, whylen, "allocate the record's arrays"))
        return -1;
    r->mem = mem;
    r->cfg.binds = (struct shim_bind *)mem;
    mem += sizeof(struct shim_bind) * (size_t)(n.binds + 1);
    r->cfg.appends = (struct shim_append *)mem;
    mem += sizeof(struct shim_append) * (size_t)(n.appends + 1);
    r->cfg.stage_files = (struct shim_stage_file *)mem;
    mem += sizeof(struct shim_stage_file) * (size_t)(n.stage_files + 1);
    r->ops = (struct shim_env_op *)mem;
    mem += sizeof(struct shim_env_op) * (size_t)(n.ops + 1);
    r->pass = (struct shim_pass *)mem;
    mem += sizeof(struct shim_pass) * (size_t)(n.pass + 1);
    r->notices = (const char **)mem;
    mem += sizeof(char *) * (size_t)(n.notices + 1);
    r->inputs = (struct shim_field *)mem;
    mem += sizeof(struct shim_field) * (size_t)(n.inputs + 1);
    /* both lists get room for every RUN_ARG: which list a word goes to is known only when read */
    r->run_fixed = (const char **)mem;
    mem += sizeof(char *) * (size_t)(n.run_args + 1);
    r->run_default = (const char **)mem;
    mem += sizeof(char *) * (size_t)(n.run_args + 1);
    r->cfg.links = (struct shim_link *)mem;
    mem += sizeof(struct shim_link) * (size_t)(n.links + 1);
    r->audit_rules = (struct shim_audit_rule *)mem;
    mem += sizeof(struct shim_audit_rule) * (size_t)(n.rules + 1);
    r->audit_injected = (struct shim_audit_injected *)mem;
    r->cfg.cwd = "";
    r->cfg.env_dir = "/.singularity.d/env";
    while (p < end) {
        int tag = p[0] | p[1] << 8;
        size_t flen = (size_t)p[2] | (size_t)p[3] << 8 | (size_t)p[4] << 16 | (size_t)p[5] << 24;
        if (!field(r, tag, p + 6, flen)) {
            snprintf(why, whylen, "malformed field %d", tag);
            shim_rec_free(r);
            return -1;
        }
        p += 6 + flen;
    }
    if (!r->version) {
        snprintf(why, whylen, "a record without its version");
        shim_rec_free(r);
        return -1;
    }
    return 0;
}

int shim_rec_complete(const struct shim_rec *r, char *why, size_t whylen)
{
    if (r->refuse)
        return 1;
    if (!r->cfg.image_kind || !r->cfg.image_path || !r->cfg.stage || (!r->command && !r->runscript)
        || (r->cfg.image_kind != SHIM_IMG_DIR && !r->cfg.squashfuse)) {
        snprintf(why, whylen, "an incomplete record");
        return 0;
    }
    return 1;
}

void shim_rec_free(struct shim_rec *r)
{
    free(r->mem);
    r->mem = NULL;
}

int shim_record_current(const char *data, size_t len, const char *key, char *const *environ, char *why,
                        size_t whylen)
{
    return shim_record_current_on(data, len, key, environ, -1, why, whylen);
}

int shim_record_current_on(const char *data, size_t len, const char *key, char *const *environ, int image_fd,
                           char *why, size_t whylen)
{
    struct shim_rec r;
    int ok;

    if (shim_rec_parse(data, len, &r, why, whylen))
        return 0;
    if (!shim_rec_complete(&r, why, whylen)) {
        ok = 0;
    } else if (strcmp(r.version, SHIM_BUILD_ID)) {
        snprintf(why, whylen, "written by another build of shim (%s)", r.version);
        ok = 0;
    } else if (!r.key || strcmp(r.key, key)) {
        snprintf(why, whylen, "written for another launch");
        ok = 0;
    } else {
        ok = (image_fd < 0 || shim_image_matches(&r, image_fd, 1, why, whylen))
             && shim_inputs_hold(&r, environ, image_fd, why, whylen);
    }
    shim_rec_free(&r);
    return ok;
}

char *shim_record_env(const char *data, size_t len, char *const *environ, int target, size_t *outlen)
{
    struct shim_rec r;
    char why[256], **env, *out, *o;
    size_t total = 0, i;

    if (shim_rec_parse(data, len, &r, why, sizeof why))
        return NULL;
    env = shim_env_compose(&r, environ, target);
    shim_rec_free(&r);
    if (!env)
        return NULL;
    for (i = 0; env[i]; i++)
        total += strlen(env[i]) + 1;
    out = o = HANDLED(malloc(total + 1)); /* NULL to the caller, as for a malformed record (shim_core.h) */
    for (i = 0; out && env[i]; i++) {
        size_t n = strlen(env[i]) + 1;
        memcpy(o, env[i], n);
        o += n;
    }
    free(env);
    *outlen = total;
    return out;
}
